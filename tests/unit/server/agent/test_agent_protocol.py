"""The agent protocol codec: frames, padding, garbage, limits and the HELLO_ACK search."""

from __future__ import annotations

import json
import struct

import pytest

from stockade.server.agent.protocol import (
    DEFAULT_WINDOW,
    HEADER_SIZE,
    HELLO_MAGIC,
    MAX_PAYLOAD,
    SYNC_PREAMBLE,
    Frame,
    FrameDecoder,
    FrameType,
    decode_json,
    encode,
    encode_json,
    encode_window,
    find_hello_ack,
)

NONCE = bytes(range(16))


def _ack(nonce: bytes = NONCE, info: bytes = b'{"version":1,"pid":1}') -> bytes:
    return encode(FrameType.HELLO_ACK, 0, HELLO_MAGIC + nonce + info)


def test_constants() -> None:
    assert DEFAULT_WINDOW == 262144
    assert HELLO_MAGIC == b"STOCKADE-AGENT-1"
    assert len(SYNC_PREAMBLE) == MAX_PAYLOAD + 10 and not any(SYNC_PREAMBLE)
    assert [int(FrameType.CLOSE), int(FrameType.ENTRYPOINT_EXIT)] == [31, 30]


def test_encode_layout() -> None:
    frame = encode(FrameType.STDIN, 0x01020304, b"abc")
    assert frame == b"\xa5\x00\x00\x00\x03\x05\x01\x02\x03\x04abc"
    assert encode_window(7, 65536) == b"\xa5\x00\x00\x00\x04\x09\x00\x00\x00\x07\x00\x01\x00\x00"


