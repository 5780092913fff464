"""The audit log: who did what, when, to which sandbox.

Every mutating API call and every exec leaves one :class:`AuditRecord`. Recording one must
never hold up the call it records (an exec's round trip is a few milliseconds), so
:meth:`AuditLog.record` only appends to a queue in memory; a writer task moves the queue
to the store in batches, one transaction each, off the event loop. A reader always sees
what was recorded before it asked: :meth:`AuditLog.read` writes the queue out first.

The queue is bounded: if the store stops taking writes for long enough to fill it, the
oldest entries are dropped and counted, and the log says so, rather than the server
running out of memory because its database is stuck.

Entries older than the retention are removed by the writer once an hour (and at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from ..state.records import AuditRecord
from ..state.store import Store

__all__ = ["DEFAULT_AUDIT_RETENTION", "AuditLog"]

log = logging.getLogger(__name__)

DEFAULT_AUDIT_RETENTION = 90 * 86400.0
_PRUNE_EVERY = 3600.0
# How long the writer lets entries gather before a write: under a stream of execs, one
# transaction per batch instead of one per exec.
_GATHER = 0.05


class AuditLog:
    """Entries queued in memory and written to the store by one background task."""

    def __init__(
        self,
        store: Store,
        *,
        retention: float = DEFAULT_AUDIT_RETENTION,
        max_queued: int = 100_000,
        enabled: bool = True,
    ) -> None:
        self.store = store
        self.enabled = enabled  # off: nothing new is recorded (`stockade serve --no-audit`)
        self.retention = retention  # seconds; 0: keep every entry
        self._queue: deque[AuditRecord] = deque()
        self._max_queued = max_queued
        self.dropped = 0  # entries lost to a full queue since start
        self._wake = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def record(self, entry: AuditRecord) -> None:
        """Queue ``entry``; never waits (safe on any request's path)."""
        if not self.enabled:
            return
        if len(self._queue) >= self._max_queued:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "the audit log's queue is full (the database takes no writes?): "
                    "%d entries dropped so far",
                    self.dropped,
                )
        self._queue.append(entry)
        self._wake.set()

    async def flush(self) -> None:
        """Write every queued entry now."""
        async with self._write_lock:
            while self._queue:
                batch = list(self._queue)
                self._queue.clear()
                try:
                    await self.store.add_audit(batch)
                except BaseException:
                    # Put them back in front, so a failed write loses nothing.
                    self._queue.extendleft(reversed(batch))
                    raise

    async def read(
        self,
        *,
        tenant: str | None = None,
        sandbox: str | None = None,
        since: float | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Entries oldest first (see Store.list_audit), the queued ones included."""
        await self.flush()
        return await self.store.list_audit(
            tenant=tenant, sandbox=sandbox, since=since, after=after, limit=limit
        )

    async def prune(self, now: float | None = None) -> int:
        """Remove the entries past the retention; how many went."""
        if self.retention <= 0:
            return 0
        return await self.store.prune_audit((now or time.time()) - self.retention)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush()

    async def _run(self) -> None:
        next_prune = 0.0
        while True:
            now = time.monotonic()
            if now >= next_prune:
                next_prune = now + _PRUNE_EVERY
                try:
                    pruned = await self.prune()
                    if pruned:
                        log.info("removed %d audit entries past the retention", pruned)
                except Exception:
                    log.exception("pruning the audit log")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=_PRUNE_EVERY)
            self._wake.clear()
            await asyncio.sleep(_GATHER)
            try:
                await self.flush()
            except Exception:
                log.exception("writing the audit log (kept queued; retrying)")
                await asyncio.sleep(1.0)
                self._wake.set()
