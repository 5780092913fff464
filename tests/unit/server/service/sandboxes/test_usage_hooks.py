"""The sandbox service tells the usage meter where billing stops: a terminate, a pause and
a sandbox's own end read its CPU before runsc deletes the sandbox (and its cgroup)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from stockade.server.config import ServerConfig
from stockade.server.images.catalog import ImageCatalog
from stockade.server.runtime.runsc import Runsc
from stockade.server.service.sandboxes import SandboxService
from stockade.server.service.usage import Meter
from stockade.server.state.records import SandboxRecord, SandboxStatus
from stockade.server.state.store import SQLiteStore

from .test_lifetimes import FakeRuntime


class Cgroups:
    """A cgroup per sandbox that the fake runtime's delete removes, as runsc's does."""

    def __init__(self, runtime: FakeRuntime) -> None:
        self.runtime = runtime
        self.cpu: dict[str, float] = {}

    def __call__(self, sandbox_id: str) -> float | None:
        deleted = any(v == "delete" and s == sandbox_id for v, s, _ in self.runtime.calls)
        return None if deleted else self.cpu.get(sandbox_id)


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def cgroups(runtime: FakeRuntime) -> Cgroups:
    return Cgroups(runtime)


@pytest.fixture
async def svc(
    tmp_path: Path, runtime: FakeRuntime, cgroups: Cgroups
) -> AsyncIterator[SandboxService]:
    config = ServerConfig(data_dir=tmp_path, cache_dir=tmp_path, token="t", retention=60)
    store = SQLiteStore(tmp_path / "state.db")
    meter = Meter(store, cpu_seconds=cgroups)
    service = SandboxService(
        config, store, cast(ImageCatalog, None), runtime=cast(Runsc, runtime), meter=meter
    )
    yield service
    await service.stop()
    await store.close()


async def _billed(svc: SandboxService, cgroups: Cgroups, sandbox_id: str) -> SandboxRecord:
    """A running sandbox of tenant acme, billed from now with 1 s of CPU used so far."""
    now = time.time()
    record = SandboxRecord(
        id=sandbox_id, image="debian", cpu=1, memory=256, disk=256, timeout=300,
        status=SandboxStatus.RUNNING, created_at=now, started_at=now, expires_at=now + 300,
        tenant="acme",
    )  # fmt: skip
    svc.sandbox_dir(sandbox_id).mkdir(parents=True, exist_ok=True)
    await svc.store.put_sandbox(record)
    cgroups.cpu[sandbox_id] = 1.0
    svc.meter.begin(record, now)
    cgroups.cpu[sandbox_id] = 3.5  # what it used while billed
    return record


async def _cpu(svc: SandboxService) -> float:
    [acme] = (await svc.meter.usage("acme", since=time.time() - 60)).tenants
    return acme.cpu_seconds


async def test_terminate_bills_the_cpu_read_before_runsc_deletes_it(
    svc: SandboxService, cgroups: Cgroups
) -> None:
    await _billed(svc, cgroups, "sb-t")
    await svc.terminate("sb-t")
    assert svc.meter.billing() == []
    assert await _cpu(svc) == pytest.approx(2.5)


async def test_pause_ends_billing_before_the_runsc_sandbox_goes(
    svc: SandboxService, runtime: FakeRuntime, cgroups: Cgroups
) -> None:
    await _billed(svc, cgroups, "sb-p")
    assert (await svc.pause("sb-p")).status == SandboxStatus.PAUSED
    assert [v for v, s, _ in runtime.calls if s == "sb-p"] == ["pause", "checkpoint", "delete"]
    assert svc.meter.billing() == []
    assert await _cpu(svc) == pytest.approx(2.5)


async def test_its_own_end_is_billed_too(svc: SandboxService, cgroups: Cgroups) -> None:
    await _billed(svc, cgroups, "sb-e")
    await svc.exits.on_exit("sb-e")  # as when its runsc process exits
    assert (await svc.get("sb-e")).ended
    assert svc.meter.billing() == []
    assert await _cpu(svc) == pytest.approx(2.5)
