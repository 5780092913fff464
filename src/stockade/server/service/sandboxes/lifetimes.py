"""Sandbox lifetimes: when a running sandbox's time is up, and which ended ones to forget.

The rules are pure functions of records and clock readings (no IO), testable without a
server; :class:`Lifetimes` applies them, and is the only place that sets a sandbox's
``expires_at`` (through :func:`start_clock`, :func:`resume_clock` and
:func:`restart_clock`):

- ``timeout``: a deadline, ``expires_at``, set when the sandbox starts or resumes and by
  ``set_timeout`` (now + seconds).
- ``idle_timeout``: no exec, file or API activity for that long (0: never). An exec that
  is still running counts as activity throughout, so a sandbox never idles under one.
- ``on_timeout``: at either deadline, ``"terminate"`` ends the sandbox (reason
  ``timeout`` or ``idle``); ``"pause"`` pauses it instead.
- retention: the records (and logs) of ended sandboxes are forgotten once they have been
  ended for longer than this (0: kept forever).

All times are ``time.time()`` readings, as in the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from ....errors import InvalidArgumentError
from ...runtime.rootfs import RootFS
from ...state.records import EndReason, SandboxRecord, SandboxStatus
from ...state.store import Store
from .live import Background, LiveSandboxes
from .lookup import get, not_running

__all__ = [
    "ENDED",
    "Deadline",
    "Lifetimes",
    "deadline",
    "end_message",
    "purge_interval",
    "purgeable",
    "restart_clock",
    "resume_clock",
    "start_clock",
]

log = logging.getLogger(__name__)

# The statuses of a sandbox that is over for good (paused is not: it can resume).
ENDED = ("terminated", "failed")


class Deadline(NamedTuple):
    at: float
    reason: EndReason  # TIMEOUT or IDLE


def deadline(
    record: SandboxRecord, *, last_active: float | None, busy: bool, since: float
) -> Deadline | None:
    """When a running sandbox's lifetime is up and why; None if it has no limit.

    ``last_active``: its last activity as this server saw it (None: none yet); ``busy``:
    an exec is running in it now; ``since``: when this server started. Activity from
    before that is unknown, so a sandbox counts as active from its start or from then,
    whichever is later: a restart never makes a sandbox idle early.

    Example::

        due = deadline(record, last_active=time.time(), busy=False, since=server_start)
        if due is not None and due.at <= time.time():
            ...  # apply record.on_timeout, with due.reason as the end reason
    """
    due = None if record.expires_at is None else Deadline(record.expires_at, EndReason.TIMEOUT)
    if record.idle_timeout > 0 and not busy:
        base = max(last_active or 0.0, record.started_at or 0.0, since)
        idle = Deadline(base + record.idle_timeout, EndReason.IDLE)
        if due is None or idle.at < due.at:
            due = idle
    return due


def end_message(record: SandboxRecord, reason: EndReason) -> str:
    """What a sandbox's record says when ``reason`` ("timeout" or "idle") ended it, naming
    the fix."""
    if reason is EndReason.IDLE:
        return (
            f"the sandbox reached its idle_timeout of {record.idle_timeout:g}s (no exec, file "
            "or API activity); create it with a larger `idle_timeout=`, or with "
            '`on_timeout="pause"` to keep it for later'
        )
    return (
        f"the sandbox reached its timeout of {record.timeout:g}s; create it with a larger "
        "`timeout=`, or extend it while it runs with set_timeout()"
    )


def purgeable(
    records: Iterable[SandboxRecord], *, retention: float, now: float
) -> list[SandboxRecord]:
    """The ended sandboxes whose records are past ``retention`` seconds (none for 0)."""
    if retention <= 0:
        return []
    cutoff = now - retention
    return [
        r
        for r in records
        # A record without ended_at (never expected) ages from its creation instead.
        if r.status in ENDED and (r.ended_at or r.created_at) < cutoff
    ]


def purge_interval(retention: float) -> float:
    """How often to look for records past ``retention``: often enough that they go within
    a tenth of it, at least once a minute, and never in a busy loop."""
    return max(0.1, min(retention / 10, 60.0))


def start_clock(record: SandboxRecord, now: float) -> None:
    """The sandbox starts running now, handed to its caller: its timeout runs from now."""
    record.started_at = now
    record.expires_at = now + record.timeout


def restart_clock(record: SandboxRecord, seconds: float, now: float) -> None:
    """The sandbox ends ``seconds`` from now (set_timeout, or a pause at its timeout that
    gives it its whole timeout again on resume)."""
    record.timeout = seconds
    record.expires_at = now + seconds


def resume_clock(record: SandboxRecord, now: float) -> None:
    """A paused sandbox runs again: it gets what it had left of its timeout when it paused
    (its clock stopped while paused)."""
    left = record.timeout
    if record.expires_at is not None and record.paused_at is not None:
        left = max(1.0, record.expires_at - record.paused_at)
    record.started_at = now
    record.expires_at = now + left


class Ending(Protocol):
    """How the loop ends a sandbox whose time is up (the sandbox service)."""

    async def terminate(
        self,
        sandbox_id: str,
        *,
        reason: EndReason = EndReason.TERMINATED,
        message: str | None = None,
    ) -> SandboxRecord: ...

    async def pause(self, sandbox_id: str) -> SandboxRecord: ...


# One task, Lifetimes.run, applies every running sandbox's timeout and idle_timeout. It
# sleeps until the earliest deadline, then looks again. Activity only ever moves a deadline
# later, so touch() is O(1) and wakes nothing: a deadline that activity moved is found moved
# when the old one comes. What can bring a deadline nearer wakes the loop (changed()): a
# sandbox starting or resuming, set_timeout, and the last exec of a sandbox ending, if the
# idle deadline that starts comes before the loop's next wake. Paused sandboxes have no
# clocks.


class Lifetimes:
    """Applies timeouts, idle timeouts and retention to the sandboxes of a store."""

    def __init__(
        self,
        store: Store,
        live: LiveSandboxes,
        background: Background,
        ending: Ending,
        *,
        retention: float,
        sandbox_dir: Callable[[str], Path],
    ) -> None:
        self.store = store
        self.live = live
        self.background = background
        self.ending = ending
        self.retention = retention
        self._sandbox_dir = sandbox_dir
        self._changed = asyncio.Event()
        self._wake_at = math.inf
        self._tasks: list[asyncio.Task[None]] = []

    def changed(self) -> None:
        """A deadline may have come nearer: look again now."""
        self._changed.set()

    # ------------------------------------------------------------------ activity

    def touch(self, sandbox_id: str) -> None:
        """Note activity now (for ``idle_timeout``)."""
        self.live[sandbox_id].last_active = time.time()

    def busy(self, sandbox_id: str) -> None:
        """An exec session started in the sandbox: it counts as active until the session
        ends (:meth:`idle_again`), however long the command runs."""
        self.live[sandbox_id].busy += 1
        self.touch(sandbox_id)

    def idle_again(self, sandbox_id: str) -> None:
        """An exec session of the sandbox ended; once none is left, its idle clock runs
        again, from now."""
        self.touch(sandbox_id)
        live = self.live[sandbox_id]
        live.busy = max(0, live.busy - 1)
        if live.busy:
            return
        if live.idle_limit > 0 and time.time() + live.idle_limit < self._wake_at:
            self.changed()

    def sessions(self, sandbox_id: str) -> int:
        """Exec sessions holding the sandbox busy now."""
        live = self.live.get(sandbox_id)
        return live.busy if live is not None else 0

    def last_active(self, sandbox_id: str) -> float | None:
        live = self.live.get(sandbox_id)
        return live.last_active if live is not None else None

    def _due(self, record: SandboxRecord, since: float) -> Deadline | None:
        return deadline(
            record,
            last_active=self.last_active(record.id),
            busy=self.sessions(record.id) > 0,
            since=since,
        )

    async def set_timeout(self, sandbox_id: str, seconds: float) -> SandboxRecord:
        """Make a running sandbox end ``seconds`` from now, sooner or later than it would
        have (E2B's setTimeout, Modal's set_timeout): ``timeout`` becomes ``seconds`` and
        ``expires_at`` now + ``seconds``. The HTTP layer checks the allowed range."""
        if not (math.isfinite(seconds) and seconds > 0):
            raise InvalidArgumentError(f"timeout={seconds:g} must be a positive number of seconds")
        await get(self.store, sandbox_id)  # an unknown ID gets no entry in self.live
        async with self.live[sandbox_id].lock:
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or record.status != SandboxStatus.RUNNING:
                raise not_running(sandbox_id, record)
            restart_clock(record, seconds, time.time())
            await self.store.put_sandbox(record)
        # Asking for more time is using the sandbox.
        self.touch(sandbox_id)
        self.changed()
        return record

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.run(), name="expire-loop"),
            asyncio.create_task(self._purge_loop(), name="purge-loop"),
        ]

    def tasks(self) -> Sequence[asyncio.Task[None]]:
        return list(self._tasks)

    async def run(self) -> None:
        since = time.time()  # activity from before this server started is unknown
        while True:
            # Anything that moves a deadline while this pass looks wakes it again.
            self._wake_at = math.inf
            self._changed.clear()
            try:
                self._wake_at = await self._expire_due(since)
            except Exception:
                log.exception("checking the sandboxes' timeouts")
                self._wake_at = time.time() + 1.0
            # asyncio.timeout, not wait_for: wait_for (3.11) swallows a cancel that comes as
            # the event is set (as an ending _expire does), and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._wake_at - time.time())):
                    await self._changed.wait()

    async def _expire_due(self, since: float) -> float:
        """Start applying the deadlines that have passed; returns when the next one comes."""
        started = time.time()
        running = await self.store.list_sandboxes(SandboxStatus.RUNNING)
        now = time.time()
        for r in running:
            self.live[r.id].idle_limit = r.idle_timeout
        next_at = now + 60.0
        for r in running:
            due = None if self.live[r.id].expiring else self._due(r, since)
            if due is None:
                continue
            if due.at <= now:
                self.live[r.id].expiring = True
                self.background.spawn(self._expire(r.id, since))
            else:
                next_at = min(next_at, due.at)
        # Forget the activity of sandboxes no longer running (unless noted since we looked).
        ids = {r.id for r in running}
        for live in self.live:
            if live.id not in ids and live.last_active is not None and live.last_active < started:
                live.last_active = None
        return next_at

    async def _expire(self, sandbox_id: str, since: float) -> None:
        """Apply ``on_timeout`` to a sandbox the loop saw past its deadline, unless activity
        or set_timeout has moved the deadline since (the loop works from a snapshot)."""
        try:
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or record.status != SandboxStatus.RUNNING:
                return
            due = self._due(record, since)
            if due is None or due.at > time.time():
                return
            message = end_message(record, due.reason)
            if record.on_timeout == "pause":
                try:
                    await self._pause_at(record, due.reason)
                    return
                except Exception as exc:
                    log.exception(
                        "pausing sandbox %s at its %s failed; terminating it", sandbox_id,
                        due.reason,
                    )  # fmt: skip
                    message += f" (pausing it instead failed: {exc})"
            await self.ending.terminate(sandbox_id, reason=due.reason, message=message)
        except Exception:
            log.exception("expiring sandbox %s", sandbox_id)
        finally:
            self.live[sandbox_id].expiring = False
            self.changed()

    async def _pause_at(self, record: SandboxRecord, reason: EndReason) -> None:
        """Pause a sandbox whose ``timeout`` or ``idle_timeout`` has come (on_timeout="pause")."""
        if reason is EndReason.TIMEOUT:
            # A pause keeps what is left of the timeout for the resume, which here would be
            # nothing: a sandbox paused at its timeout gets the whole of it again. Set here,
            # before the pause: a resume right after it cannot miss it, and should the
            # server die in between, the sandbox still has a deadline.
            async with self.live[record.id].lock:
                current = await self.store.get_sandbox(record.id)
                if current is None or current.status != SandboxStatus.RUNNING:
                    return  # paused or ended meanwhile: nothing left to do
                restart_clock(current, current.timeout, time.time())
                await self.store.put_sandbox(current)
        await self.ending.pause(record.id)
        log.info("sandbox %s paused at its %s", record.id, reason)

    # ------------------------------------------------------------------ retention

    async def purge(self, now: float | None = None) -> Sequence[str]:
        """Forget the ended sandboxes that have been over for longer than the server's
        ``retention`` (0: keep them forever): their records and their directories (the
        log). Returns their IDs.

        Example::

            purged = await lifetimes.purge()
        """
        if self.retention <= 0:
            return []
        now = time.time() if now is None else now
        ended = [r for status in ENDED for r in await self.store.list_sandboxes(status)]
        purged: list[str] = []
        for stale in purgeable(ended, retention=self.retention, now=now):
            async with self.live[stale.id].lock:
                record = await self.store.get_sandbox(stale.id)
                if record is None or record.status not in ENDED:
                    continue
                # The directory first: a crash in between leaves a record to purge again,
                # never a directory that nothing refers to.
                await RootFS(self._sandbox_dir(stale.id)).destroy_keeping(())
                await self.store.delete_sandbox(stale.id)
            self.live.forget(stale.id)
            purged.append(stale.id)
        if purged:
            log.info("purged %d sandboxes ended more than %gs ago", len(purged), self.retention)
        return purged

    async def _purge_loop(self) -> None:
        if self.retention <= 0:
            return
        every = purge_interval(self.retention)
        while True:
            try:
                await self.purge()
            except Exception:
                log.exception("purging ended sandboxes")
            await asyncio.sleep(every)
