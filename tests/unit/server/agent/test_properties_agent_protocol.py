"""Property tests of the agent protocol codec: every byte of it comes from inside a sandbox.

A sandbox can write anything to its agent's channel, so the decoder, the JSON helper and the
HELLO_ACK search must take any bytes in any chunking without raising anything undocumented,
without inventing frames and without holding more than one frame's worth of memory.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.server.agent.protocol import (
    HEADER_SIZE,
    HELLO_MAGIC,
    MAX_PAYLOAD,
    SYNC_PREAMBLE,
    Frame,
    FrameDecoder,
    FrameType,
    HelloAck,
    decode_json,
    encode,
    encode_json,
    find_hello_ack,
)

# Deterministic for CI; no timing checks (deadline=None) on a small, busy machine. Some
# examples are megabyte streams on purpose (a whole MAX_PAYLOAD frame, SYNC_PREAMBLE), which
# the too_slow and data_too_large checks would flag.
PROPS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HEAVY = settings(PROPS, max_examples=40)
STREAMS = settings(PROPS, max_examples=200)

# The most a decoder may hold between feeds: a frame header and payload, less one byte.
MAX_BUFFERED = HEADER_SIZE + MAX_PAYLOAD - 1

payloads = st.one_of(
    st.binary(max_size=200),
    # Payloads full of what looks like frame starts and padding: the decoder must not look
    # inside a frame it has the length of.
    st.lists(st.sampled_from([b"\xa5", b"\x00", b"\xa5\x00\x00\x00\x01"]), max_size=40).map(
        b"".join
    ),
    # Rarely, the largest payload allowed.
    st.integers(MAX_PAYLOAD - 3, MAX_PAYLOAD).map(lambda n: b"\xa5" * n),
)
frames = st.builds(Frame, st.integers(0, 255), st.integers(0, 2**32 - 1), payloads)


def chunked(data: st.DataObject, stream: bytes) -> list[bytes]:
    """``stream`` cut at points that hypothesis picks (empty chunks included)."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
        assert 0 <= decoder.buffered <= MAX_BUFFERED
    return out


# Streams that are mostly not frames: garbage, headers with lengths on both sides of the
# limit, padding, real frames, and the long runs of one byte that a pending frame swallows.
hostile_tokens = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.sampled_from([b"\xa5", b"\x00", b"\x00" * 9, b"\xa5\xff\xff\xff\xff"]),
    st.integers(0, 2**32 - 1).map(lambda n: b"\xa5" + struct.pack(">I", n)),
    st.integers(MAX_PAYLOAD - 2, MAX_PAYLOAD + 2).map(lambda n: b"\xa5" + struct.pack(">I", n)),
    frames.map(lambda f: encode(*f)),
    st.integers(0, MAX_PAYLOAD + HEADER_SIZE).map(lambda n: b"\x5a" * n),
)
hostile_streams = st.one_of(
    st.binary(max_size=2000),
    st.lists(hostile_tokens, max_size=12).map(b"".join),
)


@PROPS
@given(st.lists(st.tuples(st.integers(0, 12), frames), max_size=8), st.data())
def test_frames_decode_the_same_in_any_chunking(
    items: list[tuple[int, Frame]], data: st.DataObject
) -> None:
    stream = b"".join(bytes(padding) + encode(*frame) for padding, frame in items)
    decoder = FrameDecoder()
    assert feed_all(decoder, chunked(data, stream)) == [frame for _, frame in items]
    assert decoder.buffered == 0
    assert (decoder.garbage_runs, decoder.garbage_bytes) == (0, 0)


@STREAMS
@given(hostile_streams, st.data())
def test_any_bytes_decode_the_same_in_any_chunking_and_stay_bounded(
    stream: bytes, data: st.DataObject
) -> None:
    whole = FrameDecoder()
    expected = whole.feed(stream)
    assert 0 <= whole.buffered <= MAX_BUFFERED
    pieces = FrameDecoder()
    assert feed_all(pieces, chunked(data, stream)) == expected
    # What counts as garbage does not depend on how the bytes arrived either: the agent
    # reports the same errors however the kernel split the stream.
    assert (pieces.garbage_runs, pieces.garbage_bytes, pieces.buffered) == (
        whole.garbage_runs,
        whole.garbage_bytes,
        whole.buffered,
    )
    for frame in expected:
        assert 0 <= frame.type <= 0xFF and 0 <= frame.channel <= 0xFFFFFFFF
        assert len(frame.payload) <= MAX_PAYLOAD
        assert encode(*frame) in stream  # the decoder invents no frame
    decoded = sum(HEADER_SIZE + len(f.payload) for f in expected)
    padding = stream.count(0)  # an upper bound: zeros inside frames are counted too
    assert decoded + whole.garbage_bytes + whole.buffered <= len(stream)
    assert len(stream) - decoded - whole.garbage_bytes - whole.buffered <= padding