def test_encode_limits() -> None:
    assert len(encode(FrameType.DATA, 1, bytes(MAX_PAYLOAD))) == MAX_PAYLOAD + HEADER_SIZE
    with pytest.raises(ValueError):
        encode(FrameType.DATA, 1, bytes(MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        encode(256, 1)
    with pytest.raises(ValueError):
        encode(FrameType.DATA, 2**32)


def test_round_trip() -> None:
    frames = [
        Frame(FrameType.EXEC, 1, b'{"argv":["true"]}'),
        Frame(FrameType.STDIN, 2, b""),
        Frame(FrameType.DATA, 0xFFFFFFFF, bytes(range(256)) * 10),
        Frame(200, 3, b"unknown types decode too"),
    ]
    stream = b"".join(encode(*f) for f in frames)
    dec = FrameDecoder()
    assert dec.feed(stream) == frames
    assert dec.buffered == 0 and dec.garbage_runs == 0


def test_split_feeds_byte_by_byte() -> None:
    frames = [Frame(FrameType.STDOUT, i, bytes([i]) * i) for i in range(1, 40)]
    stream = b"\x00\x00" + b"".join(encode(*f) for f in frames)
    dec = FrameDecoder()
    out: list[Frame] = []
    for i in range(len(stream)):
        out += dec.feed(stream[i : i + 1])
    assert out == frames
    assert dec.buffered == 0


def test_json_helpers_and_surrogateescape() -> None:
    name = b"caf\xc3\xa9-\xff\xfe".decode("utf-8", "surrogateescape")
    frame = encode_json(FrameType.FILE_STAT, 4, {"path": "/tmp/" + name})
    # ASCII on the wire: the raw bytes travel as \udcXX, which the agent decodes back.
    assert b"\\udcff\\udcfe" in frame and frame[HEADER_SIZE:].isascii()
    (decoded,) = FrameDecoder().feed(frame)
    assert decoded.json() == {"path": "/tmp/" + name}
    assert decode_json(b'{"name":"caf\xc3\xa9"}') == {"name": "café"}


def test_padding_is_skipped_silently() -> None:
    dec = FrameDecoder()
    frame = encode(FrameType.END, 9)
    assert dec.feed(bytes(5000) + frame + bytes(3) + frame) == [Frame(FrameType.END, 9, b"")] * 2
    assert dec.garbage_runs == 0 and dec.garbage_bytes == 0


def test_garbage_runs_are_counted_and_skipped() -> None:
    dec = FrameDecoder()
    frame = encode(FrameType.READY, 2)
    frames = dec.feed(b"junk" + frame + b"\x01\x02" + b"\x00" + b"\x03" + frame)
    assert frames == [Frame(FrameType.READY, 2, b"")] * 2
    # "junk" is one run; "\x01\x02" another; the padding byte ends it, "\x03" is a third.
    assert dec.garbage_runs == 3
    assert dec.garbage_bytes == 7


def test_oversized_length_is_garbage() -> None:
    dec = FrameDecoder()
    bogus = b"\xa5" + struct.pack(">I", MAX_PAYLOAD + 1) + b"\x15\x00\x00\x00\x01"
    frame = encode(FrameType.DATA, 1, b"ok")
    assert dec.feed(bogus + frame) == [Frame(FrameType.DATA, 1, b"ok")]
    # The start byte is skipped, then the rest of the bogus header byte by byte.
    assert dec.garbage_runs >= 1
    assert dec.buffered == 0


def test_oversized_length_decided_before_the_payload() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"\xa5" + struct.pack(">I", 0xFFFFFFFF)) == []
    # Not waiting for 4 GiB: the header was judged as soon as its length was known.
    assert dec.buffered < 10


def test_incomplete_frame_waits() -> None:
    dec = FrameDecoder()
    frame = encode(FrameType.STDOUT, 1, b"x" * 100)
    assert dec.feed(frame[:50]) == []
    assert dec.buffered == 50
    assert dec.feed(frame[50:]) == [Frame(FrameType.STDOUT, 1, b"x" * 100)]


def test_preamble_completes_a_half_frame() -> None:
    """A server died mid-frame; the next one's preamble resynchronises the stream."""
    dec = FrameDecoder()
    half = encode(FrameType.STDIN, 3, b"y" * 5000)[:1234]
    hello = encode(FrameType.HELLO, 0, NONCE)
    frames = dec.feed(half + SYNC_PREAMBLE + hello)
    assert frames[-1] == Frame(FrameType.HELLO, 0, NONCE)
    assert frames[0].channel == 3  # the cut frame, completed with zeros
    assert dec.buffered == 0


def test_preamble_completes_a_half_header() -> None:
    dec = FrameDecoder()
    hello = encode(FrameType.HELLO, 0, NONCE)
    for cut in range(1, HEADER_SIZE):
        frames = dec.feed(encode(FrameType.STDIN, 3, b"z" * 70000)[:cut] + SYNC_PREAMBLE + hello)
        assert frames[-1] == Frame(FrameType.HELLO, 0, NONCE), cut


def test_find_hello_ack_after_stale_bytes() -> None:
    stale = (
        encode(FrameType.STDOUT, 1, b"old output")
        + encode(FrameType.EXIT, 1, b'{"exit_code":0}')[:7]  # cut in half
        + _ack(nonce=b"\x01" * 16)  # the answer to an earlier server's HELLO
    )
    after = encode(FrameType.STARTED, 5, b'{"pid":3}')
    data = stale + _ack() + after
    found = find_hello_ack(data, NONCE)
    assert found is not None
    assert found.info == {"version": 1, "pid": 1}
    assert data[found.end :] == after
    assert FrameDecoder().feed(data[found.end :]) == [Frame(FrameType.STARTED, 5, b'{"pid":3}')]


def test_find_hello_ack_incomplete_and_absent() -> None:
    data = b"\x00garbage" + _ack()
    for cut in range(len(data)):
        assert find_hello_ack(data[:cut], NONCE) is None
    assert find_hello_ack(data, NONCE) is not None
    assert find_hello_ack(data, b"\x02" * 16) is None
    with pytest.raises(ValueError):
        find_hello_ack(data, b"short")


def test_find_hello_ack_needs_a_real_header() -> None:
    # The magic and nonce inside some other frame's payload are not an answer.
    inner = HELLO_MAGIC + NONCE + b'{"version":1,"pid":1}'
    decoy = encode(FrameType.STDOUT, 1, b"xxxxxxxxxxxx" + inner)
    assert find_hello_ack(decoy, NONCE) is None
    real = _ack()
    found = find_hello_ack(decoy + real, NONCE)
    assert found is not None and found.end == len(decoy + real)


def test_find_hello_ack_accepts_bytearray() -> None:
    buf = bytearray(b"\x00" * 3 + _ack(info=json.dumps({"version": 1, "pid": 42}).encode()))
    found = find_hello_ack(buf, NONCE)
    assert found is not None and found.info["pid"] == 42 and found.end == len(buf)
