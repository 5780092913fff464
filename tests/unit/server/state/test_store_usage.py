"""The usage table of the SQLite store: figures added per tenant and minute, and summed
over a window of minutes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stockade.server.state.records import USAGE_FIELDS, UsageRecord
from stockade.server.state.store import SQLiteStore

T0 = 1_800_000_000  # a minute's start (divisible by 60)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "state.db")
    yield store
    await store.close()


def _figures(record: UsageRecord) -> dict[str, float]:
    return {f: getattr(record, f) for f in USAGE_FIELDS}


async def test_adding_to_a_minute_adds_to_what_it_holds(store: SQLiteStore) -> None:
    await store.add_usage([UsageRecord("acme", T0, sandbox_seconds=10, cpu_seconds=2, execs=3)])
    await store.add_usage(
        [
            UsageRecord("acme", T0, sandbox_seconds=5, memory_gib_seconds=2.5, execs=1),
            UsageRecord("acme", T0 + 60, snapshot_gib_hours=0.25, volume_gib_hours=1.5),
        ]
    )
    [acme] = await store.sum_usage(tenant="acme", since=T0, until=T0 + 120)
    assert (acme.tenant, acme.minute) == ("acme", 0)
    assert _figures(acme) == {
        "sandbox_seconds": 15.0, "cpu_seconds": 2.0, "memory_gib_seconds": 2.5,
        "snapshot_gib_hours": 0.25, "volume_gib_hours": 1.5, "execs": 4,
    }  # fmt: skip
    assert isinstance(acme.execs, int) and isinstance(acme.cpu_seconds, float)


async def test_the_window_takes_the_minutes_that_start_in_it(store: SQLiteStore) -> None:
    await store.add_usage(
        [UsageRecord("acme", T0 + 60 * i, sandbox_seconds=float(i + 1)) for i in range(4)]
    )

    async def seconds(since: float, until: float) -> float:
        found = await store.sum_usage(tenant="acme", since=since, until=until)
        return found[0].sandbox_seconds if found else 0.0

    # since is rounded down to its minute; until is exclusive.
    assert await seconds(T0, T0 + 240) == 1 + 2 + 3 + 4
    assert await seconds(T0 + 90, T0 + 180) == 2 + 3
    assert await seconds(T0 + 60, T0 + 61) == 2
    assert await seconds(T0 + 60, T0 + 60) == 0
    assert await seconds(T0 + 240, T0 + 600) == 0


async def test_sums_are_per_tenant_and_one_tenant_sees_only_its_own(store: SQLiteStore) -> None:
    await store.add_usage(
        [
            UsageRecord("beta", T0, sandbox_seconds=7, execs=1),
            UsageRecord("acme", T0, sandbox_seconds=3),
            UsageRecord("acme", T0 + 60, sandbox_seconds=4, execs=2),
        ]
    )
    every = await store.sum_usage(tenant=None, since=T0, until=T0 + 120)
    assert [(u.tenant, u.sandbox_seconds, u.execs) for u in every] == [
        ("acme", 7.0, 2), ("beta", 7.0, 1),
    ]  # fmt: skip
    [beta] = await store.sum_usage(tenant="beta", since=T0, until=T0 + 120)
    assert (beta.tenant, beta.sandbox_seconds) == ("beta", 7.0)
    assert await store.sum_usage(tenant="gamma", since=T0, until=T0 + 120) == []


async def test_figures_survive_reopening_the_store(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "state.db")
    await first.add_usage([UsageRecord("acme", T0, cpu_seconds=1.5)])
    await first.add_usage([])  # nothing to write: no transaction, no error
    await first.close()
    again = SQLiteStore(tmp_path / "state.db")
    try:
        [acme] = await again.sum_usage(tenant="acme", since=T0, until=T0 + 60)
        assert acme.cpu_seconds == 1.5
    finally:
        await again.close()
