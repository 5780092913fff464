"""The usage meter over a real SQLite store, with its clock and its CPU reader faked:
what a sandbox, its CPU, its memory, snapshots, volumes and execs are billed, in which
minute, and to whom."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stockade.errors import InvalidArgumentError
from stockade.server.service.usage import Meter, month_start
from stockade.server.state.records import (
    SandboxRecord,
    SnapshotRecord,
    UsageRecord,
    VolumeRecord,
)
from stockade.server.state.store import SQLiteStore
from tests.waiting import wait_for_async

T0 = 1_800_000_000.0  # a minute's start
GIB = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Cgroups:
    """CPU seconds per sandbox as its cgroup would count them (absent: no cgroup)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.reads: list[str] = []

    def __call__(self, sandbox_id: str) -> float | None:
        self.reads.append(sandbox_id)
        return self.cpu.get(sandbox_id)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "state.db")
    yield store
    await store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cgroups() -> Cgroups:
    return Cgroups()


@pytest.fixture
def meter(store: SQLiteStore, clock: Clock, cgroups: Cgroups) -> Meter:
    return Meter(store, cpu_seconds=cgroups, clock=clock)


def _sandbox(sandbox_id: str, tenant: str = "acme", memory: int = 512) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id, image="python", cpu=1, memory=memory, disk=1024, timeout=300,
        tenant=tenant,
    )  # fmt: skip


async def _one(
    meter: Meter, tenant: str, since: float = T0, until: float = T0 + 3600
) -> UsageRecord:
    [found] = (await meter.usage(tenant, since, until)).tenants
    return found


async def test_a_sandbox_is_billed_its_time_cpu_and_allocated_memory(
    meter: Meter, clock: Clock, cgroups: Cgroups
) -> None:
    cgroups.cpu["sb-1"] = 3.0  # what booting it cost: not billed
    meter.begin(_sandbox("sb-1", memory=512), T0 + 5)
    cgroups.cpu["sb-1"] = 7.5
    clock.now = T0 + 25
    meter.end("sb-1")
    used = await _one(meter, "acme")
    assert used.sandbox_seconds == pytest.approx(20.0)
    assert used.cpu_seconds == pytest.approx(4.5)
    assert used.memory_gib_seconds == pytest.approx(0.5 * 20)
    assert (used.snapshot_gib_hours, used.volume_gib_hours, used.execs) == (0.0, 0.0, 0)


async def test_an_interval_is_split_between_the_minutes_it_spans(
    meter: Meter, store: SQLiteStore, cgroups: Cgroups
) -> None:
    cgroups.cpu["sb-1"] = 0.0
    meter.begin(_sandbox("sb-1", memory=1024), T0 + 50)
    cgroups.cpu["sb-1"] = 4.0
    meter.end("sb-1", T0 + 70)  # 10 s in the first minute, 10 s in the next
    await meter.flush()
    [first] = await store.sum_usage(tenant="acme", since=T0, until=T0 + 60)
    [second] = await store.sum_usage(tenant="acme", since=T0 + 60, until=T0 + 120)
    assert (first.sandbox_seconds, second.sandbox_seconds) == (10.0, 10.0)
    assert (first.cpu_seconds, second.cpu_seconds) == (2.0, 2.0)
    assert (first.memory_gib_seconds, second.memory_gib_seconds) == (10.0, 10.0)


async def test_flushes_bill_each_interval_once(
    meter: Meter, clock: Clock, cgroups: Cgroups
) -> None:
    cgroups.cpu["sb-1"] = 1.0
    meter.begin(_sandbox("sb-1"), T0)
    for step in range(1, 7):  # a tick every 10 s
        clock.now = T0 + 10 * step
        cgroups.cpu["sb-1"] = 1.0 + step
        await meter.flush()
    used = await _one(meter, "acme")  # flushes once more, at the same time: adds nothing
    assert used.sandbox_seconds == pytest.approx(60.0)
    assert used.cpu_seconds == pytest.approx(6.0)
    assert meter.billing() == ["sb-1"]


