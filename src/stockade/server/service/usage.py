"""Usage metering: what each tenant's sandboxes, snapshots and volumes used, by minute.

A :class:`Meter` bills, per tenant and per minute (the store's ``usage`` table):

- ``sandbox_seconds``: wall time a sandbox of the tenant ran, from the moment it was
  handed to its caller (created, taken from a warm pool, resumed) to its end or pause;
- ``cpu_seconds``: CPU time the host charged to the sandbox's cgroup over that time (its
  code, and the gVisor kernel and gofer that run it), read from ``cpuacct``;
- ``memory_gib_seconds``: the sandbox's memory limit (what it was allocated, like E2B
  bills, not what it touched) times the time it ran;
- ``snapshot_gib_hours`` and ``volume_gib_hours``: each snapshot's size on disk and each
  volume's size (its capacity) times the time it existed;
- ``execs``: commands run (:meth:`Meter.count_exec`, called from the exec path).

The sandbox service tells the meter when a sandbox starts and stops being billed
(:meth:`Meter.begin`, :meth:`Meter.end`); every ``interval`` seconds the meter accounts
each running sandbox's time since it last looked, and storage, into its minute buckets,
and adds them to the store. A query (:meth:`Meter.usage`) first brings everything up to
now, so what it answers is current. A warm pool's sandboxes belong to nobody and are not
billed; nor is the time a server is down (the next one bills from its start).

Concurrency: the meter is used from the event loop only; :meth:`begin`, :meth:`end` and
:meth:`count_exec` never await, so each runs whole between a tick's awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ...errors import InvalidArgumentError
from ..runtime import cgroups
from ..state.records import USAGE_FIELDS, SandboxRecord, UsageRecord
from ..state.store import Store

__all__ = ["Meter", "UsageReport", "month_start"]

log = logging.getLogger(__name__)

_MINUTE = 60
_GIB_BYTES = float(1 << 30)
_MIB_PER_GIB = 1024.0


@dataclass
class _Cursor:
    """A sandbox being billed: whose it is, what it was allocated, and how far it has been
    accounted (a time, and the cgroup's CPU reading then; None: no reading yet)."""

    tenant: str
    memory_gib: float
    since: float
    cpu: float | None


@dataclass
class UsageReport:
    """A usage query's answer: each tenant's sums over the minutes of ``[since, until)``."""

    since: float  # the start of the first minute counted
    until: float
    tenants: list[UsageRecord]


def month_start(now: float) -> float:
    """The start (UTC) of the calendar month ``now`` is in: a billing period's start."""
    day = dt.datetime.fromtimestamp(now, dt.UTC)
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def _minutes(start: float, end: float) -> Iterator[tuple[int, float]]:
    """The minutes that ``[start, end)`` covers, each with the share of it that falls
    there; an empty interval is all in the minute of ``end``."""
    if end <= start:
        yield int(end // _MINUTE * _MINUTE), 1.0
        return
    minute = int(start // _MINUTE * _MINUTE)
    while minute < end:
        overlap = min(end, minute + _MINUTE) - max(start, minute)
        if overlap > 0:
            yield minute, overlap / (end - start)
        minute += _MINUTE


class Meter:
    """Meters every tenant's use of sandboxes and storage into the store's usage table.

    ``cpu_seconds`` reads a sandbox's CPU time (the cgroup's; a seam for tests), and
    ``clock`` is the time (Unix seconds). Only sandboxes being billed have a cursor here,
    so what the meter holds is bounded by the sandboxes that run.

    Example::

        meter = Meter(store)
        await meter.start()
        meter.begin(record)         # handed to its caller
        meter.count_exec(record.tenant)
        meter.end(record.id)        # before its cgroup goes
        report = await meter.usage("acme", since=month_start(time.time()))
        await meter.stop()
    """

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 10.0,
        cpu_seconds: Callable[[str], float | None] = cgroups.cpu_seconds,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.interval = interval
        self._cpu_seconds = cpu_seconds
        self._clock = clock
        self._cursors: dict[str, _Cursor] = {}
        self._pending: dict[tuple[str, int], UsageRecord] = {}
        # Storage is billed from here on: a server bills from its own start, never for the
        # time before it (when another server, or none, ran).
        self._storage_since = clock()
        # One flush at a time: each bills storage from where the one before stopped.
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ sandboxes

    def begin(self, record: SandboxRecord, now: float | None = None) -> None:
        """Start billing ``record``'s sandbox to its tenant from ``now`` (default: the
        clock): it was just created running, handed out by a warm pool, resumed, or found
        running by a restarted server. Its CPU is counted from what its cgroup reads now."""
        now = self._clock() if now is None else now
        if record.id in self._cursors:
            self.end(record.id, now)  # never billed twice over one interval
        self._cursors[record.id] = _Cursor(
            tenant=record.tenant,
            memory_gib=record.memory / _MIB_PER_GIB,
            since=now,
            cpu=self._cpu_seconds(record.id),
        )

    def end(self, sandbox_id: str, now: float | None = None) -> None:
        """Stop billing a sandbox, accounting its last interval up to ``now``. Call it
        before its runsc sandbox is deleted: its CPU is read from the cgroup that deleting
        removes. A sandbox not being billed (pooled, ended, unknown) is left alone."""
        cursor = self._cursors.pop(sandbox_id, None)
        if cursor is not None:
            self._account(sandbox_id, cursor, self._clock() if now is None else now)

    def billing(self) -> list[str]:
        """The sandboxes being billed now (their IDs)."""
        return list(self._cursors)

    def count_exec(self, tenant: str) -> None:
        """Count one command run in a sandbox of ``tenant``, now."""
        self._bucket(tenant, int(self._clock() // _MINUTE * _MINUTE)).execs += 1

    def _account(self, sandbox_id: str, cursor: _Cursor, now: float) -> None:
        start, cursor.since = cursor.since, max(cursor.since, now)
        seconds = max(0.0, now - start)
        cpu = 0.0
        reading = self._cpu_seconds(sandbox_id)
        if reading is not None:
            if cursor.cpu is not None:
                # A count that went back is a new cgroup of the same name: count from it.
                cpu = max(0.0, reading - cursor.cpu)
            cursor.cpu = reading
        # Without a reading (the cgroup went first) the interval's CPU is unknown: what
        # the last reading counted is all that is billed.
        for minute, share in _minutes(start, now):
            bucket = self._bucket(cursor.tenant, minute)
            bucket.sandbox_seconds += seconds * share
            bucket.cpu_seconds += cpu * share
            bucket.memory_gib_seconds += cursor.memory_gib * seconds * share

    # ------------------------------------------------------------------- storage

    async def _account_storage(self, now: float) -> None:
        """Bill each snapshot and volume for the time since the last flush (or since it
        was made, if later)."""
        since = self._storage_since
        if now <= since:
            return
        held: list[tuple[str, float, float, str]] = [
            (s.tenant, s.created_at, s.size / _GIB_BYTES, "snapshot_gib_hours")
            for s in await self.store.list_snapshots()
        ]
        held += [
            (v.tenant, v.created_at, v.size / _MIB_PER_GIB, "volume_gib_hours")
            for v in await self.store.list_volumes()
        ]
        for tenant, created_at, gib, figure in held:
            start = max(since, created_at)
            if now <= start or gib <= 0:
                continue
            gib_hours = gib * (now - start) / 3600
            for minute, share in _minutes(start, now):
                bucket = self._bucket(tenant, minute)
                setattr(bucket, figure, getattr(bucket, figure) + gib_hours * share)
        self._storage_since = now

    # -------------------------------------------------------------- writing, reading

    def _bucket(self, tenant: str, minute: int) -> UsageRecord:
        bucket = self._pending.get((tenant, minute))
        if bucket is None:
            bucket = self._pending[(tenant, minute)] = UsageRecord(tenant, minute)
        return bucket

    async def flush(self) -> None:
        """Account every billed sandbox and all storage up to now, and write it all to the
        store. If the write fails, the figures are kept for the next flush."""
        async with self._flushing:
            now = self._clock()
            for sandbox_id, cursor in list(self._cursors.items()):
                self._account(sandbox_id, cursor, now)
            await self._account_storage(now)
            written, self._pending = self._pending, {}
            try:
                await self.store.add_usage(list(written.values()))
            except BaseException:
                for bucket in written.values():
                    merged = self._bucket(bucket.tenant, bucket.minute)
                    for name in USAGE_FIELDS:
                        setattr(merged, name, getattr(merged, name) + getattr(bucket, name))
                raise

    async def usage(
        self, tenant: str | None, since: float | None = None, until: float | None = None
    ) -> UsageReport:
        """Each tenant's usage (``tenant``: only that one's, a line of zeros if it used
        nothing) over the whole minutes that start in ``[since, until)``; ``since``
        defaults to the start of this month (UTC), ``until`` to now."""
        now = self._clock()
        until = now if until is None else until
        since = month_start(now) if since is None else since
        if until < since:
            raise InvalidArgumentError(
                f"until ({_iso(until)}) is before since ({_iso(since)}); give a window "
                "that ends after it starts"
            )
        await self.flush()
        found = await self.store.sum_usage(tenant=tenant, since=since, until=until)
        if tenant is not None and not found:
            found = [UsageRecord(tenant, 0)]
        return UsageReport(since=since // _MINUTE * _MINUTE, until=until, tenants=found)

    # -------------------------------------------------------------------- lifetime

    async def start(self) -> None:
        """Bill storage from now, and flush every ``interval`` seconds."""
        self._storage_since = self._clock()
        self._task = asyncio.create_task(self._run(), name="usage-meter")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.exception("writing usage")

    async def stop(self) -> None:
        """Stop the loop and write what was used up to now. Sandboxes still running are
        billed again by the next server, from its start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        except Exception:
            log.exception("writing usage at shutdown")
        self._cursors.clear()


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
