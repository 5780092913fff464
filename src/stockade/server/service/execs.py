"""Commands run inside a sandbox through its agent, with streamed stdio.

An :class:`ExecSession` is one running command on one agent channel. Output flows as the
consumer takes it: each chunk handed on returns its size to the agent's window, so a slow
reader pauses the command (its pipe fills) instead of making the server buffer without
limit. The transports (NDJSON over HTTP, WebSocket) only move the events; nothing here
knows about HTTP.

Lifetime: a session ends when the command exits. A caller that goes away must call
:meth:`ExecSession.aclose`, which kills the command's whole process group, so that
nothing keeps running by accident. From its start until it ends (exit, error, lost agent
or aclose), a session counts as activity of its sandbox: a sandbox never reaches its
``idle_timeout`` while a command runs in it (SandboxService.busy / idle_again).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal as signals
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import (
    InvalidArgumentError,
    SandboxTerminatedError,
    ServerError,
    StockadeError,
    StockadeTimeoutError,
)
from ..agent.protocol import MAX_PAYLOAD, Frame, FrameType
from ..runtime.agent_link import AGENT_REPLY_TIMEOUT, AgentLost, AgentSilent, Channel
from ..state.records import SandboxStatus
from .sandboxes import SandboxService, describe_end
from .users import check_user

__all__ = ["ExecService", "ExecSession", "ExitInfo", "OutputChunk"]

log = logging.getLogger(__name__)

TIMEOUT_EXIT_CODE = 124
OOM_EXIT_CODE = 137
_KILLED = 128 + signals.SIGKILL


@dataclass(frozen=True)
class OutputChunk:
    stream: int  # 1 stdout, 2 stderr
    data: bytes


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    timed_out: bool = False
    oom: bool = False


Event = OutputChunk | ExitInfo


async def open_channel(sandboxes: SandboxService, sandbox_id: str) -> Channel:
    """A fresh agent channel of a sandbox the caller found running, or why there is none."""
    try:
        link = await sandboxes.link(sandbox_id)
        return link.open()
    except AgentLost as exc:
        raise await lost(sandboxes, sandbox_id, exc) from None


async def lost(sandboxes: SandboxService, sandbox_id: str, exc: AgentLost) -> StockadeError:
    """The error for a broken agent channel: the sandbox's end, if that is what it was."""
    # The agent is the sandbox's init: when its channel closes, the sandbox is ending.
    record = await sandboxes.settled(sandbox_id, ending=True)
    if record.status != SandboxStatus.RUNNING:
        return SandboxTerminatedError(describe_end(record))
    return ServerError(f"lost the connection to the agent of sandbox {sandbox_id}: {exc}")


def silent(sandbox_id: str, exc: AgentSilent) -> StockadeTimeoutError:
    """The error for an agent that owes an answer and gives none: the sandbox runs, but
    code in it stopped or starved its init."""
    return StockadeTimeoutError(
        f"{exc}: code in the sandbox may have stopped its init (kill -STOP 1) or starved it; "
        f"try again, or end the sandbox with `stockade rm {sandbox_id}`"
    )