@HEAVY
@given(st.binary(max_size=300), st.lists(frames, max_size=3), st.data())
def test_the_sync_preamble_ends_any_half_written_frame(
    leftover: bytes, after: list[Frame], data: st.DataObject
) -> None:
    """Whatever a dead server left on the channel, the preamble gets the next frames through."""
    # The worst leftover: a header that announces a whole MAX_PAYLOAD frame.
    if data.draw(st.booleans(), label="worst case"):
        leftover += b"\xa5" + struct.pack(">I", MAX_PAYLOAD) + b"\x01\x00\x00\x00\x00"
    stream = leftover + SYNC_PREAMBLE + b"".join(encode(*f) for f in after)
    decoder = FrameDecoder()
    out = feed_all(decoder, chunked(data, stream))
    assert out[len(out) - len(after) :] == after
    assert decoder.buffered == 0


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    # Lone surrogates are how the agent writes bytes that are not UTF-8.
    | st.lists(st.text(max_size=8) | st.sampled_from(["\udc80", "\udcff", "\udce9"])).map("".join),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)

# Bytes that are almost JSON: truncations, deep nesting (a hostile agent's cheapest attack
# on a recursive parser), invalid UTF-8 and plain garbage.
nested = st.tuples(st.integers(1, 100_000), st.sampled_from([b"[", b'{"a":', b"[[{"])).map(
    lambda t: t[1] * t[0]
)
json_ish = st.one_of(
    st.binary(max_size=200),
    nested,
    st.tuples(nested, st.booleans()).map(lambda t: t[0] + (b"1" if t[1] else b"")),
    json_values.map(lambda v: json.dumps(v).encode()).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda n: b[:n])
    ),
)


@PROPS
@given(json_ish)
def test_decode_json_raises_only_value_error(payload: bytes) -> None:
    """Callers (files, execs, the link's ENTRYPOINT_EXIT) catch ValueError and nothing else."""
    with contextlib.suppress(ValueError):
        decode_json(payload)


@PROPS
@given(st.integers(0, 255), st.integers(0, 2**32 - 1), json_values)
def test_json_frames_round_trip(ftype: int, channel: int, value: Any) -> None:
    decoded = FrameDecoder().feed(encode_json(ftype, channel, value))
    assert [(f.type, f.channel) for f in decoded] == [(ftype, channel)]
    assert decoded[0].json() == value


# A JSON string the agent writes for a raw name: any bytes but the ones JSON must escape.
raw_names = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c not in b'"\\')
)


@PROPS
@given(raw_names)
def test_raw_bytes_in_json_strings_come_back_with_surrogateescape(name: bytes) -> None:
    assert decode_json(b'"' + name + b'"').encode("utf-8", "surrogateescape") == name


ack_info = st.one_of(
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3).map(
        lambda d: json.dumps(d).encode()
    ),
    json_ish,
)


def _ack(nonce: bytes, info: bytes) -> bytes:
    return encode(FrameType.HELLO_ACK, 0, HELLO_MAGIC + nonce + info)


@PROPS
@given(
    st.binary(max_size=300),
    st.binary(min_size=16, max_size=16),
    ack_info,
    st.binary(max_size=100),
)
def test_find_hello_ack_after_any_leftover(
    leftover: bytes, nonce: bytes, info: bytes, after: bytes
) -> None:
    ack = _ack(nonce, info)
    stream = leftover + ack + after
    try:
        parsed = json.loads(info)
    except (ValueError, RecursionError):
        parsed = None
    found = find_hello_ack(stream, nonce)
    if isinstance(parsed, dict):
        assert found == HelloAck(parsed, len(leftover) + len(ack))
    else:
        assert found is None  # an answer whose JSON is no object is no answer
    # Until the whole HELLO_ACK is in, there is nothing to find.
    for cut in range(len(leftover), len(leftover) + len(ack), max(7, len(ack) // 40)):
        assert find_hello_ack(stream[:cut], nonce) is None


@PROPS
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.just(HELLO_MAGIC + bytes(16)),
            st.tuples(st.integers(0, MAX_PAYLOAD + 1), ack_info).map(
                lambda t: (
                    b"\xa5"
                    + struct.pack(">IBI", t[0], FrameType.HELLO_ACK, 0)
                    + HELLO_MAGIC
                    + bytes(16)
                    + t[1]
                )
            ),
        ),
        max_size=6,
    ).map(b"".join)
)
def test_find_hello_ack_on_any_bytes(stream: bytes) -> None:
    found = find_hello_ack(stream, bytes(16))
    if found is not None:
        assert isinstance(found.info, dict)
        assert len(HELLO_MAGIC) + 16 <= found.end <= len(stream)