async def test_end_is_idempotent_and_unknown_or_pooled_sandboxes_cost_nothing(
    meter: Meter, clock: Clock, cgroups: Cgroups
) -> None:
    cgroups.cpu["sb-pooled"] = 9.0  # running in a pool, never begun
    meter.end("sb-pooled")
    meter.end("sb-never")
    meter.begin(_sandbox("sb-1"), T0)
    clock.now = T0 + 10
    meter.end("sb-1")
    clock.now = T0 + 40
    meter.end("sb-1")  # a second end (terminate after the exit watcher) adds nothing
    assert meter.billing() == []
    report = await meter.usage(None, T0, T0 + 3600)
    assert [(u.tenant, u.sandbox_seconds) for u in report.tenants] == [("acme", 10.0)]


async def test_a_pooled_sandbox_is_billed_from_its_hand_out(
    meter: Meter, clock: Clock, cgroups: Cgroups
) -> None:
    # It idled in the pool for a minute, using CPU: its baseline is read at hand-out.
    cgroups.cpu["sb-p"] = 2.0
    clock.now = T0 + 60
    meter.begin(_sandbox("sb-p", tenant="beta"), clock.now)
    cgroups.cpu["sb-p"] = 2.25
    clock.now = T0 + 70
    meter.end("sb-p")
    used = await _one(meter, "beta")
    assert (used.sandbox_seconds, used.cpu_seconds) == pytest.approx((10.0, 0.25))


async def test_cpu_when_the_cgroup_is_missing_or_renewed(
    meter: Meter, clock: Clock, cgroups: Cgroups
) -> None:
    cgroups.cpu["sb-1"] = 5.0
    meter.begin(_sandbox("sb-1"), T0)
    clock.now, cgroups.cpu["sb-1"] = T0 + 10, 6.0
    await meter.flush()
    # The cgroup went before the end was told (a crash of runsc): only what the last
    # reading counted is billed, the time all the same.
    del cgroups.cpu["sb-1"]
    clock.now = T0 + 20
    meter.end("sb-1")
    # No cgroup at the start (a host without cpuacct): the first reading is the baseline.
    meter.begin(_sandbox("sb-2"), T0 + 20)
    clock.now, cgroups.cpu["sb-2"] = T0 + 30, 10.0
    await meter.flush()
    clock.now, cgroups.cpu["sb-2"] = T0 + 40, 10.5
    await meter.flush()
    # A count that went back is a new cgroup: never a negative charge.
    clock.now, cgroups.cpu["sb-2"] = T0 + 50, 0.25
    meter.end("sb-2")
    used = await _one(meter, "acme")
    assert used.sandbox_seconds == pytest.approx(50.0)
    assert used.cpu_seconds == pytest.approx(1.0 + 0.5)


async def test_beginning_twice_does_not_bill_twice(
    meter: Meter, clock: Clock, cgroups: Cgroups
) -> None:
    meter.begin(_sandbox("sb-1"), T0)
    clock.now = T0 + 10
    meter.begin(_sandbox("sb-1"), T0 + 10)
    clock.now = T0 + 15
    meter.end("sb-1")
    assert (await _one(meter, "acme")).sandbox_seconds == pytest.approx(15.0)


async def test_execs_are_counted_per_tenant_in_their_minute(
    meter: Meter, store: SQLiteStore, clock: Clock
) -> None:
    for _ in range(3):
        meter.count_exec("acme")
    meter.count_exec("beta")
    clock.now = T0 + 61
    meter.count_exec("acme")
    await meter.flush()
    first = await store.sum_usage(tenant=None, since=T0, until=T0 + 60)
    assert [(u.tenant, u.execs) for u in first] == [("acme", 3), ("beta", 1)]
    assert (await _one(meter, "acme")).execs == 4


