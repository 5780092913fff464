"""The server's end of the channel to a sandbox's agent (docs/agent-protocol.md).

One :class:`AgentLink` per running sandbox multiplexes every exec and file operation over
two FIFOs. It is created lazily and re-created after a server restart: the handshake
(:meth:`AgentLink.connect`) resynchronises both directions, so a link never depends on
what an earlier server left in the FIFOs.

Concurrency: use a link from the event loop only. Output never blocks the loop: each
:class:`Channel` queues its frames, and the agent's per-channel window bounds how much
can queue. Input is written as the FIFO accepts it; :meth:`Channel.send` waits while a
large backlog is pending, which is what slows down a fast uploader.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..agent.protocol import (
    SYNC_PREAMBLE,
    Frame,
    FrameDecoder,
    FrameType,
    encode,
    encode_json,
    encode_window,
    find_hello_ack,
)

__all__ = ["AgentLink", "AgentLost", "Channel"]

log = logging.getLogger(__name__)

_READ_CHUNK = 256 * 1024
_BACKLOG_LIMIT = 4 * 1024 * 1024
_HANDSHAKE_TIMEOUT = 10.0


class AgentLost(Exception):
    """The agent stopped answering: its sandbox ended, or the channel broke."""


class Channel:
    """One exec or file operation on a link. Frames arrive in order on :meth:`recv`."""

    def __init__(self, link: AgentLink, number: int) -> None:
        self.link = link
        self.number = number
        self._frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.finished = False  # the agent sent the channel's last frame

    def _deliver(self, frame: Frame | None) -> None:
        self._frames.put_nowait(frame)

    async def recv(self) -> Frame:
        """The next frame; raises AgentLost if the link died first."""
        frame = await self._frames.get()
        if frame is None:
            self._frames.put_nowait(None)  # keep reporting to later calls
            raise AgentLost(self.link.lost_reason)
        if frame.type in _LAST_FRAMES:
            self.finished = True
            self.link._forget(self.number)
        return frame

    async def send(self, ftype: int, payload: bytes = b"") -> None:
        await self.link._send(encode(ftype, self.number, payload))

    async def send_json(self, ftype: int, obj: Any) -> None:
        await self.link._send(encode_json(ftype, self.number, obj))

    def post_json(self, ftype: int, obj: Any) -> None:
        """Queue a small control frame without waiting (resize, from non-async code)."""
        if not self.finished:
            self.link._send_nowait(encode_json(ftype, self.number, obj))

    def grant(self, nbytes: int) -> None:
        """Let the agent send ``nbytes`` more output on this channel."""
        if not self.finished and nbytes > 0:
            self.link._send_nowait(encode_window(self.number, nbytes))

    def close(self, last: Frame | None = None) -> None:
        """Give the channel up: the agent kills its process group or drops its file work.

        The agent sends nothing more on a closed channel; ``last``, if given, is queued
        for :meth:`recv` in its place, so that a reader still waiting sees an end.
        """
        if not self.finished:
            self.finished = True
            self.link._forget(self.number)
            if not self.link.dead:
                self.link._send_nowait(encode(FrameType.CLOSE, self.number))
            if last is not None:
                self._deliver(last)


_LAST_FRAMES = frozenset({FrameType.EXIT, FrameType.ERROR, FrameType.END, FrameType.RESULT})


class AgentLink:
    """The multiplexed channel to one sandbox's agent."""

    def __init__(
        self,
        sandbox_id: str,
        in_fifo: Path,
        out_fifo: Path,
        *,
        on_entrypoint_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self._in_path = in_fifo
        self._out_path = out_fifo
        self._in_fd = -1
        self._out_fd = -1
        self._wbuf = bytearray()
        self._drained = asyncio.Event()
        self._drained.set()
        self._decoder = FrameDecoder()
        self._channels: dict[int, Channel] = {}
        self._next = 1
        self._on_entrypoint_exit = on_entrypoint_exit
        self.dead = False
        self.closed = asyncio.Event()
        self.lost_reason = f"the agent of sandbox {sandbox_id} is not connected"
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifetime

    async def connect(self, *, resync: bool = True) -> None:
        """Open the FIFOs, resynchronise and handshake. Raises AgentLost on failure.

        ``resync=False`` skips the 1 MiB preamble; only for FIFOs that no other server
        has written to (a sandbox this process just created).
        """
        loop = asyncio.get_running_loop()
        try:
            # The sandbox holds both FIFOs open read-write, so these opens never block.
            self._in_fd = os.open(self._in_path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._out_fd = os.open(self._out_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            self.close(f"cannot open the agent channel of {self.sandbox_id}: {exc}")
            raise AgentLost(self.lost_reason) from exc
        nonce = secrets.token_bytes(16)
        got = asyncio.Event()
        pending = bytearray()
        ack_end = -1

        def on_handshake_readable() -> None:
            nonlocal ack_end
            data = self._read_available()
            if data is None:
                got.set()
                return
            pending.extend(data)
            ack = find_hello_ack(pending, nonce)
            if ack is not None:
                self.info = ack.info
                ack_end = ack.end
                got.set()
            elif len(pending) > 8 * 1024 * 1024:
                # Stale output of an earlier session: keep only a tail that may hold
                # the beginning of our answer.
                del pending[: len(pending) - 1024]

        loop.add_reader(self._out_fd, on_handshake_readable)
        try:
            hello = encode(FrameType.HELLO, 0, nonce)
            await self._send(SYNC_PREAMBLE + hello if resync else hello)
            await asyncio.wait_for(got.wait(), _HANDSHAKE_TIMEOUT)
        except (TimeoutError, AgentLost) as exc:
            self.close(f"the agent of sandbox {self.sandbox_id} did not answer the handshake")
            raise AgentLost(self.lost_reason) from exc
        finally:
            if self._out_fd >= 0:
                loop.remove_reader(self._out_fd)
        if ack_end < 0:
            self.close(f"the agent channel of sandbox {self.sandbox_id} closed")
            raise AgentLost(self.lost_reason)
        self._dispatch(self._decoder.feed(bytes(pending[ack_end:])))
        loop.add_reader(self._out_fd, self._on_readable)

    def close(self, reason: str = "the agent link was closed") -> None:
        """Fail every open channel and release the FIFOs. Idempotent."""
        if self.dead:
            return
        self.dead = True
        self.closed.set()
        self.lost_reason = reason
        with contextlib.suppress(RuntimeError):  # the loop may be closing
            loop = asyncio.get_running_loop()
            for fd in (self._in_fd, self._out_fd):
                if fd >= 0:
                    loop.remove_reader(fd)
                    loop.remove_writer(fd)
        for fd in (self._in_fd, self._out_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._in_fd = self._out_fd = -1
        for ch in list(self._channels.values()):
            ch._deliver(None)
        self._channels.clear()
        self._drained.set()

    # ------------------------------------------------------------------ channels

    def open(self) -> Channel:
        if self.dead:
            raise AgentLost(self.lost_reason)
        number = self._next
        self._next = self._next + 1 if self._next < 0xFFFFFFFF else 1
        ch = Channel(self, number)
        self._channels[number] = ch
        return ch

    def _forget(self, number: int) -> None:
        self._channels.pop(number, None)

    @property
    def open_channels(self) -> int:
        return len(self._channels)

    # ------------------------------------------------------------------ reading

    def _read_available(self) -> bytes | None:
        """Whatever the FIFO holds now; None once every writer is gone (sandbox ended)."""
        chunks: list[bytes] = []
        while True:
            try:
                data = os.read(self._out_fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return None
            if not data:
                if chunks:
                    break
                return None
            chunks.append(data)
            if len(data) < _READ_CHUNK:
                break
        return b"".join(chunks)

    def _on_readable(self) -> None:
        data = self._read_available()
        if data is None:
            self.close(f"sandbox {self.sandbox_id} ended: its agent channel closed")
            return
        if data:
            self._dispatch(self._decoder.feed(data))

    def _dispatch(self, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.channel == 0:
                self._control(frame)
                continue
            ch = self._channels.get(frame.channel)
            if ch is not None:
                ch._deliver(frame)

    def _control(self, frame: Frame) -> None:
        if frame.type == FrameType.ENTRYPOINT_EXIT and self._on_entrypoint_exit is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self._on_entrypoint_exit(int(frame.json()["exit_code"]))
        elif frame.type == FrameType.ERROR:
            log.warning("agent of %s reported: %r", self.sandbox_id, frame.payload[:200])

    # ------------------------------------------------------------------ writing

    def _send_nowait(self, data: bytes) -> None:
        if self.dead:
            return
        self._wbuf += data
        self._flush()

    async def _send(self, data: bytes) -> None:
        if self.dead:
            raise AgentLost(self.lost_reason)
        self._wbuf += data
        self._flush()
        while len(self._wbuf) > _BACKLOG_LIMIT and not self.dead:
            self._drained.clear()
            await self._drained.wait()
        if self.dead:
            raise AgentLost(self.lost_reason)

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._wbuf:
            try:
                n = os.write(self._in_fd, self._wbuf[:_READ_CHUNK])
            except BlockingIOError:
                break
            except OSError as exc:
                self.close(f"writing to the agent of {self.sandbox_id} failed: {exc}")
                return
            del self._wbuf[:n]
        if self._wbuf:
            loop.add_writer(self._in_fd, self._on_writable)
        else:
            loop.remove_writer(self._in_fd)
        if len(self._wbuf) <= _BACKLOG_LIMIT:
            self._drained.set()

    def _on_writable(self) -> None:
        if not self.dead:
            self._flush()
