"""Tenants' quotas: the arithmetic, the token bucket on a fake clock, and the admission of
concurrent creates over a real SQLite store (each way a sandbox is made counts alike)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from stockade.errors import QuotaExceededError, RateLimitedError
from stockade.server.service.access import AccessService
from stockade.server.service.creation import Creator
from stockade.server.service.quotas import (
    Quotas,
    TokenBucket,
    Usage,
    check_capacity,
    check_disk,
    check_timeout,
    disk_used_mib,
    sandbox_usage,
)
from stockade.server.service.spec import CreateRequest, new_record
from stockade.server.state.records import (
    SandboxRecord,
    SandboxStatus,
    SnapshotRecord,
    VolumeRecord,
)
from stockade.server.state.store import SQLiteStore

MIB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _sandbox(
    sandbox_id: str, tenant: str, status: str = "running", cpu: float = 1.0, memory: int = 512
) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id, image="debian", cpu=cpu, memory=memory, disk=1024, timeout=300.0,
        status=SandboxStatus(status), created_at=1.0, tenant=tenant,
    )  # fmt: skip


def _request(tenant: str = "acme", **changes: Any) -> CreateRequest:
    fields: dict[str, Any] = dict(
        image="debian", cpu=1.0, memory=128, disk=1024, timeout=300.0, env={},
        workdir=None, tags={}, entrypoint=None, tenant=tenant,
    )  # fmt: skip
    fields.update(changes)
    return CreateRequest(**fields)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "state.db")
    yield store
    await store.close()


def _quotas(
    store: SQLiteStore | None, limits: Mapping[str, float], clock: Clock | None = None
) -> Quotas:
    return Quotas(store, lambda t: limits if t == "acme" else {}, clock=clock or Clock())


# -------------------------------------------------------------------- the arithmetic


def test_live_sandboxes_of_the_tenant_count_pooled_and_ended_ones_do_not() -> None:
    records = [
        _sandbox("sb-1", "acme", "running", 1.5, 256),
        _sandbox("sb-2", "acme", "paused", 0.5, 128),
        _sandbox("sb-3", "acme", "starting", 1.0, 64),
        _sandbox("sb-4", "acme", "terminated"),
        _sandbox("sb-5", "acme", "failed"),
        _sandbox("sb-6", "", "pooled"),
        _sandbox("sb-7", "other", "running"),
    ]
    assert sandbox_usage(records, "acme") == Usage(3, 3.0, 448)
    assert sandbox_usage(records, "nobody") == Usage()


def test_max_sandboxes_names_the_limit_the_use_and_the_fix() -> None:
    limits = {"max_sandboxes": 5}
    check_capacity("acme", limits, Usage(4, 4, 2048), cpu=1, memory=512)
    with pytest.raises(QuotaExceededError) as info:
        check_capacity("acme", limits, Usage(5, 5, 2560), cpu=1, memory=512)
    assert info.value.status == 429 and info.value.code == "quota_exceeded"
    assert info.value.message == (
        "tenant acme has 5 live sandboxes of max_sandboxes=5; end one (stockade rm) or ask "
        "the operator to raise it (stockade tenant set acme --max-sandboxes N)"
    )
    with pytest.raises(QuotaExceededError, match=r"has 3 live sandboxes .* so 3 more"):
        check_capacity("acme", limits, Usage(3, 3, 0), count=3, cpu=1, memory=512)
    with pytest.raises(QuotaExceededError, match="max_sandboxes=0"):
        check_capacity("acme", {"max_sandboxes": 0}, Usage(), cpu=1, memory=512)


def test_cpu_and_memory_sum_the_live_sandboxes_and_the_new_ones() -> None:
    # 0.1 + 0.2 is not exactly 0.3: three tenths of a core fit a limit of 0.3.
    check_capacity("acme", {"max_cpu": 0.3}, Usage(2, 0.1 + 0.2 - 0.1, 0), cpu=0.1, memory=1)
    check_capacity("acme", {"max_cpu": 4}, Usage(2, 2.0, 0), count=2, cpu=1, memory=1)
    with pytest.raises(QuotaExceededError) as info:
        check_capacity("acme", {"max_cpu": 4}, Usage(2, 3.5, 0), cpu=1, memory=1)
    assert "use 3.5 cores of max_cpu=4, so one more with cpu=1 does not fit" in info.value.message
    assert "stockade tenant set acme --max-cpu CORES" in info.value.message
    check_capacity("acme", {"max_memory": 1024}, Usage(1, 1, 512), cpu=1, memory=512)
    with pytest.raises(QuotaExceededError) as info:
        check_capacity("acme", {"max_memory": 1024}, Usage(1, 1, 512), cpu=1, memory=513)
    assert "use 512 MiB of max_memory=1024 MiB, so one more with memory=513 does not" in str(
        info.value
    )
    with pytest.raises(QuotaExceededError, match="so 2 more with memory=512 each, do not fit"):
        check_capacity("acme", {"max_memory": 1024}, Usage(1, 1, 512), count=2, cpu=1, memory=512)
    assert "--max-memory MIB" in info.value.message


def test_max_timeout() -> None:
    check_timeout("acme", {"max_timeout": 600}, 600)
    check_timeout("acme", {}, 86400)
    with pytest.raises(QuotaExceededError) as info:
        check_timeout("acme", {"max_timeout": 600}, 601)
    assert info.value.message.startswith(
        "timeout=601 is longer than tenant acme's max_timeout=600 seconds; ask for at most 600"
    )


def test_disk_counts_snapshot_bytes_and_volume_mib() -> None:
    snapshots = [
        SnapshotRecord("sn-1", "sb-1", 1.0, 300 * MIB, tenant="acme"),
        SnapshotRecord("sn-2", "sb-2", 1.0, 999 * MIB, tenant="other"),
    ]
    volumes = [VolumeRecord("vol-1", "data", 1.0, 200, tenant="acme")]
    assert disk_used_mib(snapshots, volumes, "acme") == 500
    limits = {"max_disk": 1000}
    check_disk("acme", limits, 500, 500, "volume 'x'")
    with pytest.raises(QuotaExceededError) as info:
        check_disk("acme", limits, 500, 501, "volume 'x'")
    assert "use 500 MiB of max_disk=1000 MiB, and volume 'x' needs 501 MiB more" in str(info.value)
    assert "stockade tenant set acme --max-disk MIB" in str(info.value)
    # Before a snapshot (its size unknown): refused only once the tenant is at the limit.
    check_disk("acme", limits, 999.5, 0, "a snapshot")
    with pytest.raises(QuotaExceededError, match="use 1000 MiB of max_disk=1000 MiB; delete"):
        check_disk("acme", limits, 1000, 0, "a snapshot")


# -------------------------------------------------------------------- the token bucket


def test_token_bucket_holds_the_rate_and_refills_continuously() -> None:
    clock = Clock()
    bucket = TokenBucket(2, clock)
    assert bucket.take() == 0.0 and bucket.take() == 0.0
    assert bucket.take() == pytest.approx(30.0)  # a token every 30 s
    clock.now += 10
    assert bucket.take() == pytest.approx(20.0)  # refused: nothing taken
    clock.now += 20
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(30.0)
    clock.now += 3600  # an idle hour fills it only to its capacity
    assert bucket.take(2) == 0.0
    assert bucket.take(2) == pytest.approx(60.0)


def test_token_bucket_keeps_what_it_holds_when_the_rate_changes() -> None:
    clock = Clock()
    bucket = TokenBucket(10, clock)
    assert bucket.take(8) == 0.0
    bucket.set_rate(60)  # 2 left, now a token a second
    assert bucket.take(2) == 0.0 and bucket.take() == pytest.approx(1.0)
    bucket.set_rate(1)
    clock.now += 600
    assert bucket.take() == 0.0 and bucket.take() == pytest.approx(60.0)


# -------------------------------------------------------------------- admission


async def test_without_quotas_nothing_is_counted_or_looked_up() -> None:
    quotas = _quotas(None, {})  # no store: a query would fail
    async with quotas.admit("acme", count=3, cpu=64, memory=65536, timeout=1e9) as admitted:
        assert admitted.count == 3 and len(set(admitted.ids)) == 3
        assert all(i.startswith("sb-") for i in admitted.ids)
        assert admitted.request(_request()).sandbox_id == admitted.ids[0]
    quotas.check_timeout("acme", 1e9)
    await quotas.disk_room("acme", "a snapshot")
    async with quotas.storing("acme", 1e9, "volume 'x'"):
        pass


async def test_a_request_with_an_id_makes_a_record_with_that_id() -> None:
    assert new_record(_request(sandbox_id="sb-00000000000000aa"), image="d", env={}).id == (
        "sb-00000000000000aa"
    )
    assert new_record(_request(), image="d", env={}).id.startswith("sb-")


async def _create(quotas: Quotas, store: SQLiteStore, made: list[str], **kw: Any) -> None:
    """A create as Creator makes one: admitted, then its record stored, then slow to end."""
    async with quotas.admit("acme", cpu=1, memory=128, timeout=300, **kw) as admitted:
        await asyncio.sleep(0.01)
        for sandbox_id in admitted.ids:
            await store.put_sandbox(_sandbox(sandbox_id, "acme", "starting", 1, 128))
        await asyncio.sleep(0.01)
        made.extend(admitted.ids)


async def test_concurrent_creates_never_slip_under_a_limit_together(
    store: SQLiteStore,
) -> None:
    quotas = _quotas(store, {"max_sandboxes": 2})
    made: list[str] = []
    results = await asyncio.gather(
        *(_create(quotas, store, made) for _ in range(4)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, QuotaExceededError)]
    assert len(made) == 2 and len(refused) == 2, results
    assert "has 2 live sandboxes of max_sandboxes=2" in str(refused[0])
    # Done and in the store: counted once, not also as admissions in progress.
    with pytest.raises(QuotaExceededError, match="has 2 live"):
        await _create(quotas, store, made)
    await store.put_sandbox(_sandbox(made[0], "acme", "terminated"))
    await _create(quotas, store, made)
    assert len(made) == 3


async def test_an_admission_counts_until_its_sandboxes_are_stored(store: SQLiteStore) -> None:
    quotas = _quotas(store, {"max_memory": 512})
    async with quotas.admit("acme", count=2, cpu=1, memory=128, timeout=None) as first:
        # In progress, nothing stored: 256 MiB are spoken for.
        with pytest.raises(QuotaExceededError, match="use 256 MiB of max_memory=512"):
            async with quotas.admit("acme", count=3, cpu=1, memory=128, timeout=None):
                pass
        await store.put_sandbox(_sandbox(first.ids[0], "acme", "running", 1, 128))
        # One stored, one to come: still 256, never 384.
        async with quotas.admit("acme", count=2, cpu=1, memory=128, timeout=None) as second:
            assert second.ids != first.ids
        with pytest.raises(QuotaExceededError, match="use 256 MiB"):
            async with quotas.admit("acme", count=3, cpu=1, memory=128, timeout=None):
                pass
    async with quotas.admit("acme", count=3, cpu=1, memory=128, timeout=None):
        pass  # the first ended with one sandbox made: 128 + 384


async def test_a_pooled_sandbox_handed_out_counts_once(store: SQLiteStore) -> None:
    quotas = _quotas(store, {"max_sandboxes": 2})
    async with quotas.admit("acme", cpu=1, memory=128, timeout=None) as admitted:
        admitted.claim("sb-pooled")
        await store.put_sandbox(_sandbox("sb-pooled", "acme", "running"))
        async with quotas.admit("acme", cpu=1, memory=128, timeout=None):
            pass  # one live (the pooled one, now acme's) and this one: 2
    await store.put_sandbox(_sandbox("sb-other", "acme", "running"))
    with pytest.raises(QuotaExceededError):
        async with quotas.admit("acme", cpu=1, memory=128, timeout=None):
            pass


async def test_rate_limit_and_retry_after(store: SQLiteStore) -> None:
    clock = Clock()
    quotas = _quotas(store, {"creates_per_minute": 2, "max_sandboxes": 10}, clock)
    made: list[str] = []
    await _create(quotas, store, made)
    await _create(quotas, store, made)
    with pytest.raises(RateLimitedError) as info:
        await _create(quotas, store, made)
    assert info.value.status == 429 and info.value.code == "rate_limited"
    assert info.value.retry_after == pytest.approx(30.0)
    assert info.value.headers() == {"Retry-After": "30"}
    assert "creates_per_minute=2; try again in 30 s" in info.value.message
    clock.now += 30
    await _create(quotas, store, made)
    # Four at once never fit a bucket of two; the answer says so instead of "wait".
    clock.now += 600
    with pytest.raises(QuotaExceededError, match="never lets 4 sandboxes") as never:
        await _create(quotas, store, made, count=4)
    assert not isinstance(never.value, RateLimitedError)
    assert len(made) == 3


async def test_a_create_refused_for_a_limit_takes_no_token(store: SQLiteStore) -> None:
    limits = {"creates_per_minute": 1, "max_memory": 100, "max_timeout": 10}
    quotas = _quotas(store, limits)
    with pytest.raises(QuotaExceededError, match="max_memory"):
        async with quotas.admit("acme", cpu=1, memory=101, timeout=None):
            pass
    with pytest.raises(QuotaExceededError, match="max_timeout"):
        async with quotas.admit("acme", cpu=1, memory=1, timeout=11):
            pass
    async with quotas.admit("acme", cpu=1, memory=100, timeout=10):
        pass  # the token was still there
    with pytest.raises(RateLimitedError):
        async with quotas.admit("acme", cpu=1, memory=1, timeout=None):
            pass


async def test_other_tenants_and_the_default_one_are_not_limited(store: SQLiteStore) -> None:
    quotas = _quotas(store, {"max_sandboxes": 1, "creates_per_minute": 0})
    for tenant in ("default", "other"):
        async with quotas.admit(tenant, cpu=1, memory=1, timeout=None):
            pass
    with pytest.raises(QuotaExceededError, match="creates_per_minute=0 lets it make no"):
        async with quotas.admit("acme", cpu=1, memory=1, timeout=None):
            pass


async def test_disk_is_checked_and_recorded_one_at_a_time(store: SQLiteStore) -> None:
    quotas = _quotas(store, {"max_disk": 1000})
    await store.put_volume(VolumeRecord("vol-1", "a", 1.0, 600, tenant="acme"))
    stored: list[str] = []

    async def volume(name: str, size: int) -> None:
        async with quotas.storing("acme", size, f"volume {name!r}"):
            await asyncio.sleep(0.01)
            await store.put_volume(VolumeRecord(f"vol-{name}", name, 1.0, size, tenant="acme"))
            stored.append(name)

    results = await asyncio.gather(volume("b", 300), volume("c", 300), return_exceptions=True)
    assert len(stored) == 1 and isinstance(
        next(r for r in results if r is not None), QuotaExceededError
    )
    await quotas.disk_room("acme", "a snapshot")  # 900 of 1000: room left
    await store.put_snapshot(SnapshotRecord("sn-1", "sb-1", 1.0, 100 * MIB, tenant="acme"))
    with pytest.raises(QuotaExceededError, match="use 1000 MiB of max_disk=1000"):
        await quotas.disk_room("acme", "a snapshot")


# -------------------------------------------------------------------- every way counts


class _Pools:
    def __init__(self, pooled: SandboxRecord | None) -> None:
        self.pooled = pooled
        self.taken = 0

    async def take(self, req: CreateRequest, *, picked: Any = None) -> SandboxRecord | None:
        self.taken += 1
        if self.pooled is None:
            return None
        picked(self.pooled.id)
        self.pooled.tenant, self.pooled.status = req.tenant, SandboxStatus.RUNNING
        return self.pooled

    async def make_room(self, memory: int) -> None:
        return None


async def test_creator_counts_a_pooled_sandbox_as_a_cold_create(store: SQLiteStore) -> None:
    cold: list[CreateRequest] = []

    async def create(req: CreateRequest) -> SandboxRecord:
        cold.append(req)
        record = _sandbox(req.sandbox_id or "sb-x", req.tenant, "running", req.cpu, req.memory)
        await store.put_sandbox(record)
        return record

    sandboxes = SimpleNamespace(create=create)
    code = SimpleNamespace(prewarm=lambda *args: None)
    pools = _Pools(_sandbox("sb-pooled", "", "pooled", 1.0, 128))
    quotas = _quotas(store, {"max_sandboxes": 1})
    creator = Creator(cast(Any, sandboxes), cast(Any, pools), cast(Any, None), cast(Any, code),
                      quotas)  # fmt: skip
    record = await creator.create(_request())
    assert record.id == "sb-pooled" and not cold
    await store.put_sandbox(record)
    with pytest.raises(QuotaExceededError, match="has 1 live sandboxes of max_sandboxes=1"):
        await creator.create(_request())
    assert pools.taken == 1  # refused before the pool was asked
    await store.put_sandbox(_sandbox("sb-pooled", "acme", "terminated"))
    pools.pooled = None
    record = await creator.create(_request())
    assert [r.sandbox_id for r in cold] == [record.id]


async def test_creator_counts_a_restore_by_its_snapshots_limits(store: SQLiteStore) -> None:
    source = _sandbox("sb-src", "acme", "terminated", 2.0, 512)
    restored: list[CreateRequest] = []

    async def get(snapshot_id: str) -> SnapshotRecord:
        return SnapshotRecord(snapshot_id, "sb-src", 1.0, MIB, sandbox=json.loads(source.to_json()))

    async def restore(snapshot_id: str, req: CreateRequest) -> SandboxRecord:
        restored.append(req)
        return _sandbox(req.sandbox_id or "", req.tenant, "running", 2.0, 512)

    snapshots = SimpleNamespace(get=get, restore=restore)
    creator = Creator(cast(Any, None), cast(Any, _Pools(None)), cast(Any, snapshots),
                      cast(Any, None), _quotas(store, {"max_memory": 256}))  # fmt: skip
    # The request asks for 128 MiB, but a restore keeps its source's 512.
    with pytest.raises(QuotaExceededError, match="one more with memory=512 does"):
        await creator.create(_request(memory=128), snapshot="sn-1")
    assert restored == []
    record = await creator.create(_request("other", memory=128), snapshot="sn-1")
    assert [r.sandbox_id for r in restored] == [record.id]


# -------------------------------------------------------------------- the tenants' limits


async def test_access_keeps_the_quotas_in_memory(store: SQLiteStore) -> None:
    access = AccessService(store, "sk_admin_0123456789")
    await access.start()
    assert access.quotas("default") == {} and access.quotas("nobody") == {}
    await access.create_tenant("acme", {"max_sandboxes": 2})
    await access.create_tenant("bare", {})
    assert access.quotas("acme") == {"max_sandboxes": 2} and access.quotas("bare") == {}
    await access.set_quotas("acme", {"max_memory": 1024, "max_sandboxes": None})
    assert access.quotas("acme") == {"max_memory": 1024}
    fresh = AccessService(store, "sk_admin_0123456789")
    await fresh.start()
    assert fresh.quotas("acme") == {"max_memory": 1024}
    await access.delete_tenant("acme")
    assert access.quotas("acme") == {}
