"""One Jupyter kernel in a sandbox, driven with jupyter_client.

The kernel is an ordinary command started through the agent (so it runs as the image's
user, in the sandbox's cgroup, and dies with the sandbox). A small watcher holds an exec
session open for the kernel's whole life, which is how its death is noticed at once, and
passes Ctrl-C on to it. The kernel itself runs in a session of its own, so it outlives
the watcher: when the sandbox is paused, snapshotted or forked and its agent reconnects
(which ends every open exec), the kernel carries on with its variables, and
:meth:`Kernel.attach` puts a new watcher and new connections on it (a
:class:`KernelHandle` says where it is). Its ZeroMQ sockets reach the host through
:mod:`.relay`. Everything that crosses is the Jupyter protocol, spoken by jupyter_client
on this side and ipykernel (or another kernel) on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient

from ....errors import KernelUnavailableError, ServerError, StockadeError
from ..execs import ExecService, ExecSession, ExitInfo, OutputChunk
from .relay import UnixRelay

__all__ = ["LANGUAGES", "Kernel", "KernelHandle", "Language", "image_python", "saved_workdir"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Language:
    name: str
    module: str  # run with ``python3 -m``
    package: str  # what to pip install when it is missing


LANGUAGES: Mapping[str, Language] = {
    "python": Language("python", "ipykernel_launcher", "ipykernel"),
    "bash": Language("bash", "bash_kernel", "bash_kernel"),
}

# Stays in the exec session while the kernel (``pid``) lives: passes SIGINT on to it and
# exits with its status, after copying its log to stderr (the reason a failed start
# gives). ``child``: the kernel is its child (waitpid); otherwise it polls.
_WATCH = """\
import os, signal, sys, time
def watch(pid, log, child):
    signal.signal(signal.SIGINT, lambda *_: os.kill(pid, signal.SIGINT))
    code = 1
    if child:
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        code = 128 - code if code < 0 else code
    else:
        while True:
            try:
                os.kill(pid, 0)
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.1)
    try:
        with open(log, "rb") as f:
            os.write(2, f.read()[-8192:])
    except OSError:
        pass
    sys.exit(code)
"""

# Writes the connection file the kernel reads, then forks the kernel into a session of its
# own (stdin /dev/null, output to a log file: nothing ties it to this exec) and watches
# it. The first line on stdout is the kernel's PID. No extra round trip for any of it.
_LAUNCHER = (
    _WATCH
    + """\
