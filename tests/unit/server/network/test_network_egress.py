"""The egress proxy and its parsers, against real servers on loopback.

Nothing is DNATed on loopback, so each proxy gets ``original_destination`` returning the
test server's address, and ``allow_private_destinations=True`` (except where a test checks
that rule) because that server is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from stockade.server.network.egress import (
    AnswerLog,
    EgressProxy,
    IncompleteClientHello,
    MalformedClientHello,
    PolicyLookup,
    Resolve,
    http_request_host,
    parse_client_hello_sni,
    so_original_dst,
    upstream_resolver,
)
from stockade.server.network.policy import NetworkPolicy

SANDBOX = "127.0.0.1"
REQUEST = b"GET / HTTP/1.1\r\nHost: allowed.test\r\nAccept: */*\r\n\r\n"
BANNER = b"220 upstream ready\r\n"
OPENSSL_SELF_SIGNED = [
    "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
    "-nodes", "-days", "1", "-subj", "/CN=allowed.test",
    "-addext", "subjectAltName=DNS:allowed.test,DNS:evil.test",
]  # fmt: skip
ALLOWLIST = NetworkPolicy.parse(outbound_domain_allowlist=["allowed.test", "*.allowed.test"])


# -- servers on loopback ------------------------------------------------------------------


Handler = Callable[["Server", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    handler: Handler
    port: int = 0
    connections: int = 0
    received: list[bytes] = field(default_factory=list)
    received_some: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        try:
            await self.handler(self, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def echo(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then say so: the reply proves the EOF got through while we could
    still send."""
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    writer.write(b"<eof>")
    await writer.drain()


