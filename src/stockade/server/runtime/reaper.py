"""Reap orphaned runsc processes.

``runsc run --detach`` leaves the sandbox and gofer processes behind when it exits. They
are re-parented to the nearest child subreaper; without one they go to PID 1, which on
these hosts reaps slowly enough that ``runsc delete`` takes ~2 s instead of ~0.1 s. The
server therefore marks itself a subreaper and reaps every zombie child that asyncio is not
already waiting for (see :data:`.proc.OWNED_PIDS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal

from .proc import OWNED_PIDS, SPAWN_LOCK

__all__ = ["Reaper"]

_PR_SET_CHILD_SUBREAPER = 36
log = logging.getLogger(__name__)


def _zombie_children(me: int) -> list[int]:
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[0] == b"Z" and int(fields[1]) == me:
            found.append(int(name))
    return found


class Reaper:
    """Makes the process a child subreaper and reaps orphans on SIGCHLD and periodically."""

    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        # Exit codes of reaped orphans, by PID: a runsc sandbox process exits with its
        # init's status, which is how an entrypoint that ends at once still reports it.
        self.exit_codes: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.warning("could not become a child subreaper; runsc deletes will be slower")
        loop = asyncio.get_running_loop()
        # Chain with asyncio's own handler if any: only wake our loop.
        with contextlib.suppress(ValueError, RuntimeError):
            loop.add_signal_handler(signal.SIGCHLD, self._wake.set)
        self._task = asyncio.create_task(self._loop(), name="reaper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def reap_now(self) -> int:
        with SPAWN_LOCK:  # no child of ours is between its fork and OWNED_PIDS meanwhile
            return self._reap()

    def _reap(self) -> int:
        me = os.getpid()
        reaped = 0
        for pid in _zombie_children(me):
            if pid in OWNED_PIDS:
                continue
            with contextlib.suppress(ChildProcessError):
                got, status = os.waitpid(pid, os.WNOHANG)
                if got == pid:
                    reaped += 1
                    if len(self.exit_codes) > 10_000:
                        self.exit_codes.clear()
                    self.exit_codes[pid] = os.waitstatus_to_exitcode(status)
        return reaped

    async def exit_code(self, pid: int, wait: float = 1.0) -> int | None:
        """The exit code of an orphan we reaped (waiting up to ``wait`` s for it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while pid not in self.exit_codes and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)
        return self.exit_codes.pop(pid, None)

    async def _loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands
            # as the event is set, and stopping would then never end this loop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            # Scanning /proc is cheap but not free; keep it off the hot path of the loop.
            await asyncio.to_thread(self.reap_now)
