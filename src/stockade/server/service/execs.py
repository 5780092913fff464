"""Commands run inside a sandbox through ``runsc exec``, with streamed stdio.

An :class:`ExecSession` is one running command. Its output is a bounded queue of events,
so a slow reader pauses the command through ordinary pipe backpressure instead of making
the server buffer without limit. The transports (NDJSON over HTTP, WebSocket) only move
these events; nothing here knows about HTTP.

Lifetime: a session ends when the command exits. A caller that goes away must call
:meth:`ExecSession.kill`, so that nothing keeps running by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pty
import signal as signals
import struct
import termios
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import InvalidArgumentError, SandboxTerminatedError
from ..runtime import bundle, proc
from ..state.records import SandboxRecord
from .sandboxes import SandboxService, describe_end, new_id

__all__ = ["ExecService", "ExecSession", "ExitInfo", "OutputChunk", "RawExec"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_DRAIN_GRACE = 0.3  # seconds to collect output after the command itself exited
TIMEOUT_EXIT_CODE = 124
OOM_EXIT_CODE = 137


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


@dataclass
class RawExec:
    """A ``runsc exec`` child plus the files that describe it; the caller owns its pipes."""

    process: asyncio.subprocess.Process
    process_json: Path
    pid_file: Path
    sandbox_id: str

    def internal_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def cleanup(self) -> None:
        for f in (self.process_json, self.pid_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()


class ExecSession:
    """One command running in a sandbox. Not thread-safe; use it from the event loop."""

    def __init__(
        self,
        raw: RawExec,
        sandboxes: SandboxService,
        *,
        master_fd: int | None,
        timeout: float | None,
    ) -> None:
        self.raw = raw
        self._sandboxes = sandboxes
        self._runsc = sandboxes.runsc
        self._master = master_fd
        self._events: asyncio.Queue[Event] = asyncio.Queue(maxsize=256)
        self._timed_out = False
        self._killed = False
        self._oom_before = sandboxes.oom_kills(raw.sandbox_id)
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timeout = timeout
        self.exit: ExitInfo | None = None

    async def start(self) -> None:
        """Begin pumping output; returns once the command runs inside the sandbox."""
        self._tasks.append(asyncio.create_task(self._run(), name="exec-run"))
        # runsc exec writes the in-sandbox PID once the process exists. Waiting for it
        # makes "started" true, and lets a kill right after start find its target.
        deadline = asyncio.get_running_loop().time() + 10.0
        while self.raw.internal_pid() is None and not self._done.is_set():
            if (
                asyncio.get_running_loop().time() > deadline
                or self.raw.process.returncode is not None
            ):
                break
            await asyncio.sleep(0.001)
        if self._timeout is not None:
            self._tasks.append(asyncio.create_task(self._deadline(self._timeout)))

    # ----------------------------------------------------------- output side

    async def events(self) -> AsyncIterator[Event]:
        """Output chunks as they are produced, then exactly one ExitInfo."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, ExitInfo):
                return

    async def _pump_pipe(self, reader: asyncio.StreamReader | None, stream: int) -> None:
        if reader is None:
            return
        while True:
            data = await reader.read(_CHUNK)
            if not data:
                return
            await self._events.put(OutputChunk(stream, data))

    async def _pump_pty(self) -> None:
        assert self._master is not None
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(self._master, readable.set)
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    data = os.read(self._master, _CHUNK)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: every slave end is closed, the command ended
                    return
                if not data:
                    return
                await self._events.put(OutputChunk(1, data))
        finally:
            loop.remove_reader(self._master)

    async def _run(self) -> None:
        p = self.raw.process
        if self._master is not None:
            pumps = [asyncio.create_task(self._pump_pty())]
        else:
            pumps = [
                asyncio.create_task(self._pump_pipe(p.stdout, 1)),
                asyncio.create_task(self._pump_pipe(p.stderr, 2)),
            ]
        try:
            await proc.wait(p)
            # Background children of the command may hold its output open for ever; take
            # what they wrote so far and report the exit without waiting for them.
            _done, pending = await asyncio.wait(pumps, timeout=_DRAIN_GRACE)
            for t in pending:
                t.cancel()
        finally:
            for t in pumps:
                if not t.done():
                    t.cancel()
            rc = p.returncode if p.returncode is not None else -1
            if rc < 0:
                rc = 128 - rc  # killed by a host signal: report it the shell's way
            if rc != 0:
                # The sandbox may be dying of OOM right now; give its watcher a moment.
                await asyncio.sleep(0.05)
            oom = self._sandboxes.oom_kills(self.raw.sandbox_id) > self._oom_before
            if self._timed_out:
                info = ExitInfo(TIMEOUT_EXIT_CODE, timed_out=True, oom=oom)
            elif oom:
                info = ExitInfo(OOM_EXIT_CODE, oom=True)
            else:
                info = ExitInfo(rc)
            self.exit = info
            self._close_master()
            self.raw.cleanup()
            self._done.set()
            await self._events.put(info)

    def _close_master(self) -> None:
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None

    # ------------------------------------------------------------ input side

    async def write_stdin(self, data: bytes) -> None:
        if self._master is not None:
            await asyncio.to_thread(_write_all, self._master, data)
            return
        w = self.raw.process.stdin
        if w is None or w.is_closing():
            return
        try:
            w.write(data)
            await w.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the command stopped reading or exited: its exit event says the rest

    async def close_stdin(self) -> None:
        if self._master is not None:
            # A terminal has no EOF of its own; ^D at the start of a line is the convention.
            await self.write_stdin(b"\x04")
            return
        w = self.raw.process.stdin
        if w is not None and not w.is_closing():
            w.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await w.wait_closed()

    def resize(self, cols: int, rows: int) -> None:
        if self._master is None:
            return
        _set_winsize(self._master, cols, rows)

    async def signal(self, name: str) -> None:
        sig = _signal_name(name)
        pid = self.raw.internal_pid()
        if pid is not None:
            await self._runsc.kill(self.raw.sandbox_id, sig, pid=pid)

    async def kill(self) -> None:
        """Stop the command and everything it started: SIGKILL inside the sandbox."""
        if self._done.is_set() or self._killed:
            return
        self._killed = True
        pid = self.raw.internal_pid()
        if pid is not None:
            # Collect the whole tree first: once the command dies its children are
            # re-parented to the sandbox's init and can no longer be told apart.
            tree = _descendants(await self._runsc.processes(self.raw.sandbox_id), pid)
            await asyncio.gather(
                *(self._runsc.kill(self.raw.sandbox_id, "KILL", pid=p) for p in [pid, *tree])
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), 2.0)
            return
        with contextlib.suppress(ProcessLookupError):
            self.raw.process.kill()

    async def _deadline(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout)
            return
        self._timed_out = True
        await self.kill()

    async def aclose(self) -> None:
        """Kill the command if it still runs and wait for the session's tasks."""
        await self.kill()
        for t in self._tasks:
            if not t.done():
                t.cancel()
        # Drain so that the run task can put its final event and finish.
        while not self._events.empty():
            self._events.get_nowait()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


