"""The framed protocol between the server and ``stockade-agent`` (docs/agent-protocol.md).

Pure codec, no IO: :func:`encode` builds frames, :class:`FrameDecoder` splits a byte
stream into frames the same way the agent does (``0xA5`` start byte, zero padding,
garbage skipped, lengths above :data:`MAX_PAYLOAD` treated as garbage), and
:func:`find_hello_ack` finds the answer to a ``HELLO`` in a stream that may still hold
bytes of an earlier session.

Paths and names travel as JSON strings. Bytes that are not valid UTF-8 are written by the
agent as the lone surrogates ``\\udc80``–``\\udcff`` (Python's ``surrogateescape``), so
``name.encode("utf-8", "surrogateescape")`` gives the raw bytes back, and
``json.dumps`` of such a string sends them to the agent unchanged.
"""

from __future__ import annotations

import json
import re
import struct
from enum import IntEnum
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_WINDOW",
    "FRAME_START",
    "HEADER_SIZE",
    "HELLO_MAGIC",
    "MAX_PAYLOAD",
    "SYNC_PREAMBLE",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "HelloAck",
    "decode_json",
    "encode",
    "encode_json",
    "encode_window",
    "find_hello_ack",
]

FRAME_START = 0xA5
HEADER_SIZE = 10  # start byte, u32 length, u8 type, u32 channel
MAX_PAYLOAD = 1024 * 1024
DEFAULT_WINDOW = 262144
HELLO_MAGIC = b"STOCKADE-AGENT-1"
NONCE_SIZE = 16
# Completes any frame a dead server left half written (header and all), then pads.
SYNC_PREAMBLE = bytes(MAX_PAYLOAD + HEADER_SIZE)

_HEADER = struct.Struct(">BIBI")
_NOT_PADDING = re.compile(rb"[^\x00]")
_FRAME_OR_PADDING = re.compile(rb"[\x00\xa5]")


class FrameType(IntEnum):
    HELLO = 1
    HELLO_ACK = 2
    EXEC = 3
    STARTED = 4
    STDIN = 5
    STDIN_EOF = 6
    RESIZE = 7
    SIGNAL = 8
    WINDOW = 9
    STDOUT = 10
    STDERR = 11
    EXIT = 12
    ERROR = 15
    FILE_READ = 20
    DATA = 21
    END = 22
    FILE_WRITE = 23
    READY = 24
    RESULT = 25
    FILE_STAT = 26
    FILE_LIST = 27
    FILE_MKDIR = 28
    FILE_REMOVE = 29
    ENTRYPOINT_EXIT = 30
    CLOSE = 31
    FILE_RENAME = 32
    FILE_CHMOD = 33
    FILE_WATCH = 34


class Frame(NamedTuple):
    type: int  # a FrameType value, or an unknown type from a newer agent
    channel: int
    payload: bytes

    def json(self) -> Any:
        return decode_json(self.payload)


def encode(type: int, channel: int, payload: bytes = b"") -> bytes:
    """One frame. Raises ValueError for a payload above MAX_PAYLOAD or bad numbers."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if not 0 <= type <= 0xFF:
        raise ValueError(f"frame type {type} is not a byte")
    if not 0 <= channel <= 0xFFFFFFFF:
        raise ValueError(f"channel {channel} is not a u32")
    return _HEADER.pack(FRAME_START, len(payload), type, channel) + payload


def encode_json(type: int, channel: int, obj: Any) -> bytes:
    """A frame whose payload is ``obj`` as compact JSON (ASCII, surrogates escaped)."""
    return encode(type, channel, json.dumps(obj, separators=(",", ":")).encode("ascii"))


def encode_window(channel: int, grant: int) -> bytes:
    """WINDOW: allow ``grant`` more output bytes on ``channel``."""
    return encode(FrameType.WINDOW, channel, struct.pack(">I", grant))


def decode_json(payload: bytes) -> Any:
    """The JSON value of a payload; raises ValueError (and only that) when it is not JSON."""
    try:
        return json.loads(payload.decode("utf-8", "surrogateescape"))
    except RecursionError:
        # The payload comes from inside the sandbox: a few KiB of "[" exhaust json's
        # recursion limit. Callers catch ValueError for a bad payload, so that it is.
        raise ValueError("JSON nested too deeply") from None


class FrameDecoder:
    """Splits a byte stream into frames exactly as the agent does.

    At a frame boundary a ``0x00`` byte is padding; any other byte but ``0xA5`` is
    garbage, and so is an ``0xA5`` whose length field exceeds MAX_PAYLOAD (only that
    byte is skipped; the scan goes on at the next one). ``garbage_runs`` counts runs of
    skipped garbage (a frame or a padding byte ends a run; the agent reports one ERROR
    per run), ``garbage_bytes`` the bytes skipped.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_garbage = False
        self.garbage_runs = 0
        self.garbage_bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes held back: the start of a frame not complete yet."""
        return len(self._buf)

    def _skip_garbage(self, count: int = 1) -> None:
        if not self._in_garbage:
            self.garbage_runs += 1
        self._in_garbage = True
        self.garbage_bytes += count

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        p = 0
        n = len(buf)
        while p < n:
            b = buf[p]
            if b == 0:
                # Padding: skip the whole run at once (the preamble is 1 MiB of it).
                m = _NOT_PADDING.search(buf, p)
                p = m.start() if m else n
                self._in_garbage = False
                continue
            if b != FRAME_START:
                # Garbage up to the next byte that could start a frame or pad.
                m = _FRAME_OR_PADDING.search(buf, p)
                q = m.start() if m else n
                self._skip_garbage(q - p)
                p = q
                continue
            if n - p < 5:
                break
            length = int.from_bytes(buf[p + 1 : p + 5], "big")
            if length > MAX_PAYLOAD:
                self._skip_garbage()
                p += 1
                continue
            if n - p < HEADER_SIZE + length:
                break
            self._in_garbage = False
            ftype = buf[p + 5]
            channel = int.from_bytes(buf[p + 6 : p + 10], "big")
            body = bytes(buf[p + HEADER_SIZE : p + HEADER_SIZE + length])
            frames.append(Frame(ftype, channel, body))
            p += HEADER_SIZE + length
        del buf[:p]
        return frames


class HelloAck(NamedTuple):
    info: dict[str, Any]  # the JSON after magic and nonce: {"version": 1, "pid": 1}
    end: int  # offset just after the HELLO_ACK frame: frames of this session start here


def find_hello_ack(data: bytes | bytearray, nonce: bytes) -> HelloAck | None:
    """The HELLO_ACK answering ``nonce`` in ``data``, or None if it is not (all) there yet.

    Everything before it is left over from an earlier session (possibly a frame cut in
    half) and must be discarded; decoding of this session starts at ``end``.
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"the nonce must be {NONCE_SIZE} bytes")
    needle = HELLO_MAGIC + nonce
    start = 0
    while True:
        i = data.find(needle, start)
        if i < 0:
            return None
        h = i - HEADER_SIZE
        if h >= 0:
            mark, length, ftype, channel = _HEADER.unpack_from(data, h)
            if (
                mark == FRAME_START
                and ftype == FrameType.HELLO_ACK
                and channel == 0
                and len(needle) <= length <= MAX_PAYLOAD
            ):
                end = i + length
                if len(data) < end:
                    return None
                try:
                    info = json.loads(bytes(data[i + len(needle) : end]))
                except (ValueError, RecursionError):  # deep nesting: not an answer either
                    info = None
                if isinstance(info, dict):
                    return HelloAck(info, end)
        start = i + 1
