"""Byte relays from host Unix sockets to TCP ports on a sandbox's loopback.

A kernel listens on 127.0.0.1 inside the sandbox, which the host cannot reach when the
sandbox has no network (``block_network=True``, ``--no-network``) and should not depend
on when it has one. Each relay is a Unix socket on the host; every connection to it
starts a tiny program in the sandbox, through the agent like any command, that connects to
the port and copies bytes both ways over its stdin and stdout. ZeroMQ on the host connects
to the Unix socket as if it were the kernel, so jupyter_client speaks to the real kernel
with nothing in between that parses its messages.

Nothing but the sizes: ZeroMQ bounds each frame it takes (``MAXMSGSIZE``) and how many
whole messages it queues (``RCVHWM``), but not how many frames one message has, and it
holds every part until the last one comes. So the relay follows the ZMTP framing of what
the kernel sends (:class:`MessageGuard`) and cuts a connection whose message grows past
``max_message``; ZeroMQ drops the partial message and connects again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from ....errors import StockadeError
from ..execs import ExecService, ExitInfo, OutputChunk

__all__ = ["RELAY_PROGRAM", "MessageGuard", "MessageTooLarge", "UnixRelay"]

log = logging.getLogger(__name__)

# Runs inside the sandbox with the image's python3. It retries the connection while the
# kernel is still starting, so the host can connect before the kernel listens.
RELAY_PROGRAM = """\
import os, socket, sys, threading, time
port = int(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port))
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.02)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def up():
    while True:
        b = os.read(0, 262144)
        if not b:
            break
        s.sendall(b)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
out = sys.stdout.buffer
while True:
    b = s.recv(262144)
    if not b:
        break
    out.write(b)
    out.flush()
"""

_READ = 262144
_GREETING = 64  # ZMTP 3.x: signature, version, mechanism, as-server, filler
_MORE, _LONG, _COMMAND = 0x01, 0x02, 0x04


class MessageTooLarge(Exception):
    """The kernel sent a message larger than the relay passes on."""


class MessageGuard:
    """Follows the ZMTP 3 framing of one direction of a connection and raises
    MessageTooLarge when one message (all its frames) passes ``limit`` bytes.

    Keeps a few counters, never the bytes: frame bodies are skipped, not buffered.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._greeting = _GREETING
        self._header = bytearray()  # flags and size of the frame being read
        self._body = 0  # bytes of the current frame's body still to come
        self._more = False  # the current frame is not its message's last
        self._message = 0  # bytes of the current message so far

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        if self._greeting:
            take = min(self._greeting, n)
            self._greeting -= take
            i = take
        while i < n:
            if self._body:
                take = min(self._body, n - i)
                self._body -= take
                i += take
                if not self._body and not self._more:
                    self._message = 0
                continue
            self._header.append(data[i])
            i += 1
            flags = self._header[0]
            if len(self._header) < (9 if flags & _LONG else 2):
                continue
            size = int.from_bytes(self._header[1:], "big")
            self._header.clear()
            self._more = bool(flags & _MORE) and not flags & _COMMAND
            self._message += size
            if self._message > self.limit:
                raise MessageTooLarge(
                    f"a message of more than {self.limit} bytes (the part so far is dropped)"
                )
            self._body = size
            if not size and not self._more:
                self._message = 0


class UnixRelay:
    """A Unix socket at ``path`` whose connections reach ``port`` in the sandbox."""

    def __init__(
        self,
        execs: ExecService,
        sandbox_id: str,
        port: int,
        path: Path,
        *,
        connect_within: float = 60.0,
        python: str = "/usr/bin/python3",
        max_message: int | None = None,
    ) -> None:
        self.execs = execs
        self.python = python  # absolute: the image's (kernel.image_python)
        self.max_message = max_message  # None: no bound (tests)
        self.sandbox_id = sandbox_id
        self.port = port
        self.path = path
        self.connect_within = connect_within
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._pump(reader, writer)
        except (StockadeError, OSError, MessageTooLarge) as exc:
            # The sandbox ended or the peer went away: ZeroMQ reconnects if it still wants to.
            log.debug("relay to %s:%d ended: %s", self.sandbox_id, self.port, exc)
        except asyncio.CancelledError:
            # close() ends the connection; a cancelled handler task would otherwise be
            # logged as an error by asyncio's stream server, which nothing awaits.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = await self.execs.start(
            self.sandbox_id,
            [self.python, "-c", RELAY_PROGRAM, str(self.port), str(self.connect_within)],
            activity=False,  # open as long as ZeroMQ's connection; runs count instead
        )

        async def upstream() -> None:
            while data := await reader.read(_READ):
                await session.write_stdin(data)
            await session.close_stdin()

        feeder = asyncio.create_task(upstream())
        guard = MessageGuard(self.max_message) if self.max_message is not None else None
        try:
            async for event in session.events():
                if isinstance(event, OutputChunk) and event.stream == 1:
                    if guard is not None:
                        guard.feed(event.data)  # raises before a byte too many goes on
                    writer.write(event.data)
                    await writer.drain()
                elif isinstance(event, OutputChunk):
                    log.debug("relay %s:%d: %r", self.sandbox_id, self.port, event.data[:500])
                elif isinstance(event, ExitInfo):
                    break
        finally:
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
            await session.aclose()
