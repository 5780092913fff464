"""Property tests of the egress proxy's first-bytes parsers: the TLS SNI and the HTTP Host.

A sandbox's connection chooses every byte these parsers read, and the name they return is
matched against the domain allowlist and resolved: it must be a DNS name or nothing, and
anything else must come out as the documented exceptions, never as a crash of the proxy.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.server.network.egress import (
    IncompleteClientHello,
    MalformedClientHello,
    _inspect,
    http_request_host,
    parse_client_hello_sni,
)

# Deterministic for CI, no timing checks on a small, busy machine.
PROPS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


def is_dns_name(name: str) -> bool:
    """A name DNS can carry: at most 253 characters, labels of 1 to 63 (RFC 1035), in the
    lower-case letters, digits, '-' and '_' that the proxy accepts."""
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def check_name(name: str | None) -> None:
    assert name is None or is_dns_name(name), name


# -- building ClientHellos from their parts --------------------------------------------------

labels = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=63
)
host_names = (
    st.lists(labels, min_size=1, max_size=6)
    .map(".".join)
    .filter(lambda n: len(n) <= 253)
    .flatmap(lambda n: st.sampled_from([n, n + "."]))
)
# What a client may put in the host_name field: a name, or any bytes at all.
sni_values = st.one_of(
    host_names.map(str.encode),
    st.binary(max_size=80),
    st.tuples(host_names, st.sampled_from(["\n", "\r\n", "\x00", " ", "..", "/", "\u00e9"])).map(
        lambda t: (t[0] + t[1]).encode("utf-8")
    ),
    st.integers(64, 70).map(lambda n: b"a" * n + b".example.com"),
    st.integers(254, 300).map(lambda n: b"a." * (n // 2)),
)


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def sni_extension(entries: list[tuple[int, bytes]]) -> bytes:
    names = b"".join(bytes([kind]) + u16(len(v)) + v for kind, v in entries)
    return u16(len(names)) + names


@st.composite
def client_hellos(
    draw: st.DrawFn, sni: st.SearchStrategy[bytes] | None = None
) -> tuple[bytes, bytes | None]:
    """(the ClientHello's records, the host_name it carries or None)."""
    host = None if sni is None else draw(sni)
    others = draw(
        st.dictionaries(st.integers(1, 0xFFFF), st.binary(max_size=30), max_size=5),
        label="other extensions",
    )
    extensions = list(others.items())
    if host is not None:
        entries = [(0, host)]
        # Name types other than host_name (0) are skipped, wherever they stand.
        if draw(st.booleans(), label="other name type"):
            entries.insert(draw(st.integers(0, 1)), (draw(st.integers(1, 255)), b"x"))
        extensions.insert(draw(st.integers(0, len(extensions))), (0, sni_extension(entries)))
    session = draw(st.binary(max_size=32), label="session id")
    suites = draw(st.integers(1, 20), label="cipher suites")
    compressions = draw(st.integers(1, 3), label="compression methods")
    body = (
        bytes([3, draw(st.integers(0, 4))])
        + draw(st.binary(min_size=32, max_size=32))  # random
        + bytes([len(session)])
        + session
        + u16(2 * suites)
        + draw(st.binary(min_size=2 * suites, max_size=2 * suites))
        + bytes([compressions])
        + bytes(compressions)
    )
    empty_block = draw(st.booleans(), label="empty extension block")
    if extensions or empty_block:
        exts = b"".join(u16(t) + u16(len(d)) + d for t, d in extensions)
        body += u16(len(exts)) + exts
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    # Clients may split the handshake over several records.
    size = draw(st.integers(1, 16384))
    records = b"".join(
        bytes([22, 3, draw(st.integers(0, 4))]) + u16(len(chunk)) + chunk
        for chunk in (handshake[i : i + size] for i in range(0, len(handshake), size))
    )
    return records, host


@PROPS
@given(client_hellos(host_names.map(str.encode)))
def test_a_client_hello_gives_its_sni(hello: tuple[bytes, bytes | None]) -> None:
    records, host = hello
    assert host is not None
    assert parse_client_hello_sni(records) == host.decode().lower().rstrip(".")


@PROPS
@given(client_hellos())
def test_a_client_hello_without_sni_gives_none(hello: tuple[bytes, bytes | None]) -> None:
    assert parse_client_hello_sni(hello[0]) is None


@PROPS
@given(client_hellos(host_names.map(str.encode)), st.data())
def test_a_truncated_client_hello_asks_for_more(
    hello: tuple[bytes, bytes | None], data: st.DataObject
) -> None:
    records = hello[0]
    cut = data.draw(st.integers(0, len(records) - 1), label="cut")
    with pytest.raises(IncompleteClientHello):
        parse_client_hello_sni(records[:cut])


@PROPS
@given(client_hellos(sni_values))
def test_any_sni_value_gives_a_dns_name_or_is_refused(hello: tuple[bytes, bytes | None]) -> None:
    try:
        name = parse_client_hello_sni(hello[0])
    except MalformedClientHello:
        return
    check_name(name)


def mutated(records: bytes, data: st.DataObject) -> bytes:
    """``records`` with a few bytes changed, inserted or deleted: lengths that lie."""
    buf = bytearray(records)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        i = data.draw(st.integers(0, len(buf)), label="at")
        op = data.draw(st.sampled_from(["set", "insert", "delete"]), label="op")
        if op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        elif i < len(buf):
            if op == "set":
                buf[i] = data.draw(st.integers(0, 255))
            else:
                del buf[i]
    return bytes(buf)


first_bytes = st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=300).map(lambda b: b"\x16\x03\x01" + b),
)