class ExecSession:
    """One command running in a sandbox. Not thread-safe; use it from the event loop."""

    def __init__(
        self,
        channel: Channel,
        sandboxes: SandboxService,
        sandbox_id: str,
        *,
        pty: bool,
        timeout: float | None,
        activity: bool = True,
    ) -> None:
        self._ch = channel
        self._sandboxes = sandboxes
        self.sandbox_id = sandbox_id
        self._pty = pty
        self._timeout = timeout
        self._timed_out = False
        self._oom_before = sandboxes.oom_kills(sandbox_id)
        self._deadline_task: asyncio.Task[None] | None = None
        self._start_error: bytes | None = None
        self._start_errno = 0
        self._never_started = False  # its timeout passed before the agent started it
        self.pid: int | None = None
        self.exit: ExitInfo | None = None
        self._activity = activity
        self._busy = False  # holding the sandbox busy (see _release)
        # What the audit log records of it (ExecService.start fills in the rest).
        self.started_at = time.time()
        self.argv: list[str] = []
        self.workdir = "/"
        self.user = "root"
        self.tenant = ""
        self.bytes_in = 0  # stdin taken
        self.bytes_out = 0  # stdout and stderr handed on

    async def start(self, request: dict[str, object]) -> None:
        """Ask the agent to run the command; returns once it runs (or failed to start)."""
        if self._activity:
            self._sandboxes.busy(self.sandbox_id)
            self._busy = True
        try:
            await self._start(request)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        """The session is over for its sandbox's idle clock, which restarts now. Idempotent:
        called wherever a session can end (its exit, a lost agent, an abandoned stream,
        aclose), so that no path leaves the sandbox busy forever."""
        if self._busy:
            self._busy = False
            self._sandboxes.idle_again(self.sandbox_id)

    async def _start(self, request: dict[str, object]) -> None:
        # A command with a deadline of its own is not kept waiting longer than it for an
        # agent that does not even start it.
        wait = min(AGENT_REPLY_TIMEOUT, self._timeout or AGENT_REPLY_TIMEOUT)
        try:
            await self._ch.send_json(FrameType.EXEC, request)
            frame = await self._ch.reply(wait, strict=wait < AGENT_REPLY_TIMEOUT)
        except AgentLost as exc:
            raise await lost(self._sandboxes, self.sandbox_id, exc) from None
        except AgentSilent as exc:
            self._ch.close()  # the agent kills the command if it starts after all
            if wait < AGENT_REPLY_TIMEOUT:
                # The command's own deadline passed first: it timed out, as any command
                # that runs past its timeout does; the sandbox need not be at fault.
                self._timed_out = self._never_started = True
                return
            raise silent(self.sandbox_id, exc) from None
        if frame.type == FrameType.ERROR:
            info = _json(frame)
            self._start_errno = int(info.get("errno", 0) or 0)
            self._start_error = f"stockade: {info.get('message', 'cannot start')}\n".encode()
            return
        if frame.type == FrameType.STARTED:
            self.pid = _json(frame).get("pid")
        if self._timeout is not None:
            self._deadline_task = asyncio.create_task(self._deadline(self._timeout))

    # ----------------------------------------------------------- output side

    async def events(self) -> AsyncIterator[Event]:
        """Output chunks as they are produced, then exactly one ExitInfo."""
        try:
            async for event in self._events():
                yield event
        finally:
            self._release()

    async def _events(self) -> AsyncIterator[Event]:
        if self._never_started:
            yield self._finish(TIMEOUT_EXIT_CODE)
            return
        if self._start_error is not None:
            # Like a shell: 127 for a missing program, 126 for one that cannot run.
            yield OutputChunk(2, self._start_error)
            yield self._finish(127 if self._start_errno == errno.ENOENT else 126)
            return
        while True:
            try:
                frame = await self._ch.recv()
            except AgentLost as exc:
                end = await self._sandboxes.settled(self.sandbox_id, ending=True)
                if end.reason == "oom":
                    yield self._finish(OOM_EXIT_CODE, oom=True)
                    return
                if self._timed_out:
                    yield self._finish(TIMEOUT_EXIT_CODE)
                    return
                raise await lost(self._sandboxes, self.sandbox_id, exc) from None
            if frame.type in (FrameType.STDOUT, FrameType.STDERR):
                self.bytes_out += len(frame.payload)
                yield OutputChunk(1 if frame.type == FrameType.STDOUT else 2, frame.payload)
                self._ch.grant(len(frame.payload))
            elif frame.type == FrameType.EXIT:
                yield self._finish(int(_json(frame).get("exit_code", -1)))
                return
            elif frame.type == FrameType.ERROR:
                yield OutputChunk(2, f"stockade: {_json(frame).get('message')}\n".encode())
                yield self._finish(126)
                return

    def _finish(self, code: int, *, oom: bool = False) -> ExitInfo:
        self._release()
        if self._deadline_task is not None:
            self._deadline_task.cancel()
        if not oom and code != 0:
            oom = self._sandboxes.oom_kills(self.sandbox_id) > self._oom_before
        if self._timed_out:
            info = ExitInfo(TIMEOUT_EXIT_CODE, timed_out=True, oom=oom)
        elif oom:
            info = ExitInfo(OOM_EXIT_CODE, oom=True)
        else:
            info = ExitInfo(code)
        self.exit = info
        return info

    # ------------------------------------------------------------ input side

    async def write_stdin(self, data: bytes) -> None:
        if self._ch.finished:
            return  # nothing reads it any more
        self.bytes_in += len(data)
        with contextlib.suppress(AgentLost):
            for i in range(0, len(data), MAX_PAYLOAD):
                await self._ch.send(FrameType.STDIN, data[i : i + MAX_PAYLOAD])

    async def close_stdin(self) -> None:
        if self._pty:
            # A terminal has no EOF of its own; ^D at the start of a line is the convention.
            await self.write_stdin(b"\x04")
            return
        if self._ch.finished:
            return
        with contextlib.suppress(AgentLost):
            await self._ch.send(FrameType.STDIN_EOF)

    def resize(self, cols: int, rows: int) -> None:
        if self._pty:
            self._ch.post_json(FrameType.RESIZE, {"cols": cols, "rows": rows})

    async def signal(self, name: str) -> None:
        with contextlib.suppress(AgentLost):
            await self._ch.send_json(FrameType.SIGNAL, {"signal": _signal_number(name)})

    async def kill(self) -> None:
        """Kill the command's process group; the session then ends with code 137."""
        self.cut()

    def cut(self) -> None:
        """:meth:`kill`, from code that cannot wait (a listener called synchronously)."""
        if self._ch.finished:
            return
        self._ch.close(Frame(FrameType.EXIT, self._ch.number, b'{"exit_code": %d}' % _KILLED))

    async def _deadline(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        self._timed_out = True
        await self.kill()

    async def aclose(self) -> None:
        """Kill the command if it still runs and release the channel."""
        self._release()
        await self.kill()
        if self._deadline_task is not None:
            self._deadline_task.cancel()


class ExecService:
    """Starts commands in running sandboxes."""

    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    async def start(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
        pty_size: tuple[int, int] | None = None,
        activity: bool = True,
        user: str | None = None,
    ) -> ExecSession:
        """Start a command; ``pty_size=(cols, rows)`` gives it a terminal; ``user`` (a
        name in the image's /etc/passwd or ``uid[:gid]``) runs it as that user instead of
        the sandbox's.

        ``activity=False``: the server's own long-lived helpers (a code kernel, its
        relays) must not keep the sandbox from reaching its ``idle_timeout``.
        """
        if not argv:
            raise InvalidArgumentError("argv must name a command, e.g. ['echo', 'hi']")
        record = await self.sandboxes.ready_for_use(sandbox_id)
        ids = (record.uid, record.gid) if record.uid is not None else None
        if user is not None:  # resolved before anything starts: an unknown one is a 422
            ids = await self.sandboxes.user_ids(sandbox_id, check_user(user))
        extra = dict(env or {})
        if pty_size is not None:
            extra = {"TERM": "xterm-256color", **extra}
        full_env = self.sandboxes.process_env(record, extra)
        cols, rows = pty_size or (80, 24)
        channel = await open_channel(self.sandboxes, sandbox_id)
        session = ExecSession(
            channel, self.sandboxes, sandbox_id, pty=pty_size is not None, timeout=timeout,
            activity=activity,
        )  # fmt: skip
        session.argv, session.workdir = list(argv), workdir or record.workdir or "/"
        session.user, session.tenant = user or record.user or "root", record.tenant
        await session.start(
            {
                "argv": session.argv,
                "env": [f"{k}={v}" for k, v in full_env.items()],
                "cwd": session.workdir,
                "pty": pty_size is not None,
                "cols": cols,
                "rows": rows,
                # The call's user, else the sandbox's (the image's USER); absent: root.
                **({"uid": ids[0], "gid": ids[1]} if ids is not None else {}),
            }
        )
        return session


def _json(frame: Frame) -> dict[str, Any]:
    try:
        value = frame.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _signal_number(name: str) -> int:
    bare = name.upper().removeprefix("SIG")
    sig = getattr(signals, f"SIG{bare}", None)
    if not isinstance(sig, signals.Signals):
        raise InvalidArgumentError(
            f"unknown signal {name!r}; use a name such as SIGTERM or SIGKILL"
        )
    return int(sig)
