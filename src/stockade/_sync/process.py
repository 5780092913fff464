# This file is generated from src/stockade/_async/process.py by scripts/gen_sync.py.
# Do not edit it: edit the async original and run `python scripts/gen_sync.py`.
"""A command running in a sandbox, shaped like ``subprocess.Popen``/asyncio's ``Process``.

Each process owns one WebSocket that carries stdout, stderr and control events mixed
together. There is no background reader: whoever needs the next piece of data (a stdout
reader, a stderr reader, ``wait()``) becomes the one receiver, and every message it
receives lands in the buffer of the stream it belongs to. So a caller that reads only
stdout of a process that writes a lot of stderr never deadlocks: the stderr output is
buffered, without a size limit, until someone reads it or the process is closed. Nothing
is received while nobody asks, which lets the server's flow control pace the process.

Concurrency contract: one process may be used from several tasks (async) or threads
(sync) at once, for example one reading stdout while another reads stderr and a third
writes stdin. Two readers of the *same* stream each get some of its chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TypeVar

from stockade import _base, _protocol
from stockade._sync.client import Client
from stockade._transport import NOTHING, Condition, WebSocket
from stockade.commands import CommandTimeoutError
from stockade.errors import (
    ConflictError,
    SandboxTerminatedError,
    StockadeConnectionError,
    StockadeError,
)
from stockade.models import SandboxInfo

__all__ = ["Process", "StreamReader", "StreamWriter", "cut_short"]

_T = TypeVar("_T")


def cut_short(
    client: Client, sandbox_id: str, argv: Sequence[str], why: str
) -> StockadeError:
    """The error for a command whose stream ended without an exit event.

    The usual cause is the sandbox ending (timeout, out of memory, terminated), so ask
    the server, and name that cause and its fix rather than a bare connection error.
    """
    name = f"`{_protocol.describe(argv)}` in sandbox {sandbox_id}"
    try:
        data = client.request("GET", _base.sandbox_path(sandbox_id))
        info = _base.parse(SandboxInfo.from_json, data, "sandbox")
    except StockadeError as exc:
        return StockadeConnectionError(
            f"the connection to {name} ended before the command exited ({why}), "
            f"and checking the sandbox failed too: {exc}"
        )
    if not info.running:
        return SandboxTerminatedError(f"{name} was cut short: {_base.ended_message(info)}")
    return StockadeConnectionError(
        f"the connection to {name} ended before the command exited ({why}); "
        "the command was killed with it"
    )


class StreamReader:
    """The stdout or stderr of a process (:class:`Process`).

    Iterating yields lines as text, each with its trailing newline (like a file);
    :meth:`read` returns everything until the process closes the stream. Text is decoded as
    UTF-8 with undecodable bytes replaced; use :meth:`read_bytes`/:meth:`iter_bytes` for
    the exact bytes.

    Example::

        p = sb.exec("sh", "-c", "echo one; echo two")
        for line in p.stdout:
            print(line, end="")
    """

    def __init__(self, process: Process, fd: int) -> None:
        self._process = process
        self._fd = fd
        self._pending = bytearray()

    def __repr__(self) -> str:
        return f"<StreamReader {'stdout' if self._fd == _protocol.STDOUT else 'stderr'}>"

    def _chunk(self) -> bytes:
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            return data
        return self._process._read_chunk(self._fd)

    def read_bytes(self) -> bytes:
        """All remaining output as bytes, waiting for the stream to end.

        Example::

            p = sb.exec("cat", "/bin/true")
            data = p.stdout.read_bytes()
        """
        parts = []
        while chunk := self._chunk():
            parts.append(chunk)
        return b"".join(parts)

    def read(self) -> str:
        """All remaining output as text, waiting for the stream to end.

        Example::

            p = sb.exec("python3", "-c", "print(6*7)")
            out = p.stdout.read()
        """
        return (self.read_bytes()).decode("utf-8", "replace")

    def readline(self) -> str:
        """The next line with its newline; ``""`` at the end of the stream.

        Example::

            first = p.stdout.readline()
        """
        scan = 0
        while True:
            end = self._pending.find(b"\n", scan)
            if end >= 0:
                line = bytes(self._pending[: end + 1])
                del self._pending[: end + 1]
                # A newline byte never occurs inside a UTF-8 sequence, so lines decode alone.
                return line.decode("utf-8", "replace")
            scan = len(self._pending)
            chunk = self._process._read_chunk(self._fd)
            if not chunk:
                line = bytes(self._pending)
                self._pending.clear()
                return line.decode("utf-8", "replace")
            self._pending += chunk

    def __iter__(self) -> Iterator[str]:
        return self._lines()

    def _lines(self) -> Iterator[str]:
        while line := self.readline():
            yield line

    def iter_bytes(self) -> Iterator[bytes]:
        """Yield output as bytes, chunk by chunk, as soon as it arrives.

        Example::

            for chunk in p.stdout.iter_bytes():
                sys.stdout.buffer.write(chunk)
        """
        while chunk := self._chunk():
            yield chunk


class StreamWriter:
    """The stdin of a process (:class:`Process`).

    :meth:`write` takes text (sent as UTF-8) or bytes and returns once the data is handed
    to the connection, so there is no separate buffer to drain; :meth:`drain` exists for
    code written against asyncio-style or Modal-style writers. :meth:`close` (alias
    :meth:`write_eof`) sends end-of-file.

    Example::

        p = sb.exec("cat")
        p.stdin.write("hello\\n")
        p.stdin.close()
        assert p.stdout.read() == "hello\\n"
    """

    def __init__(self, process: Process) -> None:
        self._process = process
        self._eof = False

    def __repr__(self) -> str:
        return f"<StreamWriter {'closed' if self._eof else 'open'}>"

    @property
    def closed(self) -> bool:
        """Whether end-of-file was sent."""
        return self._eof

    def write(self, data: str | bytes) -> None:
        """Send ``data`` to the process's stdin.

        Example::

            p.stdin.write(b"\\x00binary")
        """
        process = self._process
        if self._eof:
            raise ConflictError(f"the stdin of {process._name} is closed; start a new process")
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        for frame in _protocol.stdin_frames(raw):
            if process._ended or not process._ws.send(frame):
                raise ConflictError(f"{process._name} has exited; nothing reads its stdin any more")

    def drain(self) -> None:
        """Return at once: :meth:`write` already waited for the connection to take the data."""

    def write_eof(self) -> None:
        """Close stdin, so the process reads end-of-file. Closing twice is fine.

        Example::

            p.stdin.write_eof()
        """
        if self._eof:
            return
        self._eof = True
        if not self._process._ended:
            # A process that already exited does not care; that is not an error.
            self._process._ws.send(_protocol.STDIN_EOF_MESSAGE)

    def close(self) -> None:
        """Same as :meth:`write_eof`."""
        self.write_eof()


class Process:
    """A command running in a sandbox, started by :meth:`Sandbox.exec`.

    ``stdout``/``stderr`` are :class:`StreamReader`, ``stdin`` an
    :class:`StreamWriter`. :meth:`wait` returns the exit code; a non-zero code is
    data, not an error. After the process ends, ``returncode`` holds the code, ``oom`` says
    whether the sandbox ran out of memory and ``timed_out`` whether the server killed the
    command at its ``timeout=`` (then :meth:`wait` raises
    :class:`~stockade.CommandTimeoutError`).

    Closing the process (``with`` or :meth:`close`) before it exits kills it. A
    process holds a connection until it exits or is closed, so close one you abandon.

    Example::

        with sb.exec("python3", "-c", "print(6*7)") as p:
            assert p.stdout.read() == "42\\n"
            assert p.wait() == 0
    """

    def __init__(
        self,
        ws: WebSocket,
        *,
        client: Client,
        sandbox_id: str,
        argv: Sequence[str],
        pty: bool,
        timeout: float | None,
    ) -> None:
        self._ws = ws
        self._client = client
        self.sandbox_id = sandbox_id
        self.argv = list(argv)
        self.pty = pty
        self.timeout = timeout
        self.returncode: int | None = None
        self.oom = False
        self.timed_out = False
        self.stdin = StreamWriter(self)
        self.stdout = StreamReader(self, _protocol.STDOUT)
        self.stderr = StreamReader(self, _protocol.STDERR)
        # Everything below is guarded by _cond.
        self._cond = Condition()
        self._receiving = False
        self._started = False
        self._closed = False
        self._error: StockadeError | None = None
        self._buffers = {_protocol.STDOUT: bytearray(), _protocol.STDERR: bytearray()}

    @classmethod
    def _start(
        cls,
        client: Client,
        sandbox_id: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None,
        workdir: str | None,
        timeout: float | None,
        pty: bool,
        cols: int,
        rows: int,
        user: str | None = None,
    ) -> Process:
        """Connect, send the command and wait until the server says it runs."""
        start = _protocol.ws_start_message(
            argv, env=env, workdir=workdir, timeout=timeout, pty=pty, cols=cols, rows=rows,
            user=user,
        )  # fmt: skip
        ws = client.connect_ws(_base.sandbox_path(sandbox_id, "/exec/ws"))
        process = cls(ws, client=client, sandbox_id=sandbox_id, argv=argv, pty=pty, timeout=timeout)
        try:
            ws.send(start)
            if not process._next(process._take_started):
                raise process._ended_early()
        except BaseException:
            ws.close()
            raise
        return process

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"<Process {self._name} {state}>"

    def __enter__(self) -> Process:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _name(self) -> str:
        return f"`{_protocol.describe(self.argv)}` in sandbox {self.sandbox_id}"

    @property
    def _ended(self) -> bool:
        # After the exit event no output follows, so readers may report end-of-stream.
        return self._closed or self.returncode is not None

    # -- receiving ---------------------------------------------------------------------

    def _take_started(self) -> bool | None:
        return True if self._started else None

    def _take_returncode(self) -> int | None:
        return self.returncode

    def _take_output(self, fd: int) -> bytes | None:
        buffer = self._buffers[fd]
        if buffer:
            data = bytes(buffer)
            buffer.clear()
            return data
        return b"" if self._ended else None

    def _read_chunk(self, fd: int) -> bytes:
        """The next buffered chunk of stream ``fd``; ``b""`` at its end."""
        return self._next(lambda: self._take_output(fd)) or b""

    def _next(self, take: Callable[[], _T | None], *, block: bool = True) -> _T | None:
        """Receive messages until ``take()`` has an answer or the connection has closed.

        With ``block=False`` only messages that already arrived are received.
        """
        may_receive = True
        while True:
            with self._cond:
                while True:
                    result = take()
                    if result is not None:
                        return result
                    if self._error is not None:
                        raise self._error
                    if self._closed or not may_receive:
                        return None
                    if not self._receiving:
                        self._receiving = True
                        break
                    if not block:
                        return None
                    self._cond.wait()
            self._receive(block=block)
            may_receive = block

    def _receive(self, *, block: bool) -> None:
        """As the one receiver: take one message (``block``) or all that already arrived."""
        try:
            while True:
                message = self._ws.recv(block=block)
                if message is NOTHING:
                    return
                with self._cond:
                    self._handle(message)
                    self._cond.notify_all()
                if self.returncode is not None and message is not None:
                    # The exit event is the last message: close now rather than when the
                    # process object is collected, so no socket outlives the command.
                    self._ws.close()
                    return
                if block or message is None:
                    return
        finally:
            with self._cond:
                self._receiving = False
                self._cond.notify_all()

    def _handle(self, message: str | bytes | None) -> None:
        if message is None:
            self._closed = True
            return
        event = _protocol.decode_ws_message(message)
        if isinstance(event, _protocol.Output):
            self._buffers[event.fd] += event.data
        elif isinstance(event, _protocol.Started):
            self._started = True
        elif isinstance(event, _protocol.Exited):
            self._started = True
            self.oom = event.oom
            self.timed_out = event.timed_out
            self.returncode = event.exit_code
        elif isinstance(event, _protocol.Failed):
            self._error = event.error

    def _ended_early(self) -> StockadeError:
        """Explain why the stream closed without an exit event (the sandbox may be gone)."""
        if self._error is not None:
            return self._error
        return cut_short(
            self._client, self.sandbox_id, self.argv, self._ws.close_reason or "closed"
        )

    # -- the public surface ------------------------------------------------------------

    def wait(self) -> int:
        """Wait for the process to exit and return its exit code.

        Output that nobody read yet stays readable afterwards.

        Example::

            p = sb.exec("sh", "-c", "exit 3")
            assert p.wait() == 3
        """
        code = self._next(self._take_returncode)
        if code is None:
            raise self._ended_early()
        if self.timed_out:
            raise CommandTimeoutError(self.argv, sandbox_id=self.sandbox_id, timeout=self.timeout)
        return code

    def poll(self) -> int | None:
        """The exit code if the process has exited, else ``None``; never waits.

        Example::

            while p.poll() is None:
                time.sleep(0.1)
        """
        code = self._next(self._take_returncode, block=False)
        if code is None and self._closed:
            raise self._ended_early()
        return code

    def signal(self, sig: str | int) -> None:
        """Send a signal (``"SIGTERM"``, ``"INT"``, ``signal.SIGHUP``…) to the process.

        Example::

            p.signal("SIGINT")
        """
        message = _protocol.signal_message(sig)
        if not self._ended:
            self._ws.send(message)

    def kill(self) -> None:
        """Kill the process with SIGKILL; :meth:`wait` then returns its code.

        Example::

            p.kill()
            p.wait()
        """
        self.signal("SIGKILL")

    def terminate(self) -> None:
        """Ask the process to stop with SIGTERM."""
        self.signal("SIGTERM")

    def resize(self, cols: int, rows: int) -> None:
        """Resize the process's terminal (only for ``pty=True``).

        Example::

            p.resize(120, 40)
        """
        message = _protocol.resize_message(cols, rows)
        if not self._ended:
            self._ws.send(message)

    def close(self) -> None:
        """Close the connection; a process that still runs is killed by the server.

        Example::

            p.close()
        """
        self._ws.close()
