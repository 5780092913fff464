"""The server's end of the channel to a sandbox's agent (docs/agent-protocol.md).

One :class:`AgentLink` per running sandbox multiplexes every exec and file operation over
two FIFOs. It is created lazily and re-created after a server restart: the handshake
(:meth:`AgentLink.connect`) resynchronises both directions, so a link never depends on
what an earlier server left in the FIFOs.

Concurrency: use a link from the event loop only. Output never blocks the loop: each
:class:`Channel` queues its frames, and the agent's per-channel window bounds how much
can queue. Input is written as the FIFO accepts it; :meth:`Channel.send` waits while a
large backlog is pending, which is what slows down a fast uploader.

Bounds. Everything the agent sends is treated as hostile (code in the sandbox can take
the agent's place), and nothing it sends can make the server hold more than a fixed
amount per link:

- at most :data:`_READ_BUDGET` bytes are read per readiness callback, so a flooding
  sandbox gets its turn like every other one and cannot starve them;
- a frame being decoded is at most ``MAX_PAYLOAD`` + header (FrameDecoder);
- each channel queues at most :data:`_QUEUE_LIMIT` bytes, and exec and file-read output
  never more than the window the server granted;
- the write buffer to the agent is at most :data:`_BACKLOG_LIMIT` plus one frame for
  senders that wait, and :data:`_WBUF_LIMIT` in all;
- closed channels are remembered (to drop their late frames) only until the agent shows
  it has moved past their CLOSE, and never more than :data:`_CLOSED_REMEMBERED` of them.

An agent that breaks the protocol after the handshake (garbage or an oversized frame,
output past its window, an unknown frame on channel 0, a frame for a channel that was
never opened or long closed, a queue or write buffer past its bound) gets its link
closed, and ``on_protocol_error`` tells the owner, which stops the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..agent.protocol import (
    DEFAULT_WINDOW,
    SYNC_PREAMBLE,
    Frame,
    FrameDecoder,
    FrameType,
    encode,
    encode_json,
    encode_window,
    find_hello_ack,
)

__all__ = ["AGENT_REPLY_TIMEOUT", "AgentLink", "AgentLost", "AgentSilent", "Channel"]

log = logging.getLogger(__name__)

_READ_CHUNK = 256 * 1024
# Most bytes read from one agent per readiness callback; the loop then serves the others.
_READ_BUDGET = 256 * 1024
_BACKLOG_LIMIT = 4 * 1024 * 1024
# Input that cannot wait (grants, resizes, closes) on top of the backlog: past this the
# agent has stopped reading its channel while still being sent to.
_WBUF_LIMIT = _BACKLOG_LIMIT + 4 * 1024 * 1024
# Bytes one channel may hold queued for its reader. An honest agent stays far below: exec
# and file-read output are held to the window (256 KiB), other frames are answers read
# as they come, and a listing's parts are taken as fast as they arrive.
_QUEUE_LIMIT = 4 * 1024 * 1024
# What each queued frame costs besides its payload (the Frame and bytes objects).
_FRAME_COST = 128
# After the server closes a channel, what the agent may still have sent on it before it
# read the CLOSE: the unused window, plus these bytes of frames no window limits. A listing
# keeps up to about 2 MiB queued in the agent and the FIFO at any time; its parts are the
# only such frames of any size.
_LATE_SLACK = 64 * 1024
_LATE_SLACK_LIST = 8 * 1024 * 1024
_CLOSED_REMEMBERED = 16384
# ERROR frames on channel 0 logged before the agent counts as misbehaving: an honest one
# sends them only when the server sent garbage, which it never does.
_CONTROL_ERRORS = 16
_HANDSHAKE_TIMEOUT = 10.0
_HANDSHAKE_KEEP = 8 * 1024 * 1024

# Output frames counted against a channel's window, by the request that opened it.
_WINDOWED: dict[int, frozenset[int]] = {
    FrameType.EXEC: frozenset({FrameType.STDOUT, FrameType.STDERR}),
    FrameType.FILE_READ: frozenset({FrameType.DATA}),
    FrameType.FILE_WATCH: frozenset({FrameType.DATA}),
}


class AgentLost(Exception):
    """The agent stopped answering: its sandbox ended, or the channel broke."""


# How long the agent may take to answer a request it owes an answer to (a command started,
# a file operation's result, the next part of a file). Far above an honest agent's worst
# (tens of ms), and what a caller waits at most for an agent that code in its sandbox
# stopped (``kill -STOP 1``) or starved.
AGENT_REPLY_TIMEOUT = 30.0


class AgentSilent(Exception):
    """The agent did not answer in time; the link may still be alive."""


class Channel:
    """One exec or file operation on a link. Frames arrive in order on :meth:`recv`."""

    def __init__(self, link: AgentLink, number: int, serial: int) -> None:
        self.link = link
        self.number = number
        self.serial = serial  # the link's count of channels opened before this one
        # Unbounded as a queue, bounded by the link: _accept refuses past _QUEUE_LIMIT.
        self._frames: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._queued = 0  # bytes in _frames, with _FRAME_COST each
        self.finished = False  # the agent sent the channel's last frame
        self.kind = 0  # the request that opened it (FrameType), once sent
        # Output bytes the agent may still send (exec and file read), None: no window.
        self.credit: int | None = None
        self.agent_done = False  # the agent's last frame of this channel arrived

    def _deliver(self, frame: Frame | None) -> None:
        if frame is not None:
            self._queued += len(frame.payload) + _FRAME_COST
        self._frames.put_nowait(frame)

    async def recv(self) -> Frame:
        """The next frame; raises AgentLost if the link died first."""
        frame = await self._frames.get()
        if frame is None:
            self._frames.put_nowait(None)  # keep reporting to later calls
            raise AgentLost(self.link.lost_reason)
        self._queued -= len(frame.payload) + _FRAME_COST
        if frame.type in _LAST_FRAMES:
            self.finished = True
            self.link._forget(self.number)
        return frame

    def _note_request(self, ftype: int) -> None:
        # The first frame sent decides what the channel is, and so what its window covers.
        if not self.kind:
            self.kind = ftype
            if ftype in _WINDOWED:
                self.credit = DEFAULT_WINDOW

    async def send(self, ftype: int, payload: bytes = b"", *, timeout: float | None = None) -> None:
        """Send a frame, waiting while the link's backlog is full; past ``timeout`` (an
        agent that stopped reading) raise AgentSilent."""
        self._note_request(ftype)
        try:
            async with asyncio.timeout(timeout):
                await self.link._send(encode(ftype, self.number, payload))
        except TimeoutError:
            raise self._silent(timeout or 0.0) from None

    async def reply(self, timeout: float = AGENT_REPLY_TIMEOUT, *, strict: bool = False) -> Frame:
        """The next frame, one the agent owes promptly (not a command's output, which may
        take any time); AgentLost if the link died.

        AgentSilent once the agent has sent nothing at all, on any channel, for
        ``timeout``: an agent busy answering others (a thousand execs queued on it) is
        slow, not silent. ``strict``: past ``timeout`` from now, whatever the agent does.
        """
        started = time.monotonic()
        while True:
            if not self._frames.empty():
                return await self.recv()
            since = started if strict else max(started, self.link.heard_at)
            left = since + timeout - time.monotonic()
            if left <= 0 and not strict:
                # The event loop may have been too busy to read what the agent sent in
                # time: read it now, before calling the agent silent.
                self.link.read_pending()
                if not self._frames.empty():
                    continue
                left = max(started, self.link.heard_at) + timeout - time.monotonic()
            if left <= 0:
                raise self._silent(timeout)
            try:
                async with asyncio.timeout(left):
                    return await self.recv()
            except TimeoutError:
                continue

    def _silent(self, timeout: float) -> AgentSilent:
        return AgentSilent(
            f"the agent of sandbox {self.link.sandbox_id} did not answer within {timeout:g}s"
        )

    async def send_json(self, ftype: int, obj: Any) -> None:
        self._note_request(ftype)
        await self.link._send(encode_json(ftype, self.number, obj))

    def post_json(self, ftype: int, obj: Any) -> None:
        """Queue a small control frame without waiting (resize, from non-async code)."""
        if not self.finished:
            self.link._send_nowait(encode_json(ftype, self.number, obj))

    def grant(self, nbytes: int) -> None:
        """Let the agent send ``nbytes`` more output on this channel."""
        if not self.finished and not self.agent_done and nbytes > 0:
            if self.credit is not None:
                self.credit += nbytes
            self.link._send_nowait(encode_window(self.number, nbytes))

    def close(self, last: Frame | None = None) -> None:
        """Give the channel up: the agent kills its process group or drops its file work.

        The agent sends nothing more on a closed channel; ``last``, if given, is queued
        for :meth:`recv` in its place, so that a reader still waiting sees an end.
        """
        if not self.finished:
            self.finished = True
            self.link._forget(self.number)
            if not self.link.dead and not self.agent_done:
                self.link._closing(self)
                self.link._send_nowait(encode(FrameType.CLOSE, self.number))
            if last is not None:
                self._deliver(last)


_LAST_FRAMES = frozenset({FrameType.EXIT, FrameType.ERROR, FrameType.END, FrameType.RESULT})


class _Late:
    """A channel the server closed while the agent may still be sending on it."""

    __slots__ = ("allowance", "opened_after")

    def __init__(self, allowance: int, opened_after: int) -> None:
        self.allowance = allowance  # bytes of late frames still tolerated
        self.opened_after = opened_after  # channels with this serial or above came later


class AgentLink:
    """The multiplexed channel to one sandbox's agent."""

    def __init__(
        self,
        sandbox_id: str,
        in_fifo: Path,
        out_fifo: Path,
        *,
        on_entrypoint_exit: Callable[[int], None] | None = None,
        on_protocol_error: Callable[[str], None] | None = None,
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
        self._closed: OrderedDict[int, _Late] = OrderedDict()
        self._next = 1
        self._opened = 0
        self._control_errors = 0
        self._on_entrypoint_exit = on_entrypoint_exit
        self._on_protocol_error = on_protocol_error
        self._connected = False
        self.dead = False
        self.heard_at = time.monotonic()  # when the agent last sent anything at all
        self.closed = asyncio.Event()
        self.lost_reason = f"the agent of sandbox {sandbox_id} is not connected"
        # Why the agent's link was cut for breaking the protocol; None if it never was.
        self.violation: str | None = None
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
            if got.is_set():
                return
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
            elif len(pending) > _HANDSHAKE_KEEP:
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
        # From here on the agent must speak the protocol: everything before our
        # HELLO_ACK was an earlier session's and is allowed to be anything.
        self._connected = True
        self._feed(bytes(pending[ack_end:]))
        if self.dead:  # what followed the answer already broke the protocol
            raise AgentLost(self.lost_reason)
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
        self._closed.clear()
        self._wbuf.clear()
        self._drained.set()

    def _violation(self, why: str) -> None:
        """The agent broke the protocol: cut the link and tell the owner (once)."""
        if self.dead:
            return
        self.violation = why
        log.warning("agent of sandbox %s broke the protocol: %s", self.sandbox_id, why)
        self.close(f"the agent of sandbox {self.sandbox_id} broke the protocol: {why}")
        if self._on_protocol_error is not None:
            self._on_protocol_error(why)

    # ------------------------------------------------------------------ channels

    def open(self) -> Channel:
        if self.dead:
            raise AgentLost(self.lost_reason)
        number = self._next
        self._next = self._next + 1 if self._next < 0xFFFFFFFF else 1
        ch = Channel(self, number, self._opened)
        self._opened += 1
        self._channels[number] = ch
        return ch

    def _forget(self, number: int) -> None:
        self._channels.pop(number, None)

    def _closing(self, ch: Channel) -> None:
        """``ch`` is being closed by the server: tolerate what the agent sent meanwhile."""
        slack = _LATE_SLACK_LIST if ch.kind == FrameType.FILE_LIST else _LATE_SLACK
        self._closed.pop(ch.number, None)
        self._closed[ch.number] = _Late(max(ch.credit or 0, 0) + slack, self._opened)
        while len(self._closed) > _CLOSED_REMEMBERED:
            self._closed.popitem(last=False)

    @property
    def open_channels(self) -> int:
        return len(self._channels)

    # ------------------------------------------------------------------ reading

    def _read_available(self) -> bytes | None:
        """What the FIFO holds now, up to _READ_BUDGET; None once every writer is gone.

        Stops at the budget even if more is waiting: the loop calls again on its next
        turn, after the other sandboxes' links had theirs.
        """
        chunks: list[bytes] = []
        got = 0
        while got < _READ_BUDGET:
            try:
                data = os.read(self._out_fd, min(_READ_CHUNK, _READ_BUDGET - got))
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
            got += len(data)
            if len(data) < _READ_CHUNK:
                break
        return b"".join(chunks)

    def read_pending(self) -> None:
        """Take in what the agent has sent and the loop has not read yet (no waiting)."""
        if not self.dead and self._out_fd >= 0:
            self._on_readable()

    def _on_readable(self) -> None:
        data = self._read_available()
        if data is None:
            self.close(f"sandbox {self.sandbox_id} ended: its agent channel closed")
            return
        if data:
            self.heard_at = time.monotonic()
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        runs = self._decoder.garbage_runs
        frames = self._decoder.feed(data)
        if self._connected and self._decoder.garbage_runs != runs:
            # Bytes that are not a frame, or a header announcing more than MAX_PAYLOAD.
            self._violation(
                f"{self._decoder.garbage_bytes} bytes that are not a frame (or a frame "
                "larger than the protocol allows)"
            )
            return
        self._dispatch(frames)

    def _dispatch(self, frames: list[Frame]) -> None:
        for frame in frames:
            if self.dead:
                return
            if frame.channel == 0:
                self._control(frame)
                continue
            ch = self._channels.get(frame.channel)
            if ch is None:
                self._late(frame)
            else:
                self._accept(ch, frame)

    def _accept(self, ch: Channel, frame: Frame) -> None:
        size = len(frame.payload)
        if ch.credit is not None and frame.type in _WINDOWED.get(ch.kind, ()):
            ch.credit -= size
            if ch.credit < 0:
                self._violation(
                    f"{-ch.credit} bytes of output past the window of channel {ch.number}"
                )
                return
        if ch._queued + size + _FRAME_COST > _QUEUE_LIMIT:
            self._violation(
                f"more than {_QUEUE_LIMIT} bytes queued on channel {ch.number} "
                "(frames its reader does not take)"
            )
            return
        if self._closed:
            # A frame answering a request sent after a CLOSE shows that the agent has
            # read that CLOSE: nothing more can come for the channel it closed.
            while self._closed:
                number, late = next(iter(self._closed.items()))
                if late.opened_after > ch.serial:
                    break
                del self._closed[number]
        if frame.type in _LAST_FRAMES:
            # The agent forgets the channel now: anything more on it is a violation.
            ch.agent_done = True
            self._channels.pop(ch.number, None)
        ch._deliver(frame)

    def _late(self, frame: Frame) -> None:
        late = self._closed.get(frame.channel)
        if late is None:
            self._violation(f"a frame (type {frame.type}) for channel {frame.channel}, "
                            "which is not open")  # fmt: skip
            return
        late.allowance -= len(frame.payload) + _FRAME_COST
        if late.allowance < 0:
            self._violation(f"frames for channel {frame.channel} long after it was closed")
            return
        if frame.type in _LAST_FRAMES:
            del self._closed[frame.channel]

    def _control(self, frame: Frame) -> None:
        if frame.type == FrameType.ENTRYPOINT_EXIT:
            if self._on_entrypoint_exit is not None:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self._on_entrypoint_exit(int(frame.json()["exit_code"]))
        elif frame.type == FrameType.ERROR:
            self._control_errors += 1
            if self._control_errors > _CONTROL_ERRORS:
                self._violation(f"more than {_CONTROL_ERRORS} errors on channel 0")
                return
            log.warning("agent of %s reported: %r", self.sandbox_id, frame.payload[:200])
        else:
            # A second HELLO_ACK included: the server sent one HELLO.
            self._violation(f"a frame of type {frame.type} on channel 0")

    # ------------------------------------------------------------------ writing

    def _send_nowait(self, data: bytes) -> None:
        if self.dead:
            return
        if len(self._wbuf) + len(data) > _WBUF_LIMIT:
            # Only an agent that stopped reading its input lets this pile up.
            self._violation(f"it stopped reading: {len(self._wbuf)} bytes wait for it")
            return
        self._wbuf += data
        self._flush()

    async def _send(self, data: bytes) -> None:
        # Wait for room first: however many senders wait, the buffer holds at most the
        # backlog limit and one frame of theirs.
        while len(self._wbuf) >= _BACKLOG_LIMIT and not self.dead:
            self._drained.clear()
            await self._drained.wait()
        if self.dead:
            raise AgentLost(self.lost_reason)
        self._wbuf += data
        self._flush()
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
        if len(self._wbuf) < _BACKLOG_LIMIT:
            self._drained.set()

    def _on_writable(self) -> None:
        if not self.dead:
            self._flush()