class ExecService:
    """Starts commands in running sandboxes."""

    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    async def spawn_raw(
        self,
        record: SandboxRecord,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        terminal_fd: int | None = None,
    ) -> RawExec:
        """Start ``runsc exec``. With ``terminal_fd`` (a pty slave) it becomes the terminal."""
        if not argv:
            raise InvalidArgumentError("argv must name a command, e.g. ['echo', 'hi']")
        exec_dir = self.sandboxes.sandbox_dir(record.id) / "exec"
        exec_dir.mkdir(exist_ok=True)
        eid = new_id("ex")
        process_json = exec_dir / f"{eid}.json"
        pid_file = exec_dir / f"{eid}.pid"
        spec = bundle.ProcessSpec(
            argv,
            env=self.sandboxes.process_env(record, env),
            cwd=workdir or record.workdir or "/",
            terminal=terminal_fd is not None,
            max_processes=bundle.max_processes(record.memory),
        )
        bundle.write_json(process_json, spec.to_dict())
        argv_host = self.sandboxes.runsc.exec_argv(
            record.id, process_json=process_json, internal_pid_file=pid_file
        )
        if terminal_fd is not None:
            p = await proc.spawn(
                argv_host,
                stdin=terminal_fd,
                stdout=terminal_fd,
                stderr=terminal_fd,
                preexec_fn=_make_controlling_tty,
            )
        else:
            p = await proc.spawn(
                argv_host,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        return RawExec(p, process_json, pid_file, record.id)

    async def start(
        self,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
        pty_size: tuple[int, int] | None = None,
    ) -> ExecSession:
        """Start a command; ``pty_size=(cols, rows)`` gives it a terminal."""
        record = await self.sandboxes.get_running(sandbox_id)
        if pty_size is None:
            raw = await self.spawn_raw(record, argv, env=env, workdir=workdir)
            session = ExecSession(raw, self.sandboxes, master_fd=None, timeout=timeout)
        else:
            master, slave = pty.openpty()
            _set_winsize(master, *pty_size)
            os.set_blocking(master, False)
            try:
                raw = await self.spawn_raw(
                    record,
                    argv,
                    env={"TERM": "xterm-256color", **(env or {})},
                    workdir=workdir,
                    terminal_fd=slave,
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            session = ExecSession(raw, self.sandboxes, master_fd=master, timeout=timeout)
        await session.start()
        if session.raw.internal_pid() is None:
            # The command never started. If the sandbox ended meanwhile (an OOM kill, a
            # timeout), say so instead of passing on runsc's complaint about its files.
            current = await self.sandboxes.settle(sandbox_id)
            if current.status != "running":
                await session.aclose()
                raise SandboxTerminatedError(describe_end(current))
        return session


def _descendants(parents: dict[int, int], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    stack = list(children.get(root, []))
    while stack and len(out) < 10_000:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _make_controlling_tty() -> None:
    # Runs in the child between fork and exec: the pty slave (fd 0) becomes the
    # controlling terminal, so a resize on the master reaches runsc exec as SIGWINCH,
    # which it forwards into the sandbox.
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _write_all(fd: int, data: bytes) -> None:
    import select

    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        except OSError:
            return
        view = view[n:]


def _signal_name(name: str) -> str:
    upper = name.upper()
    bare = upper.removeprefix("SIG")
    if not hasattr(signals, f"SIG{bare}"):
        raise InvalidArgumentError(
            f"unknown signal {name!r}; use a name such as SIGTERM or SIGKILL"
        )
    return bare
