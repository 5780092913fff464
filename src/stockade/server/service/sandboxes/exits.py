"""Watching a running sandbox for its end, and recording how it ended.

Two witnesses report an entrypoint's exit code: the agent (over its channel, as it
happens) and ``runsc wait``; the reaper, to which an orphaned sandbox process is
re-parented, is the third for an init that exited before anyone asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable

from ...runtime import cgroups, proc
from ...runtime.reaper import Reaper
from ...runtime.runsc import Runsc
from ...state.records import EndReason, SandboxRecord, SandboxStatus
from ...state.store import Store
from .launch import Launcher
from .live import Background, LiveSandboxes

__all__ = ["ExitWatcher", "init_ended"]

log = logging.getLogger(__name__)


class ExitWatcher:
    """Watches the runsc process of each running sandbox (pidfd, no polling); when one
    exits, records why in the sandbox's record and takes the rest apart."""

    def __init__(
        self,
        store: Store,
        runtime: Runsc,
        launcher: Launcher,
        live: LiveSandboxes,
        background: Background,
        reaper: Reaper | None,
        ended: Callable[[str], None],
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.launcher = launcher
        self.live = live
        self.background = background
        self.reaper = reaper
        self._ended = ended  # told after an end is recorded

    def watch(self, record: SandboxRecord) -> None:
        live = self.live[record.id]
        live.tenant = record.tenant
        # A sandbox found again by a restarted server: copy its output from its FIFO.
        self.launcher.output(record.id).attach()
        if record.entrypoint:
            # Keep a link open: the agent reports the entrypoint's exit code over it,
            # whenever that happens. `runsc wait` below is the second witness.
            self.background.spawn(self._connect_quietly(record.id))
            fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            live.exit_code = fut
            self.background.spawn(self._collect_exit_code(record.id, fut))
        live.watcher = asyncio.create_task(
            self._watch_pid(record.id, record.pid or -1), name=f"watch-{record.id}"
        )

    def unwatch(self, sandbox_id: str) -> None:
        live = self.live.get(sandbox_id)
        if live is None:
            return
        task, live.watcher = live.watcher, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        fut, live.exit_code = live.exit_code, None
        if fut is not None and not fut.done():
            fut.cancel()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [live.watcher for live in self.live if live.watcher is not None]

    def stop(self) -> None:
        for live in self.live:
            if live.exit_code is not None:
                live.exit_code.cancel()

    async def _connect_quietly(self, sandbox_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.launcher.link(sandbox_id)

    async def _collect_exit_code(self, sandbox_id: str, fut: asyncio.Future[int | None]) -> None:
        """``runsc wait`` reports the init's exit status only while the sandbox lives."""
        p = await proc.spawn(
            self.runtime.wait_argv(sandbox_id),
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=proc.die_with_parent,
        )
        try:
            out = await p.stdout.read() if p.stdout else b""
            await proc.wait(p)
            code: int | None = None
            with contextlib.suppress(ValueError, KeyError, TypeError):
                code = int(json.loads(out)["exitStatus"])
            if not fut.done():
                fut.set_result(code)
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await proc.wait(p)
            raise

    async def _watch_pid(self, sandbox_id: str, pid: int) -> None:
        """Wait for the runsc sandbox process to exit, without polling (pidfd)."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = -1
        if fd >= 0:
            loop = asyncio.get_running_loop()
            gone = asyncio.Event()
            loop.add_reader(fd, gone.set)
            try:
                await gone.wait()
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        await self.on_exit(sandbox_id)

    async def _exit_code(self, sandbox_id: str) -> int | None:
        live = self.live[sandbox_id]
        if live.link is not None and not live.link.dead:
            # The agent's ENTRYPOINT_EXIT may still be in flight on the channel.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.link.closed.wait(), 1.0)
        code, live.entry_code = live.entry_code, None
        fut = live.exit_code
        if fut is not None and code is None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                code = await asyncio.wait_for(asyncio.shield(fut), 2.0)
        record = await self.store.get_sandbox(sandbox_id)
        if code is None and self.reaper is not None and record is not None and record.pid:
            # `runsc wait` misses an init that exited before it asked; the sandbox
            # process, re-parented to us, carries the same status.
            code = await self.reaper.exit_code(record.pid)
        return code

    async def on_exit(self, sandbox_id: str) -> None:
        """The sandbox's runsc process is gone: record how it ended, then take it apart."""
        code = await self._exit_code(sandbox_id)
        live = self.live[sandbox_id]
        async with live.lock:
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or not record.alive:
                return
            live.watcher = live.exit_code = None
            ooms = cgroups.oom_kills(sandbox_id)
            # runsc delete removes the cgroup; execs that end after it still ask.
            live.final_ooms = ooms
            if ooms > 0:
                record.status, record.reason = SandboxStatus.FAILED, EndReason.OOM
                record.message = (
                    f"the sandbox ran out of memory (memory={record.memory} MiB) and was "
                    "killed; create it with a larger `memory=`"
                )
            elif record.entrypoint:
                record.status, record.reason = SandboxStatus.TERMINATED, EndReason.EXITED
                record.exit_code = code
                record.message = f"the entrypoint exited with code {code}"
                if code in (126, 127):  # it could not even start: say why
                    record.message += f": {self.launcher.log_tail(sandbox_id, 300)}"
            else:
                record.status, record.reason = SandboxStatus.FAILED, EndReason.ERROR
                record.message = init_ended(code)
            await self.launcher.cleanup(sandbox_id)
            record.ended_at = time.time()
            await self.store.put_sandbox(record)
            log.info("sandbox %s ended: %s", sandbox_id, record.reason)
        self._ended(sandbox_id)


def init_ended(code: int | None) -> str:
    """Why a sandbox without an entrypoint ended by itself: its init, the agent, is gone.
    Root in the sandbox may kill it (``kill -9 1``); the message says so, since nothing
    else ends such a sandbox but a crash."""
    what = "the sandbox's init, the Stockade agent (PID 1),"
    signo = -code if code is not None and code < 0 else (code or 0) - 128
    if code is not None and 0 < signo < 65:
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = f"signal {signo}"
        return (
            f"{what} was killed by {name}: code in the sandbox killed it, or it crashed; "
            "a sandbox ends with its agent"
        )
    if code is not None:
        return f"{what} exited with code {code}; a sandbox ends with its agent"
    return f"{what} ended without an exit status (its runsc process exited unexpectedly)"