@PROPS
@given(st.one_of(first_bytes.map(lambda b: (b, None)), client_hellos(sni_values)), st.data())
def test_parse_client_hello_sni_on_any_bytes(
    hello: tuple[bytes, bytes | None], data: st.DataObject
) -> None:
    records = hello[0]
    if data.draw(st.booleans(), label="mutate"):
        records = mutated(records, data)
    try:
        name = parse_client_hello_sni(records)
    except (IncompleteClientHello, MalformedClientHello):
        return
    check_name(name)


# -- HTTP request heads -----------------------------------------------------------------------

ports = st.one_of(st.none(), st.integers(0, 65535))


def authority(name: str, port: int | None) -> str:
    return name if port is None else f"{name}:{port}"


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """(a well-formed request head, the host it is for)."""
    name = draw(host_names)
    expected: str | None = name.lower().rstrip(".")
    form = draw(st.sampled_from(["origin", "absolute", "connect", "http10"]))
    host_header = True
    if form == "origin":
        method = draw(st.sampled_from(["GET", "POST", "HEAD"]))
        line = f"{method} /{draw(st.text('abc/?=&', max_size=10))} HTTP/1.1"
    elif form == "absolute":
        line = f"GET http://{authority(name, draw(ports))}/x HTTP/1.1"
        host_header = draw(st.booleans())
    elif form == "connect":
        line = f"CONNECT {authority(name, draw(ports))} HTTP/1.1"
        host_header = draw(st.booleans())
    else:
        line = "GET / HTTP/1.0"
        host_header = draw(st.booleans())
        if not host_header:
            expected = None
    headers = [
        f"X-{i}: {v}" for i, v in enumerate(draw(st.lists(st.text("ab c", max_size=5), max_size=3)))
    ]
    if host_header:
        headers.insert(
            draw(st.integers(0, len(headers))),
            f"{draw(st.sampled_from(['Host', 'host', 'HOST']))}:"
            f"{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{authority(name, draw(ports))}",
        )
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    return eol.join([line, *headers]).encode("latin-1") + eol.encode(), expected


@PROPS
@given(requests())
def test_a_request_gives_its_host(request: tuple[bytes, str | None]) -> None:
    head, expected = request
    assert http_request_host(head) == expected


header_values = st.one_of(
    host_names,
    st.text(st.characters(max_codepoint=255), max_size=40),
    st.tuples(host_names, st.sampled_from(["\r", "\x00", "\x0b", "..", ":x", ":1:2", "@a"])).map(
        "".join
    ),
)


@PROPS
@given(
    st.one_of(
        st.binary(max_size=400),
        st.tuples(
            st.sampled_from(["GET / HTTP/1.1", "CONNECT ", "GET http://", "GET / HTTP/1.0"]),
            st.text(st.characters(max_codepoint=255), max_size=30),
            st.lists(st.tuples(st.sampled_from(["Host", "host", " Host", "X"]), header_values)),
        ).map(
            lambda t: (
                t[0] + t[1] + " HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in t[2])
            ).encode("latin-1")
        ),
    )
)
def test_http_request_host_on_any_bytes(head: bytes) -> None:
    try:
        name = http_request_host(head)
    except ValueError:
        return
    check_name(name)


@PROPS
@given(
    st.one_of(
        first_bytes,
        client_hellos(sni_values).map(lambda h: h[0]),
        requests().map(lambda r: r[0] + b"\r\n"),
    ),
    st.data(),
)
def test_inspect_classifies_any_first_bytes(first: bytes, data: st.DataObject) -> None:
    """What the proxy itself calls: never raises, and always decides once the wait is over."""
    first = first[: data.draw(st.integers(0, len(first)), label="received")]
    for final in (False, True):
        opening = _inspect(first, final)
        if opening is None:
            assert not final
            continue
        assert opening.protocol in ("tls", "http", "other")
        assert opening.name is None or opening.error is None
        check_name(opening.name)