module, path, info = sys.argv[1:4]
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, info.encode())
os.close(fd)
pid = os.fork()
if pid == 0:
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(path + ".log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.argv = [module, "-f", path]
    import runpy
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit(0)
print(pid, flush=True)
watch(pid, path + ".log", True)
"""
)

_REWATCH = (
    _WATCH
    + """\
watch(int(sys.argv[1]), sys.argv[2], False)
"""
)


def saved_workdir(data: Mapping[str, Any]) -> str | None:
    """The working directory a saved context or kernel handle records: ``workdir``, or
    ``cwd`` as servers before the rename saved it (in sandbox and snapshot records)."""
    value = data.get("workdir", data.get("cwd"))
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class KernelHandle:
    """Where a running kernel is inside its sandbox: enough to attach to it again."""

    language: str
    workdir: str | None
    pid: int
    ports: Mapping[str, int]
    key: str
    conn_path: str

    def to_json(self) -> dict[str, Any]:
        return {
            "language": self.language, "workdir": self.workdir, "pid": self.pid,
            "ports": dict(self.ports), "key": self.key, "conn_path": self.conn_path,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KernelHandle:
        return cls(
            str(data["language"]), saved_workdir(data), int(data["pid"]),
            {str(k): int(v) for k, v in data["ports"].items()}, str(data["key"]),
            str(data["conn_path"]),
        )  # fmt: skip


# Kills a process and all its descendants, whatever their session or group.
_KILL_TREE = """\
import os, signal, sys
parent = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            with open(f"/proc/{p}/stat") as f:
                parent[int(p)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
tree = {int(sys.argv[1])}
while more := {p for p, pp in parent.items() if pp in tree} - tree:
    tree |= more
for p in tree:
    try:
        os.kill(p, signal.SIGKILL)
    except OSError:
        pass
"""

_CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_KEEP_STDERR = 8192
_TRACEBACK_MAX = 65536
# How long a kernel has to answer after SIGINT before a timed-out cell is given up on.
_INTERRUPT_GRACE = 10.0
_NO_PYTHON = "python3 is not installed in the image"
# After the execute_reply, how long iopub may stay silent before its end counts as lost.
_IOPUB_AFTER_REPLY = 2.0
# The interpreter when the image's PATH names none (its absence then reads as exit 127).
DEFAULT_PYTHON = "/usr/bin/python3"
# Bytes each queued iopub message counts for at least (its headers, the dicts around it).
_MESSAGE_FLOOR = 1024
_LOST = (
    "\n[stockade: output truncated: the kernel sent more output at once than the server "
    "accepts; the rest was dropped]\n"
)


def image_python(layers: Sequence[str], path: str) -> str:
    """The absolute path of the image's ``python3``: the first directory of ``path`` (the
    sandbox's PATH) that holds one in the image's layers (top first).

    Looked up in the image as built, never in the running sandbox: a ``python3`` that code
    in the sandbox wrote into a directory earlier on PATH (``/usr/local/bin`` comes before
    ``/usr/bin``) must not become the interpreter of the server's own helpers. Relative
    PATH entries (the working directory) are never used. Blocking (a few lstat calls).
    """
    for directory in path.split(":"):
        if not directory.startswith("/"):
            continue
        inside = directory.strip("/")
        for layer in layers:
            parent = os.path.join(layer, inside)
            root, real = os.path.realpath(layer), os.path.realpath(parent)
            if real != root and not real.startswith(root + os.sep):
                # A link out of the layer (an absolute one, resolved here on the host): no
                # directory of this layer's.
                continue
            try:
                st = os.lstat(os.path.join(parent, "python3"))
            except OSError:
                if os.path.lexists(os.path.join(parent, ".wh.python3")):
                    break  # removed in this layer: lower layers' copy is gone
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                break  # an overlay whiteout: removed in this layer
            return f"/{inside}/python3" if inside else "/python3"
    return DEFAULT_PYTHON


def message_size(msg: Mapping[str, Any]) -> int:
    """Roughly the bytes a Jupyter message holds, for the bound on queued iopub messages."""
    content = msg.get("content")
    size = _MESSAGE_FLOOR
    if isinstance(content, Mapping):
        for key in ("text", "evalue", "code"):
            value = content.get(key)
            if isinstance(value, str):
                size += len(value)
        data = content.get("data")
        if isinstance(data, Mapping):
            size += payload_size(data)
        traceback = content.get("traceback")
        if isinstance(traceback, list):
            size += sum(len(line) for line in traceback if isinstance(line, str))
    for buffer in msg.get("buffers") or ():
        with contextlib.suppress(TypeError):
            size += len(buffer)
    return size


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def payload_size(data: Mapping[str, Any]) -> int:
    """Bytes a MIME bundle adds to an execution's output, for the output cap."""
    return sum(
        len(v) if isinstance(v, str) else len(json.dumps(v, default=str)) for v in data.values()
    )


class Kernel:
    """A running kernel: start it, execute code, interrupt it, shut it down."""

    def __init__(
        self,
        execs: ExecService,
        sandbox_id: str,
        language: Language,
        workdir: str | None,
        *,
        zmq_context: zmq.asyncio.Context,
        runtime_root: Path,
        image: str,
        python: str = DEFAULT_PYTHON,
        queue_bytes: int = 16 * 1024 * 1024,
        max_message: int | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.execs = execs
        # Absolute: found in the image (image_python), never looked up in the sandbox's PATH.
        self.python = python
        # The most one message from the kernel may hold, all its parts together (relay.py).
        self._max_message = max_message
        self._on_exit = on_exit
        self.sandbox_id = sandbox_id
        self.language = language
        self.workdir = workdir
        self.image = image
        self._zmq = zmq_context
        self._runtime_root = runtime_root
        self._dir: Path | None = None
        self._session: ExecSession | None = None
        self._client: AsyncKernelClient | None = None
        self._relays: list[UnixRelay] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stderr = bytearray()
        self.died = asyncio.Event()
        self.death = ""
        # The execute request whose iopub messages are wanted; the rest are dropped.
        self._current: str | None = None
        # Its messages, with the bytes each holds: the reader waits while more than
        # queue_bytes are queued (ZeroMQ then holds a few more, and the kernel the rest).
        self._iopub: asyncio.Queue[tuple[dict[str, Any], int]] = asyncio.Queue()
        self._iopub_bytes = 0
        self._iopub_limit = queue_bytes
        self._iopub_room = asyncio.Event()
        self._iopub_room.set()
        # Set when the shell socket brings the current request's execute_reply.
        self._replied = asyncio.Event()
        self._iopub_reader: asyncio.Task[None] | None = None
        self._handle: KernelHandle | None = None
        self._pid_known = asyncio.Event()
        self._stdout = bytearray()
        # Let go of (release) rather than shut down: its end is no death to report.
        self._released = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, timeout: float = 120.0) -> None:
        """Start the kernel and return once it answers; raise KernelUnavailableError when
        the image has no such kernel."""
        key = secrets.token_hex(32)
        ports = dict(
            zip(_CHANNELS, secrets.SystemRandom().sample(range(20000, 60000), 5), strict=True)
        )
        inside = {
            **{f"{c}_port": p for c, p in ports.items()},
            "ip": "127.0.0.1", "transport": "tcp", "key": key,
            "signature_scheme": "hmac-sha256", "kernel_name": self.language.module,
        }  # fmt: skip
        conn_path = f"/tmp/.stockade-kernel-{secrets.token_hex(8)}.json"
        self._handle = KernelHandle(self.language.name, self.workdir, 0, ports, key, conn_path)
        await self._connect(
            [self.python, "-c", _LAUNCHER, self.language.module, conn_path, json.dumps(inside)],
            timeout,
        )

    async def attach(self, handle: KernelHandle, timeout: float = 15.0) -> None:
        """Take over a kernel that is already running (one that lived through a pause, or
        came with a snapshot or a fork): a new watcher, new relays, the same state."""
        self._handle = handle
        self._pid_known.set()
        await self._connect(
            [self.python, "-c", _REWATCH, str(handle.pid), handle.conn_path + ".log"], timeout
        )

    @property
    def handle(self) -> KernelHandle | None:
        """Where the kernel is, once it runs (None before its PID is known)."""
        h = self._handle
        return h if h is not None and h.pid > 0 else None

    async def _connect(self, watcher: list[str], timeout: float) -> None:
        """Start ``watcher`` (the launcher or a re-watcher), relays and the client; return
        once the kernel answers, or shut down and raise why not."""
        assert self._handle is not None
        self._runtime_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dir = Path(tempfile.mkdtemp(prefix="k", dir=self._runtime_root))
        self._session = await self.execs.start(
            self.sandbox_id,
            watcher,
            env={"JUPYTER_PLATFORM_DIRS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
            workdir=self.workdir,
            activity=False,  # a kernel waiting for code is no sign of use: runs are
        )
        self._tasks.append(asyncio.create_task(self._watch(self._session)))
        ports = self._handle.ports
        # Only the sockets this side uses get a relay: shell, iopub and control.
        for number, channel in enumerate(_CHANNELS, start=1):
            if channel in ("shell", "iopub", "control"):
                relay = UnixRelay(
                    self.execs, self.sandbox_id, ports[channel], self._dir / f"k-{number}",
                    python=self.python, max_message=self._max_message,
                )  # fmt: skip
                await relay.start()
                self._relays.append(relay)
        client = AsyncKernelClient(context=self._zmq)
        # The relays stand in for the kernel's sockets: ipc://<dir>/k-<number>.
        outside: dict[str, Any] = {
            **{f"{c}_port": n for n, c in enumerate(_CHANNELS, start=1)},
            "ip": str(self._dir / "k"), "transport": "ipc", "key": self._handle.key,
            "signature_scheme": "hmac-sha256",
        }  # fmt: skip
        client.load_connection_info(outside)  # type: ignore[arg-type]
        client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=True)
        self._client = client
        ready = asyncio.create_task(self._wait_ready(client))
        died = asyncio.create_task(self.died.wait())
        try:
            done, _ = await asyncio.wait(
                {ready, died}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (ready, died):
                task.cancel()
        if ready in done and not ready.cancelled() and ready.exception() is None:
            self._iopub_reader = asyncio.create_task(self._read_iopub(client))
            self._tasks.append(asyncio.create_task(self._read_shell(client)))
            return
        await self.shutdown()
        raise self._start_failure(timeout)

    def _start_failure(self, timeout: float) -> StockadeError:
        text = self._stderr.decode(errors="replace")
        lang = self.language
        if not self.died.is_set():
            return ServerError(
                f"the {lang.name} kernel did not answer within {timeout:g}s; "
                f"its last output: {text[-2000:].strip() or '(none)'}"
            )
        if "No module named" in text or self.death == _NO_PYTHON:
            return KernelUnavailableError(
                f"image {self.image!r} has no Jupyter kernel for {lang.name} "
                f"(python3 -m {lang.module} failed: {_last_line(text) or self.death}); "
                f"create the sandbox with image='code-interpreter', or install "
                f"{lang.package} into the image with Image.pip_install({lang.package!r})"
            )
        return ServerError(
            f"the {lang.name} kernel exited while starting ({self.death}): "
            f"{text[-2000:].strip() or '(no output)'}"
        )

    async def _wait_ready(self, client: AsyncKernelClient) -> None:
        """Like jupyter_client's wait_for_ready, without its fixed flush delay: a
        kernel_info reply on shell, then any message on iopub (the subscription works)."""
        wait = 0.25  # the first request may go out before the connection is up
        while True:
            msg_id = client.kernel_info()
            deadline = time.monotonic() + wait
            wait = min(1.0, wait * 2)
            while (left := deadline - time.monotonic()) > 0:
                try:
                    reply = await client.get_shell_msg(timeout=left)
                except Exception:  # queue.Empty: ask again
                    break
                if reply["parent_header"].get("msg_id") == msg_id:
                    with contextlib.suppress(Exception):
                        await client.get_iopub_msg(timeout=0.5)
                        return

    async def _watch(self, session: ExecSession) -> None:
        """Drain the kernel's own output (kept for error messages) until it exits."""
        try:
            async for event in session.events():
                if isinstance(event, OutputChunk) and event.stream == 1:
                    self._note_pid(event.data)
                elif isinstance(event, OutputChunk):
                    self._stderr += event.data
                    del self._stderr[:-_KEEP_STDERR]
                elif isinstance(event, ExitInfo):
                    if event.oom:
                        self.death = "killed: the sandbox ran out of memory"
                    elif event.exit_code == 127:
                        self.death = _NO_PYTHON
                    elif event.exit_code > 128:
                        self.death = f"killed by signal {event.exit_code - 128}"
                    else:
                        self.death = f"exit code {event.exit_code}"
        except StockadeError as exc:
            self.death = exc.message
        except asyncio.CancelledError:
            self.death = "shut down"
            raise
        finally:
            if not self.death:
                self.death = "ended"
            self.died.set()
            if self._on_exit is not None and not self._released:
                self._on_exit()

    def _note_pid(self, data: bytes) -> None:
        if self._pid_known.is_set():
            return  # the launcher's first line is all it has to say
        self._stdout += data
        line, sep, _ = self._stdout.partition(b"\n")
        if sep and self._handle is not None:
            with contextlib.suppress(ValueError):
                self._handle = dataclasses.replace(self._handle, pid=int(line))
            self._pid_known.set()
        elif len(self._stdout) > 64:
            self._pid_known.set()  # no PID line: not the launcher talking; keep nothing
        if self._pid_known.is_set():
            self._stdout.clear()

    async def _read_iopub(self, client: AsyncKernelClient) -> None:
        while True:
            msg = await client.get_iopub_msg()
            wanted = msg["parent_header"].get("msg_id")
            if self._current is None or wanted != self._current:
                continue
            size = message_size(msg)
            # Room for it, unless nothing is queued: one message may be larger alone.
            while self._iopub_bytes and self._iopub_bytes + size > self._iopub_limit:
                self._iopub_room.clear()
                await self._iopub_room.wait()
            if wanted == self._current:  # the run it belongs to may have ended meanwhile
                self._iopub_bytes += size
                self._iopub.put_nowait((msg, size))

    def _take(self, item: tuple[dict[str, Any], int]) -> dict[str, Any]:
        msg, size = item
        self._iopub_bytes -= size
        self._iopub_room.set()
        return msg

    async def _reconnect_iopub(self) -> None:
        """A new iopub connection: ZeroMQ never reconnects one it cut for a message above
        the size limit."""
        client = self._client
        if client is None:
            return
        if self._iopub_reader is not None:
            self._iopub_reader.cancel()
            with contextlib.suppress(BaseException):
                await self._iopub_reader
        client.iopub_channel.stop()
        client._iopub_channel = None  # the property makes a fresh channel on next use
        client.iopub_channel.start()
        try:
            async with asyncio.timeout(30):
                while True:
                    # Its reply goes to _read_shell; the status messages it causes on iopub
                    # show that the new subscription is in place.
                    client.kernel_info()
                    with contextlib.suppress(Exception):
                        await client.get_iopub_msg(timeout=0.5)
                        break
        except TimeoutError:
            log.warning("kernel in %s: iopub did not come back", self.sandbox_id)
        self._iopub_reader = asyncio.create_task(self._read_iopub(client))

    async def _read_shell(self, client: AsyncKernelClient) -> None:
        while True:
            msg = await client.get_shell_msg()
            if self._current is not None and msg["parent_header"].get("msg_id") == self._current:
                self._replied.set()

    async def interrupt(self) -> None:
        if self._session is not None and not self.died.is_set():
            await self._session.signal("SIGINT")

    async def _kill_tree(self, pid: int) -> None:
        session = await self.execs.start(
            self.sandbox_id, [self.python, "-c", _KILL_TREE, str(pid)], activity=False
        )
        try:
            async for _ in session.events():
                pass
        finally:
            await session.aclose()

    async def shutdown(self) -> None:
        """Kill the kernel and release its relays and sockets."""
        pid = self._handle.pid if self._handle is not None else 0
        if pid > 0 and not self.died.is_set():
            # The kernel and its children, whatever their session: bash_kernel's shell
            # has one of its own, and so does the kernel (it outlives its watcher).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._kill_tree(pid), 10)
        await self._disconnect()

    def let_go(self) -> None:
        """From now on its end is no death to report: it is being let go of."""
        self._released = True

    async def release(self) -> None:
        """Let go of the kernel without stopping it (its sandbox is being paused): the
        watcher, relays and client go; the kernel and its state stay, to :meth:`attach`."""
        self.let_go()
        await self._disconnect()

    async def _disconnect(self) -> None:
        if self._iopub_reader is not None:
            self._tasks.append(self._iopub_reader)
            self._iopub_reader = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        if self._session is not None:
            with contextlib.suppress(Exception):
                await self._session.aclose()
        self.died.set()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.stop_channels()
            self._client = None
        for relay in self._relays:
            await relay.close()
        self._relays.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    # ------------------------------------------------------------------- execute

    async def execute(
        self, code: str, *, timeout: float | None, limit: int
    ) -> AsyncIterator[dict[str, Any]]:
        """Run ``code``; yield the events of docs/code-interpreter.md, ``end`` last
        (without its ``context`` field, which the caller adds)."""
        client = self._client
        end: dict[str, Any] = {"type": "end", "execution_count": None, "truncated": False,
                               "timed_out": False}  # fmt: skip
        if client is None or self.died.is_set():
            yield self._died_event(before=True)
            yield end
            return
        while not self._iopub.empty():
            self._take(self._iopub.get_nowait())
        msg_id: str = client.execute(
            code, silent=False, store_history=True, allow_stdin=False, stop_on_error=False
        )
        self._current = msg_id
        self._replied.clear()
        used = 0
        finished = False
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                msg = await self._next(deadline)
                if msg is None:  # dead, past the deadline, or the iopub stream was cut
                    if self.died.is_set():
                        yield self._died_event(before=False)
                        break
                    if self._replied.is_set():
                        # The kernel finished but its iopub messages stopped: ZeroMQ cut
                        # the connection over a message above the size limit.
                        end["truncated"] = True
                        yield {"type": "stderr", "text": _LOST}
                        await self._reconnect_iopub()
                        break
                    if end["timed_out"]:
                        yield {
                            "type": "exception", "name": "TimeoutError",
                            "value": f"the code ran past its timeout of {timeout:g}s and did "
                            "not stop when interrupted; restart the context",
                            "traceback": "",
                        }  # fmt: skip
                        break
                    end["timed_out"] = True
                    await self.interrupt()
                    deadline = time.monotonic() + _INTERRUPT_GRACE
                    continue
                kind = msg["msg_type"]
                content = msg["content"]
                if kind == "status" and content.get("execution_state") == "idle":
                    break
                if kind == "execute_input":
                    end["execution_count"] = content.get("execution_count")
                    continue
                if kind == "error":
                    tb = strip_ansi("\n".join(content.get("traceback") or []))
                    yield {
                        "type": "exception", "name": str(content.get("ename", "")),
                        "value": strip_ansi(str(content.get("evalue", ""))),
                        "traceback": tb[:_TRACEBACK_MAX],
                    }  # fmt: skip
                    continue
                event = _output_event(kind, content)
                if event is None or end["truncated"]:
                    continue
                size = len(event["text"]) if "text" in event else payload_size(event["data"])
                if used + size > limit:
                    if "text" in event and limit - used > 0:
                        yield {**event, "text": event["text"][: limit - used]}
                    end["truncated"] = True
                    yield {
                        "type": "stderr",
                        "text": f"\n[stockade: output truncated: this run printed more than "
                        f"{limit} bytes; the rest was dropped]\n",
                    }
                    continue
                used += size
                yield event
            finished = True
        finally:
            self._current = None
            if not finished and not self.died.is_set():
                # The caller went away mid-run: stop the cell so the context is free again.
                with contextlib.suppress(Exception):
                    await self.interrupt()
        yield end

    async def _next(self, deadline: float | None) -> dict[str, Any] | None:
        """The next iopub message of the current request; None when the kernel died, the
        deadline passed, or iopub stayed silent too long after the execute_reply."""
        while True:
            if not self._iopub.empty():
                return self._take(self._iopub.get_nowait())
            if self.died.is_set():
                return None
            waits: dict[asyncio.Task[Any], str] = {
                asyncio.create_task(self._iopub.get()): "message",
                asyncio.create_task(self.died.wait()): "died",
            }
            if not self._replied.is_set():
                waits[asyncio.create_task(self._replied.wait())] = "replied"
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._replied.is_set():
                left = _IOPUB_AFTER_REPLY if left is None else min(left, _IOPUB_AFTER_REPLY)
            try:
                done, _ = await asyncio.wait(
                    waits, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in waits:
                    task.cancel()
            for task in done:
                if waits[task] == "message" and not task.cancelled():
                    return self._take(task.result())
            if not done:
                return None
            # The reply came (or the kernel died): wait again, with the shorter timeout.

    def _died_event(self, *, before: bool) -> dict[str, Any]:
        when = "is not running" if before else "died while running this code"
        return {
            "type": "exception",
            "name": "KernelDied",
            "value": f"the {self.language.name} kernel {when} ({self.death}); its state is "
            "lost: restart the context (restart_code_context) to go on",
            "traceback": strip_ansi(self._stderr.decode(errors="replace"))[-2000:],
        }


def _output_event(kind: str, content: Mapping[str, Any]) -> dict[str, Any] | None:
    if kind == "stream":
        name = "stderr" if content.get("name") == "stderr" else "stdout"
        return {"type": name, "text": str(content.get("text", ""))}
    if kind in ("execute_result", "display_data", "update_display_data"):
        data = content.get("data")
        if not isinstance(data, dict) or not data:
            return None
        return {"type": "result", "data": data, "is_main_result": kind == "execute_result"}
    return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
