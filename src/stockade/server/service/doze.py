"""Dozing: sandboxes with no API activity for a while get coarse host timers.

An idle sandbox on runsc 20240729 still costs about 2.5% of a core (see
runtime/timerslack.py), which caps a 2-core host at under 100 idle sandboxes. A sandbox
that has had no exec session, file call, code run or port request for ``doze_after``
seconds dozes: its host threads get a 50 ms timer slack, which cuts that cost about
fifteen-fold. Nothing is stopped: processes inside keep running and every event (I/O,
signals, packets) is delivered at once; only timers inside (sleep, poll timeouts) may
fire up to 50 ms late. The next call that uses the sandbox wakes it before it goes on,
which costs a few tenths of a millisecond.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from stockade.server.runtime.timerslack import DEFAULT_SLACK_NS, DOZE_SLACK_NS, set_timer_slack

__all__ = ["Dozer", "due_to_doze"]

log = logging.getLogger(__name__)


def due_to_doze(
    running: Iterable[str],
    *,
    last_active: Callable[[str], float | None],
    busy: Callable[[str], bool],
    dozing: set[str],
    after: float,
    now: float,
    since: float,
) -> list[str]:
    """The running sandboxes that should start dozing now.

    Activity before ``since`` (when this server started) is unknown, so a sandbox without
    a recorded use counts as active from then.
    """
    due = []
    for sid in running:
        if sid in dozing or busy(sid):
            continue
        seen = last_active(sid)
        if now - max(since if seen is None else seen, since) >= after:
            due.append(sid)
    return due


class Dozer:
    """Puts idle sandboxes to doze and wakes them on use. ``after`` <= 0 turns it off."""

    def __init__(
        self,
        after: float,
        *,
        running: Callable[[], Iterable[str]],
        last_active: Callable[[str], float | None],
        busy: Callable[[str], bool],
    ) -> None:
        self.after = after
        self._running = running
        self._last_active = last_active
        self._busy = busy
        self.dozing: set[str] = set()
        self._since = time.time()
        # One writer per sandbox at a time, so a wake that comes while its doze is being
        # written lands after it and no thread is left with the coarse slack.
        self._locks: dict[str, asyncio.Lock] = {}

    async def _apply(self, sandbox_id: str, slack_ns: int) -> int:
        async with self._locks.setdefault(sandbox_id, asyncio.Lock()):
            return await asyncio.to_thread(set_timer_slack, sandbox_id, slack_ns)

    async def wake(self, sandbox_id: str) -> None:
        """Give a dozing sandbox its ordinary timers back (before the caller uses it)."""
        if sandbox_id in self.dozing:
            self.dozing.discard(sandbox_id)
            await self._apply(sandbox_id, DEFAULT_SLACK_NS)

    def forget(self, sandbox_id: str) -> None:
        """The sandbox's runsc processes are gone (ended or paused): a later one starts awake."""
        self.dozing.discard(sandbox_id)
        self._locks.pop(sandbox_id, None)

    async def check(self) -> list[str]:
        """One pass: doze the sandboxes idle for ``after`` seconds; returns them."""
        order = list(self._running())
        running = set(order)
        for gone in [s for s in self._locks if s not in running]:
            self.forget(gone)
        self.dozing &= running
        due = due_to_doze(
            order, last_active=self._last_active, busy=self._busy, dozing=self.dozing,
            after=self.after, now=time.time(), since=self._since,
        )  # fmt: skip
        for sid in due:
            self.dozing.add(sid)
            if not await self._apply(sid, DOZE_SLACK_NS):
                self.dozing.discard(sid)  # no threads: not started, or already gone
        return due

    async def run(self) -> None:
        if self.after <= 0:
            return
        every = min(max(self.after / 4, 0.25), 5.0)
        while True:
            try:
                await self.check()
            except Exception:
                log.exception("dozing idle sandboxes")
            await asyncio.sleep(every)