async def test_storage_is_billed_size_times_time_from_the_later_of_start_and_creation(
    store: SQLiteStore, clock: Clock, cgroups: Cgroups
) -> None:
    # Made before the server started: billed from the start, not from its creation.
    await store.put_volume(VolumeRecord("vol-1", "data", created_at=T0 - 7200, size=2048))
    meter = Meter(store, cpu_seconds=cgroups, clock=clock)
    await meter.start()
    try:
        clock.now = T0 + 900
        await store.put_snapshot(
            SnapshotRecord("sn-1", "sb-1", created_at=T0 + 900, size=GIB // 2, tenant="beta")
        )
        clock.now = T0 + 1800
        await meter.flush()
        clock.now = T0 + 3600
        beta = await _one(meter, "beta", until=T0 + 3600)
        default = await _one(meter, "default", until=T0 + 3600)
    finally:
        await meter.stop()
    assert beta.snapshot_gib_hours == pytest.approx(0.5 * 0.75)
    assert default.volume_gib_hours == pytest.approx(2.0 * 1.0)
    assert default.snapshot_gib_hours == 0.0 and beta.volume_gib_hours == 0.0


async def test_a_tenant_sees_its_own_figures_and_a_line_even_when_idle(
    meter: Meter, clock: Clock
) -> None:
    meter.begin(_sandbox("sb-a", tenant="acme"), T0)
    meter.begin(_sandbox("sb-b", tenant="beta", memory=2048), T0)
    clock.now = T0 + 30
    report = await meter.usage("acme", T0, T0 + 3600)
    assert [(u.tenant, u.sandbox_seconds, u.memory_gib_seconds) for u in report.tenants] == [
        ("acme", 30.0, 15.0)
    ]
    every = await meter.usage(None, T0, T0 + 3600)
    assert [u.tenant for u in every.tenants] == ["acme", "beta"]
    assert every.tenants[1].memory_gib_seconds == pytest.approx(60.0)
    idle = await _one(meter, "gamma")
    assert idle == UsageRecord("gamma", 0)


async def test_the_window_defaults_to_this_month_and_must_not_end_before_it_starts(
    meter: Meter, clock: Clock
) -> None:
    clock.now = dt.datetime(2027, 3, 14, 15, 9, 26, tzinfo=dt.UTC).timestamp()
    report = await meter.usage("acme")
    assert report.since == dt.datetime(2027, 3, 1, tzinfo=dt.UTC).timestamp()
    assert report.until == clock.now
    assert month_start(clock.now) == report.since
    # since is counted from the start of its minute.
    assert (await meter.usage("acme", since=clock.now - 20)).since == clock.now - 26
    with pytest.raises(InvalidArgumentError, match="is before since"):
        await meter.usage("acme", since=clock.now, until=clock.now - 1)


class BrokenStore(SQLiteStore):
    fail = True

    async def add_usage(self, records: object) -> None:
        if self.fail:
            raise OSError("disk full")
        await super().add_usage(records)  # type: ignore[arg-type]


async def test_figures_that_could_not_be_written_are_kept_for_the_next_flush(
    tmp_path: Path, clock: Clock, cgroups: Cgroups
) -> None:
    store = BrokenStore(tmp_path / "state.db")
    meter = Meter(store, cpu_seconds=cgroups, clock=clock)
    try:
        meter.begin(_sandbox("sb-1"), T0)
        meter.count_exec("acme")
        clock.now = T0 + 10
        with pytest.raises(OSError, match="disk full"):
            await meter.flush()
        store.fail = False
        clock.now = T0 + 20
        used = await _one(meter, "acme")
    finally:
        await store.close()
    assert (used.sandbox_seconds, used.execs) == (20.0, 1)


async def test_the_loop_writes_every_interval_and_stop_writes_the_rest(
    store: SQLiteStore, clock: Clock, cgroups: Cgroups
) -> None:
    meter = Meter(store, interval=0.01, cpu_seconds=cgroups, clock=clock)
    await meter.start()
    meter.begin(_sandbox("sb-1"), T0)
    clock.now = T0 + 10

    async def written() -> float | None:
        found = await store.sum_usage(tenant="acme", since=T0, until=T0 + 60)
        return found[0].sandbox_seconds if found else None

    assert await wait_for_async(written, timeout=5, what="a tick to write") == 10.0
    clock.now = T0 + 12
    meter.count_exec("acme")
    await meter.stop()
    [used] = await store.sum_usage(tenant="acme", since=T0, until=T0 + 60)
    assert (used.sandbox_seconds, used.execs) == (12.0, 1)
    assert meter.billing() == []
    await asyncio.sleep(0.05)  # no loop left to write again
    [again] = await store.sum_usage(tenant="acme", since=T0, until=T0 + 60)
    assert again == used
