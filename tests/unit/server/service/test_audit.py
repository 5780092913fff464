"""The audit log over a real SQLite store: recording never waits, readers see what was
recorded before they asked, nothing is lost to a failed write, the queue is bounded, and
retention removes old entries only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from stockade.server.service.audit import AuditLog
from stockade.server.state.records import AuditRecord
from stockade.server.state.store import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "state.db")
    yield store
    await store.close()


def _entry(
    n: int, *, tenant: str = "acme", sandbox: str | None = "sb-1", at: float = 0
) -> AuditRecord:
    return AuditRecord(
        at=at or time.time(), tenant=tenant, kind="exec", key_id="key-1", sandbox=sandbox,
        argv=["echo", str(n)], exit_code=n % 256, bytes_in=n, bytes_out=2 * n,
    )  # fmt: skip


async def test_entries_round_trip_in_order_with_their_fields(store: SQLiteStore) -> None:
    log = AuditLog(store)
    for n in range(5):
        log.record(_entry(n))
    got = await log.read()  # nothing written yet: read writes the queue out first
    assert [e.argv for e in got] == [["echo", str(n)] for n in range(5)]
    assert [e.seq for e in got] == sorted(e.seq for e in got) and got[0].seq > 0
    assert (got[3].exit_code, got[3].bytes_in, got[3].bytes_out, got[3].key_id) == (
        3,
        3,
        6,
        "key-1",
    )


async def test_filters_and_paging(store: SQLiteStore) -> None:
    log = AuditLog(store)
    old = time.time() - 3600
    log.record(_entry(1, tenant="acme", sandbox="sb-a", at=old))
    log.record(_entry(2, tenant="acme", sandbox="sb-b"))
    log.record(_entry(3, tenant="other", sandbox="sb-a"))
    assert [e.bytes_in for e in await log.read(tenant="acme")] == [1, 2]
    assert [e.bytes_in for e in await log.read(sandbox="sb-a")] == [1, 3]
    assert [e.bytes_in for e in await log.read(since=old + 1)] == [2, 3]
    first = await log.read(limit=2)
    assert [e.bytes_in for e in first] == [1, 2]
    assert [e.bytes_in for e in await log.read(after=first[-1].seq)] == [3]


async def test_the_writer_writes_without_a_reader(store: SQLiteStore) -> None:
    log = AuditLog(store)
    log.start()
    try:
        log.record(_entry(7))
        for _ in range(100):
            if await store.list_audit():
                break
            await asyncio.sleep(0.02)
        assert [e.bytes_in for e in await store.list_audit()] == [7]
    finally:
        await log.stop()


async def test_stop_writes_what_is_queued(store: SQLiteStore) -> None:
    log = AuditLog(store)
    log.start()
    log.record(_entry(1))
    await log.stop()
    assert len(await store.list_audit()) == 1


async def test_recording_does_not_wait_for_the_store(store: SQLiteStore) -> None:
    log = AuditLog(store)
    started = time.perf_counter()
    for n in range(10_000):
        log.record(_entry(n))
    per_entry = (time.perf_counter() - started) / 10_000
    # Generous against a loaded machine: a store write (a thread hop and a commit) is
    # a thousand times this.
    assert per_entry < 0.0005
    assert len(await log.read(limit=1000)) == 1000


class _FailingStore(SQLiteStore):
    fail = True

    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        if self.fail:
            raise OSError("disk full")
        await super().add_audit(records)


async def test_a_failed_write_loses_nothing(tmp_path: Path) -> None:
    store = _FailingStore(tmp_path / "state.db")
    try:
        log = AuditLog(store)
        log.record(_entry(1))
        log.record(_entry(2))
        with pytest.raises(OSError):
            await log.flush()
        log.record(_entry(3))
        store.fail = False
        assert [e.bytes_in for e in await log.read()] == [1, 2, 3]
    finally:
        await store.close()


async def test_a_full_queue_drops_the_oldest_and_counts(store: SQLiteStore) -> None:
    log = AuditLog(store, max_queued=3)
    for n in range(5):
        log.record(_entry(n))
    assert log.dropped == 2
    assert [e.bytes_in for e in await log.read()] == [2, 3, 4]


async def test_retention_removes_only_entries_past_it(store: SQLiteStore) -> None:
    now = time.time()
    log = AuditLog(store, retention=86400)
    log.record(_entry(1, at=now - 2 * 86400))
    log.record(_entry(2, at=now - 3600))
    await log.flush()
    assert await log.prune(now) == 1
    assert [e.bytes_in for e in await log.read()] == [2]
    forever = AuditLog(store, retention=0)
    assert await forever.prune(now + 10 * 86400) == 0