async def banner(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A server-first protocol (SMTP-like): greet, then echo."""
    writer.write(BANNER)
    await writer.drain()
    await echo(server, reader, writer)


async def closes_first(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer the request head and half-close at once, then keep reading to EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    writer.write(b"server-done")
    writer.write_eof()
    server.received.append(head + await reader.read())
    server.received_some.set()


async def line_echo(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(await reader.readline())
    await writer.drain()


@contextlib.asynccontextmanager
async def serving(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=tls)
    server.port = int(listener.sockets[0].getsockname()[1])
    try:
        yield server
    finally:
        listener.close()
        for task in list(server.tasks):
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
        await listener.wait_closed()


def resolving(table: dict[str, set[str]]) -> Resolve:
    async def resolve(name: str) -> set[str]:
        return set(table.get(name, set()))

    return resolve


@contextlib.asynccontextmanager
async def running_proxy(
    policy: NetworkPolicy | None,
    destination: tuple[str, int] | Callable[[socket.socket], tuple[str, int]],
    *,
    resolve: Resolve | None = None,
    answers: AnswerLog | None = None,
    lookup: PolicyLookup | None = None,
    allow_private: bool = True,
    **options: Any,
) -> AsyncIterator[EgressProxy]:
    original = destination if callable(destination) else (lambda sock: destination)
    options.setdefault("first_bytes_wait", 0.5)
    proxy = EgressProxy(
        lookup or {SANDBOX: policy}.get if policy is not None else (lambda ip: None),
        answers or AnswerLog(),
        resolve or resolving({}),
        original_destination=original,
        allow_private_destinations=allow_private,
        **options,
    )
    await proxy.start("127.0.0.1", 0)
    try:
        yield proxy
    finally:
        await proxy.close()


async def exchange(port: int, data: bytes, *, eof: bool = True) -> bytes:
    """Send ``data`` (then EOF) through the proxy; everything that comes back until EOF.

    A reset counts as closed: the proxy closes refused connections with bytes unread.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [*OPENSSL_SELF_SIGNED, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certificate)
    return ctx


@pytest.fixture
def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


# -- HTTP ---------------------------------------------------------------------------------


async def test_allowed_host_passes_and_the_reply_comes_back() -> None:
    async with (
        serving(echo) as server,
        running_proxy(
            ALLOWLIST, server.address, resolve=resolving({"allowed.test": {"127.0.0.1"}})
        ) as proxy,
    ):
        assert await exchange(proxy.port, REQUEST) == REQUEST + b"<eof>"
        assert server.connections == 1


async def test_request_split_over_several_writes_is_reassembled() -> None:
    async with (
        serving(echo) as server,
        running_proxy(
            ALLOWLIST, server.address, resolve=resolving({"api.allowed.test": {"127.0.0.1"}})
        ) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        request = b"POST /x HTTP/1.1\r\nHost: API.allowed.test:8443\r\nContent-Length: 2\r\n\r\nhi"
        for i in range(0, len(request), 7):
            writer.write(request[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write_eof()
        async with asyncio.timeout(5):
            assert await reader.read() == request + b"<eof>"
        writer.close()
        await writer.wait_closed()


async def test_disallowed_host_gets_403_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stockade.server.network.egress")
    async with (
        serving(echo) as server,
        running_proxy(
            ALLOWLIST, server.address, resolve=resolving({"evil.test": {"127.0.0.1"}})
        ) as proxy,
    ):
        reply = await exchange(proxy.port, REQUEST.replace(b"allowed.test", b"evil.test"))
        assert reply.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert b"evil.test" in reply
        assert b"outbound_domain_allowlist" in reply
        assert server.connections == 0
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals
    assert "127.0.0.1" in refusals[0]
    assert "evil.test" in refusals[0]


async def test_host_must_resolve_to_the_destination() -> None:
    answers = AnswerLog()
    async with (
        serving(echo) as server,
        running_proxy(
            ALLOWLIST,
            server.address,
            resolve=resolving({"allowed.test": {"198.51.100.10"}}),
            answers=answers,
        ) as proxy,
    ):
        reply = await exchange(proxy.port, REQUEST)
        assert reply.startswith(b"HTTP/1.1 403")
        assert b"does not resolve to 127.0.0.1" in reply
        assert server.connections == 0

        # Our DNS handed this sandbox 127.0.0.1 for the name: that is good enough.
        answers.record(SANDBOX, ["allowed.test"], "127.0.0.1", 60)
        assert await exchange(proxy.port, REQUEST) == REQUEST + b"<eof>"


@pytest.mark.parametrize(
    ("request_head", "allowed"),
    [
        (b"GET http://allowed.test:8080/x HTTP/1.1\r\nHost: allowed.test:8080\r\n\r\n", True),
        (b"GET http://allowed.test/ HTTP/1.0\r\n\r\n", True),
        (b"GET http://evil.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: allowed.test\r\nHost: evil.test\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: allowed.test\r\n evil.test\r\n\r\n", False),
    ],
)
async def test_absolute_form_and_ambiguous_requests(request_head: bytes, allowed: bool) -> None:
    async with (
        serving(echo) as server,
        running_proxy(
            ALLOWLIST,
            server.address,
            resolve=resolving({"allowed.test": {"127.0.0.1"}, "evil.test": {"127.0.0.1"}}),
        ) as proxy,
    ):
        reply = await exchange(proxy.port, request_head)
        assert (reply == request_head + b"<eof>") is allowed
        assert reply.startswith(b"HTTP/1.1 403") is not allowed


async def test_private_destination_is_refused_unless_cidr_listed() -> None:
    resolve = resolving({"allowed.test": {"127.0.0.1"}})
    async with (
        serving(banner) as server,
        running_proxy(ALLOWLIST, server.address, resolve=resolve, allow_private=False) as proxy,
    ):
        reply = await exchange(proxy.port, REQUEST)
        assert reply.startswith(b"HTTP/1.1 403")
        assert b"not a public address" in reply
        assert server.connections == 0

    policy = NetworkPolicy.parse(
        outbound_domain_allowlist=["allowed.test"], outbound_cidr_allowlist=["127.0.0.0/8"]
    )
    async with (
        serving(banner) as server,
        # A long wait for first bytes: CIDR-listed destinations must not wait for them.
        running_proxy(policy, server.address, allow_private=False, first_bytes_wait=4) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        async with asyncio.timeout(2):
            assert await reader.readexactly(len(BANNER)) == BANNER
        writer.close()
        await writer.wait_closed()


async def test_failed_upstream_connect_gives_502() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed = ("127.0.0.1", int(unused.getsockname()[1]))
    async with running_proxy(
        ALLOWLIST, closed, resolve=resolving({"allowed.test": {"127.0.0.1"}})
    ) as proxy:
        assert (await exchange(proxy.port, REQUEST)).startswith(b"HTTP/1.1 502")


async def test_resolver_errors_refuse_without_breaking_the_proxy() -> None:
    async def broken(name: str) -> set[str]:
        raise RuntimeError("resolver exploded")

    async with (
        serving(echo) as server,
        running_proxy(ALLOWLIST, server.address, resolve=broken) as proxy,
    ):
        for _ in range(2):
            assert (await exchange(proxy.port, REQUEST)).startswith(b"HTTP/1.1 403")


# -- TLS ----------------------------------------------------------------------------------


async def tls_round_trip(port: int, ctx: ssl.SSLContext, server_hostname: str) -> bytes:
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname
        )
        try:
            writer.write(b"ping over tls\n")
            return await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def test_tls_with_allowed_sni_passes(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async with (
        serving(line_echo, server_tls) as server,
        running_proxy(
            ALLOWLIST, server.address, resolve=resolving({"allowed.test": {"127.0.0.1"}})
        ) as proxy,
    ):
        assert await tls_round_trip(proxy.port, client_tls, "allowed.test") == b"ping over tls\n"


@pytest.mark.parametrize(
    ("sni", "addresses"),
    [
        ("evil.test", {"evil.test": {"127.0.0.1"}}),  # a name not in the allowlist
        ("allowed.test", {"allowed.test": {"198.51.100.10"}}),  # allowed, elsewhere
    ],
)
async def test_tls_is_refused_for_fake_or_misdirected_sni(
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    sni: str,
    addresses: dict[str, set[str]],
) -> None:
    async with (
        serving(line_echo, server_tls) as server,
        running_proxy(ALLOWLIST, server.address, resolve=resolving(addresses)) as proxy,
    ):
        with pytest.raises((OSError, EOFError)):
            await tls_round_trip(proxy.port, client_tls, sni)
        assert server.connections == 0


async def test_garbage_that_looks_like_tls_is_refused() -> None:
    answers = AnswerLog()
    answers.record(SANDBOX, ["allowed.test"], "127.0.0.1", 60)
    async with (
        serving(echo) as server,
        running_proxy(ALLOWLIST, server.address, answers=answers) as proxy,
    ):
        # Even to an address resolved for an allowed name: a malformed hello is refused.
        assert await exchange(proxy.port, b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00") == b""
        assert server.connections == 0


# -- connections that name no host --------------------------------------------------------


@pytest.mark.parametrize(
    ("logged", "allowed"),
    [(["allowed.test"], True), ([], False), (["other.test"], False)],
)
async def test_silent_client_needs_an_answer_for_an_allowed_name(
    logged: list[str], allowed: bool
) -> None:
    answers = AnswerLog()
    if logged:
        answers.record(SANDBOX, logged, "127.0.0.1", 60)
    async with (
        serving(banner) as server,
        running_proxy(ALLOWLIST, server.address, answers=answers, first_bytes_wait=0.3) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        async with asyncio.timeout(3):
            greeting = await reader.read(len(BANNER))
        assert (greeting == BANNER) is allowed
        assert (server.connections == 1) is allowed
        writer.close()
        await writer.wait_closed()


async def test_unknown_protocol_is_judged_at_once_by_the_answer_log() -> None:
    answers = AnswerLog()
    answers.record(SANDBOX, ["www.allowed.test", "cdn.example"], "127.0.0.1", 60)
    async with (
        serving(banner) as server,
        running_proxy(ALLOWLIST, server.address, answers=answers, first_bytes_wait=4) as proxy,
    ):
        started = time.monotonic()
        reply = await exchange(proxy.port, b"SSH-2.0-OpenSSH_9.2\r\n")
        assert reply == BANNER + b"SSH-2.0-OpenSSH_9.2\r\n<eof>"
        assert time.monotonic() - started < 2


async def test_answer_log_is_per_sandbox() -> None:
    answers = AnswerLog()
    answers.record("10.213.0.9", ["allowed.test"], "127.0.0.1", 60)
    async with (
        serving(banner) as server,
        running_proxy(ALLOWLIST, server.address, answers=answers) as proxy,
    ):
        assert await exchange(proxy.port, b"SSH-2.0-x\r\n") == b""


# -- relaying -----------------------------------------------------------------------------


async def test_large_transfer_both_ways_is_intact() -> None:
    payload = random.Random(7).randbytes(6 * 1024 * 1024)
    async with (
        serving(echo) as server,
        running_proxy(
            ALLOWLIST, server.address, resolve=resolving({"allowed.test": {"127.0.0.1"}})
        ) as proxy,
    ):
        reply = await exchange(proxy.port, REQUEST + payload)
        assert len(reply) == len(REQUEST) + len(payload) + len(b"<eof>")
        digest = hashlib.sha256(REQUEST + payload + b"<eof>").digest()
        assert hashlib.sha256(reply).digest() == digest


async def test_upstream_half_close_leaves_the_client_able_to_send() -> None:
    async with (
        serving(closes_first) as server,
        running_proxy(
            ALLOWLIST, server.address, resolve=resolving({"allowed.test": {"127.0.0.1"}})
        ) as proxy,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(REQUEST)
        async with asyncio.timeout(5):
            assert await reader.read() == b"server-done"  # then EOF from the server
            writer.write(b"sent after the server's EOF")
            writer.write_eof()
            await server.received_some.wait()
        assert server.received == [REQUEST + b"sent after the server's EOF"]
        writer.close()
        await writer.wait_closed()


async def test_close_ends_relayed_connections() -> None:
    async with serving(echo) as server:
        proxy_cm = running_proxy(
            ALLOWLIST, server.address, resolve=resolving({"allowed.test": {"127.0.0.1"}})
        )
        proxy = await proxy_cm.__aenter__()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(REQUEST)
            async with asyncio.timeout(5):
                assert await reader.readexactly(len(REQUEST)) == REQUEST
                await proxy.close()
                assert await reader.read() == b""
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        finally:
            await proxy_cm.__aexit__(None, None, None)


# -- connections the proxy will not look at -----------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        None,
        NetworkPolicy(),
        NetworkPolicy(block_network=True),
        NetworkPolicy.parse(outbound_cidr_allowlist=["127.0.0.0/8"]),
    ],
)
async def test_sources_without_a_domain_allowlist_are_closed_at_once(
    policy: NetworkPolicy | None,
) -> None:
    async with (
        serving(echo) as server,
        running_proxy(policy, server.address, first_bytes_wait=4) as proxy,
    ):
        started = time.monotonic()
        assert await exchange(proxy.port, REQUEST, eof=False) == b""
        assert time.monotonic() - started < 2
        assert server.connections == 0


async def test_connection_to_the_proxy_itself_is_refused() -> None:
    answers = AnswerLog()
    answers.record(SANDBOX, ["allowed.test"], "127.0.0.1", 60)

    def not_dnated(sock: socket.socket) -> tuple[str, int]:
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    async with running_proxy(ALLOWLIST, not_dnated, answers=answers) as proxy:
        assert await exchange(proxy.port, b"SSH-2.0-x\r\n") == b""


async def test_connections_beyond_the_limit_are_closed() -> None:
    answers = AnswerLog()
    answers.record(SANDBOX, ["allowed.test"], "127.0.0.1", 60)
    async with (
        serving(banner) as server,
        running_proxy(
            ALLOWLIST, server.address, answers=answers, max_connections=1, first_bytes_wait=0.2
        ) as proxy,
    ):
        first_reader, first_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        async with asyncio.timeout(3):
            assert await first_reader.readexactly(len(BANNER)) == BANNER
            assert await exchange(proxy.port, b"SSH-2.0-x\r\n") == b""
        first_writer.close()
        await first_writer.wait_closed()


# -- AnswerLog, so_original_dst, upstream_resolver ---------------------------------------


def test_answer_log_expires_forgets_and_stays_bounded() -> None:
    now = [100.0]
    log = AnswerLog(max_per_sandbox=3, clock=lambda: now[0])
    log.record("10.0.0.2", ["A.example.", "b.example"], "1.1.1.1", 30)
    assert log.names_for("10.0.0.2", "1.1.1.1") == {"a.example", "b.example"}
    assert log.names_for("10.0.0.3", "1.1.1.1") == set()
    assert log.names_for("10.0.0.2", "2.2.2.2") == set()

    # A shorter re-answer does not cut short what the client may still have cached.
    log.record("10.0.0.2", ["a.example"], "1.1.1.1", 5)
    now[0] += 20
    assert log.names_for("10.0.0.2", "1.1.1.1") == {"a.example", "b.example"}
    now[0] += 11
    assert log.names_for("10.0.0.2", "1.1.1.1") == set()

    for i in range(5):
        log.record("10.0.0.2", [f"n{i}.example"], f"9.9.9.{i}", 60)
    assert log.names_for("10.0.0.2", "9.9.9.0") == set()  # the oldest went
    assert log.names_for("10.0.0.2", "9.9.9.4") == {"n4.example"}

    log.forget("10.0.0.2")
    assert log.names_for("10.0.0.2", "9.9.9.4") == set()


def test_so_original_dst_unpacks_sockaddr_in() -> None:
    class FakeSocket:
        def getsockopt(self, level: int, option: int, size: int) -> bytes:
            assert (level, option, size) == (socket.SOL_IP, 80, 16)
            family = struct.pack("=H", socket.AF_INET)
            return family + struct.pack("!H4s", 8443, socket.inet_aton("203.0.113.7")) + bytes(8)

    assert so_original_dst(cast(socket.socket, FakeSocket())) == ("203.0.113.7", 8443)


def test_so_original_dst_of_a_connection_that_was_not_dnated() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()),
    ):
        accepted, _ = listener.accept()
        with accepted:
            try:
                found = so_original_dst(accepted)
            except OSError:
                return  # no conntrack on this host: nothing to look up
            # With conntrack, an un-NATed connection's original destination is itself:
            # the case the proxy refuses as "connecting to the proxy itself".
            assert found == listener.getsockname()


class FakeDnsServer(asyncio.DatagramProtocol):
    """Answers every A query with 198.51.100.7, except missing.test (NXDOMAIN)."""

    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        if question.name.to_text() == "missing.test.":
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            response.answer.append(
                dns.rrset.from_text(question.name, 60, "IN", "A", "198.51.100.7")
            )
        self.transport.sendto(response.to_wire(), addr)


async def test_upstream_resolver() -> None:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(FakeDnsServer, local_addr=("127.0.0.1", 0))
    try:
        port = int(transport.get_extra_info("sockname")[1])
        resolve = upstream_resolver([("127.0.0.1", port)], timeout=0.5)
        assert await resolve("allowed.test") == {"198.51.100.7"}
        assert await resolve("missing.test") == set()
        assert await resolve("bad..name") == set()
    finally:
        transport.close()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        resolve = upstream_resolver([blackhole.getsockname()], timeout=0.3)
        started = time.monotonic()
        assert await resolve("allowed.test") == set()
        assert time.monotonic() - started < 2


# -- parsers ------------------------------------------------------------------------------


def real_client_hello(server_hostname: str | None) -> bytes:
    """The first flight of Python's own TLS client: a real-world ClientHello."""
    ctx = ssl.create_default_context()
    if server_hostname is None:
        ctx.check_hostname = False
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def reframe(hello: bytes, size: int) -> bytes:
    """The same handshake message, split over records of at most ``size`` bytes."""
    handshake = hello[5 : 5 + int.from_bytes(hello[3:5], "big")]
    return b"".join(
        b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (handshake[i : i + size] for i in range(0, len(handshake), size))
    )


def hello_with(extensions: list[tuple[int, bytes]]) -> bytes:
    """A minimal ClientHello carrying exactly ``extensions``."""
    exts = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in extensions)
    body = (
        b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
        + len(exts).to_bytes(2, "big") + exts
    )  # fmt: skip
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def sni(*names: bytes, name_type: int = 0) -> tuple[int, bytes]:
    entries = b"".join(bytes([name_type]) + len(n).to_bytes(2, "big") + n for n in names)
    return (0, len(entries).to_bytes(2, "big") + entries)


def test_sni_of_a_real_client_hello() -> None:
    assert parse_client_hello_sni(real_client_hello("Allowed.Test")) == "allowed.test"
    assert parse_client_hello_sni(real_client_hello(None)) is None
    assert parse_client_hello_sni(hello_with([sni(b"api.allowed.test.")])) == "api.allowed.test"
    assert parse_client_hello_sni(hello_with([])) is None
    assert parse_client_hello_sni(hello_with([sni(b"x.test", name_type=7)])) is None


def test_every_prefix_of_a_client_hello_is_incomplete() -> None:
    for hello in (real_client_hello("allowed.test"), reframe(real_client_hello("a.test"), 50)):
        for end in range(len(hello)):
            with pytest.raises(IncompleteClientHello):
                parse_client_hello_sni(hello[:end])


@pytest.mark.parametrize("size", [1, 4, 50, 300])
def test_client_hello_spread_over_several_records(size: int) -> None:
    assert parse_client_hello_sni(reframe(real_client_hello("allowed.test"), size)) == (
        "allowed.test"
    )


def test_client_hello_followed_by_more_bytes() -> None:
    hello = real_client_hello("allowed.test")
    assert parse_client_hello_sni(hello + b"\x17\x03\x03\x00\x01x") == "allowed.test"


def corrupt(hello: bytes, offset: int, value: bytes) -> bytes:
    return hello[:offset] + value + hello[offset + len(value) :]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x17\x03\x03\x00\x10" + bytes(16), id="application data record"),
        pytest.param(b"\x16\x02\x00\x00\x10" + bytes(16), id="not TLS version 3"),
        pytest.param(b"\x16\x03\x01\x00\x00", id="empty record"),
        pytest.param(b"\x16\x03\x01\x40\x01" + bytes(10), id="record too long"),
        pytest.param(b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", id="ServerHello"),
        pytest.param(b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", id="huge handshake length"),
        pytest.param(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", id="empty ClientHello"),
        pytest.param(hello_with([sni(b"a.test"), sni(b"b.test")]), id="two SNI extensions"),
        pytest.param(hello_with([sni(b"a.test", b"b.test")]), id="two host names"),
        pytest.param(hello_with([sni(b"caf\xc3\xa9.test")]), id="non-ASCII name"),
        pytest.param(hello_with([sni(b"a.test/../b")]), id="not a host name"),
        pytest.param(hello_with([sni(b"")]), id="empty name"),
        pytest.param(hello_with([(0, b"")]), id="empty SNI extension"),
        pytest.param(hello_with([(0, b"\x00\x0a\x00\x00\x06a.test")]), id="bad list length"),
        pytest.param(hello_with([(0, b"\x00\x09\x00\x00\x10a.test")]), id="bad name length"),
    ],
)
def test_malformed_client_hellos(data: bytes) -> None:
    with pytest.raises(MalformedClientHello):
        parse_client_hello_sni(data)


def test_malformed_lengths_inside_a_real_client_hello() -> None:
    hello = real_client_hello("allowed.test")
    session_id_at = 5 + 4 + 2 + 32
    suites_at = session_id_at + 1 + hello[session_id_at]
    suites_length = int.from_bytes(hello[suites_at : suites_at + 2], "big")
    compression_at = suites_at + 2 + suites_length
    extensions_at = compression_at + 1 + hello[compression_at]
    extensions_length = int.from_bytes(hello[extensions_at : extensions_at + 2], "big")
    assert extensions_at + 2 + extensions_length == len(hello)
    for bad in (
        corrupt(hello, 9, b"\x02"),  # legacy_version not 3.x
        corrupt(hello, session_id_at, b"\x21"),  # session id over 32 bytes
        corrupt(hello, suites_at, (suites_length + 1).to_bytes(2, "big")),  # odd
        corrupt(hello, suites_at, b"\xff\xfe"),  # beyond the hello
        corrupt(hello, compression_at, b"\x00"),  # no compression method
        corrupt(hello, extensions_at, (extensions_length + 1).to_bytes(2, "big")),
        corrupt(hello, extensions_at, (extensions_length - 1).to_bytes(2, "big")),
    ):
        with pytest.raises(MalformedClientHello):
            parse_client_hello_sni(bad)


def test_random_corruption_only_raises_the_parser_errors() -> None:
    hello = real_client_hello("allowed.test")
    rng = random.Random(1234)
    for _ in range(3000):
        damaged = bytearray(hello)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        cut = rng.choice([len(damaged), rng.randrange(len(damaged) + 1)])
        try:
            result = parse_client_hello_sni(bytes(damaged[:cut]))
        except (IncompleteClientHello, MalformedClientHello):
            continue
        assert result is None or result.isascii()
    for _ in range(500):
        noise = os.urandom(rng.randint(0, 600))
        with contextlib.suppress(IncompleteClientHello, MalformedClientHello):
            parse_client_hello_sni(b"\x16\x03\x01" + noise)


@pytest.mark.parametrize(
    ("head", "host"),
    [
        (b"GET / HTTP/1.1\r\nHost: Example.COM\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\r\nhost:example.com:8080\r\n\r\n", "example.com"),
        (b"GET / HTTP/1.1\nHost: example.com.\n\n", "example.com"),
        (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", None),
        (b"GET https://user@api.example.com:443/x?y HTTP/1.1\r\n\r\n", "api.example.com"),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "example.com"),
    ],
)
def test_http_request_host(head: bytes, host: str | None) -> None:
    assert http_request_host(head) == host


@pytest.mark.parametrize(
    "head",
    [
        b"hello\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: example.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
        b"GET http://a.com/ HTTP/1.1\r\nHost: b.com\r\n\r\n",
        b"GET http:///x HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nbroken header\r\n\r\n",
    ],
)
def test_http_request_host_rejects_ambiguous_heads(head: bytes) -> None:
    with pytest.raises(ValueError):
        http_request_host(head)
