"""The DNS forwarder against a real upstream (dnsmasq) on loopback.

Queries come from 127.0.0.1, which the lookup maps to the policy under test.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from stockade.server.network.dns import DnsForwarder, parse_upstream, system_upstreams
from stockade.server.network.egress import AnswerLog
from stockade.server.network.policy import NetworkPolicy
from tests.waiting import wait_for

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
SANDBOX = "127.0.0.1"


@pytest.fixture(autouse=True)
def _dnsmasq_installed() -> None:
    if not Path(DNSMASQ).exists():
        pytest.fail("these tests need dnsmasq (apt-get install dnsmasq-base; make test does it)")


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@dataclass
class Upstream:
    port: int
    log_path: Path

    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def queries_since(self, offset: int) -> str:
        """The upstream's query log after ``offset``, once a fresh marker query shows in it.

        dnsmasq answers in order, so anything we sent before the marker is logged by then.
        """
        marker = f"marker-{uuid.uuid4().hex}.allowed.test"
        dns.query.udp(dns.message.make_query(marker, "A"), "127.0.0.1", port=self.port, timeout=2)

        def logged() -> str | None:
            text = self.log_path.read_bytes()[offset:].decode()
            return text if marker in text else None

        return wait_for(logged, timeout=3, interval=0.02, what="dnsmasq to log the marker query")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    log_path = tmp_path_factory.mktemp("dnsmasq") / "queries.log"
    port = free_port()
    args = [
        DNSMASQ,
        "--no-daemon",
        "--conf-file=/dev/null",
        "--pid-file",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--user=root",
        "--log-queries",
        f"--log-facility={log_path}",
        "--address=/allowed.test/198.51.100.10",
        "--address=/other.test/198.51.100.20",
        "--host-record=target.example,198.51.100.30",
        "--cname=alias.example,target.example",
        "--host-record=long.example,198.51.100.40,86400",
        # 60 addresses: more than fit in 512 bytes, so UDP replies come back truncated.
        *(f"--host-record=big.test,198.51.100.{i}" for i in range(1, 61)),
    ]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)

    def answers() -> bool | None:
        if proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited {proc.returncode}")
        query = dns.message.make_query("allowed.test", "A")
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return None
        return True

    try:
        wait_for(answers, timeout=5, interval=0.05, what="dnsmasq to answer")
        yield Upstream(port, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def answers(clock: Clock) -> AnswerLog:
    return AnswerLog(clock=clock)


@pytest.fixture
def policies() -> dict[str, NetworkPolicy]:
    return {}


@pytest.fixture
async def forwarder(
    upstream: Upstream, policies: dict[str, NetworkPolicy], answers: AnswerLog
) -> AsyncIterator[DnsForwarder]:
    fwd = DnsForwarder(policies.get, [("127.0.0.1", upstream.port)], answers)
    await fwd.start("127.0.0.1", 0)
    try:
        yield fwd
    finally:
        await fwd.close()


async def ask(
    fwd: DnsForwarder, name: str, rdtype: str = "A", *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, "127.0.0.1", port=fwd.port, timeout=5)
    return await dns.asyncquery.udp(query, "127.0.0.1", port=fwd.port, timeout=5)


def addresses(response: dns.message.Message) -> set[str]:
    return {
        rdata.address
        for rrset in response.answer
        if rrset.rdtype == dns.rdatatype.A
        for rdata in rrset
    }


def allowlist(*domains: str) -> NetworkPolicy:
    return NetworkPolicy.parse(outbound_domain_allowlist=list(domains))


async def test_open_policy_forwards_and_keeps_the_query_id(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy]
) -> None:
    policies[SANDBOX] = NetworkPolicy()
    query = dns.message.make_query("other.test", "A")
    query.id = 4321
    response = await dns.asyncquery.udp(query, "127.0.0.1", port=forwarder.port, timeout=5)
    assert response.id == 4321
    assert response.rcode() == dns.rcode.NOERROR
    assert addresses(response) == {"198.51.100.20"}


async def test_allowlist_answers_allowed_names_only_and_never_asks_for_others(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy], upstream: Upstream
) -> None:
    policies[SANDBOX] = allowlist("allowed.test")
    offset = upstream.log_size()

    assert addresses(await ask(forwarder, "allowed.test")) == {"198.51.100.10"}
    denied = await ask(forwarder, "other.test")
    assert denied.rcode() == dns.rcode.NXDOMAIN
    assert not denied.answer
    assert (await ask(forwarder, "Other.Test.", "TXT")).rcode() == dns.rcode.NXDOMAIN

    log = (await asyncio.to_thread(upstream.queries_since, offset)).lower()
    assert "query[a] allowed.test" in log
    assert "other.test" not in log


async def test_wildcard_pattern_covers_subdomains_not_the_name(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy]
) -> None:
    policies[SANDBOX] = allowlist("*.allowed.test")
    assert addresses(await ask(forwarder, "api.allowed.test")) == {"198.51.100.10"}
    assert (await ask(forwarder, "allowed.test")).rcode() == dns.rcode.NXDOMAIN
    assert (await ask(forwarder, "notallowed.test")).rcode() == dns.rcode.NXDOMAIN


async def test_aaaa_is_answered_empty_without_asking_upstream(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy], upstream: Upstream
) -> None:
    policies[SANDBOX] = NetworkPolicy()
    offset = upstream.log_size()
    response = await ask(forwarder, "allowed.test", "AAAA")
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer
    assert "query[AAAA]" not in await asyncio.to_thread(upstream.queries_since, offset)


async def test_blocked_and_unknown_sources_are_refused(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy], answers: AnswerLog
) -> None:
    assert (await ask(forwarder, "allowed.test")).rcode() == dns.rcode.REFUSED
    policies[SANDBOX] = NetworkPolicy(block_network=True)
    assert (await ask(forwarder, "allowed.test")).rcode() == dns.rcode.REFUSED
    assert (await ask(forwarder, "allowed.test", tcp=True)).rcode() == dns.rcode.REFUSED
    assert answers.names_for(SANDBOX, "198.51.100.10") == set()


async def test_tcp_queries_are_answered(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy]
) -> None:
    policies[SANDBOX] = allowlist("allowed.test")
    assert addresses(await ask(forwarder, "allowed.test", tcp=True)) == {"198.51.100.10"}
    assert (await ask(forwarder, "other.test", tcp=True)).rcode() == dns.rcode.NXDOMAIN


async def test_several_queries_on_one_tcp_connection(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy]
) -> None:
    policies[SANDBOX] = NetworkPolicy()
    reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
    try:
        for name, expected in (("allowed.test", "198.51.100.10"), ("other.test", "198.51.100.20")):
            writer.write(dns.message.make_query(name, "A").to_wire(prepend_length=True))
            length = int.from_bytes(await reader.readexactly(2), "big")
            response = dns.message.from_wire(await reader.readexactly(length))
            assert addresses(response) == {expected}
    finally:
        writer.close()
        await writer.wait_closed()


async def test_truncated_upstream_reply_is_fetched_over_tcp(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy], upstream: Upstream
) -> None:
    policies[SANDBOX] = NetworkPolicy()
    offset = upstream.log_size()
    # Over UDP without EDNS the client gets at most 512 bytes, marked truncated ...
    small = await ask(forwarder, "big.test")
    assert small.flags & dns.flags.TC
    # ... and over TCP all of it, which the forwarder could only get over TCP too.
    full = await ask(forwarder, "big.test", tcp=True)
    assert addresses(full) == {f"198.51.100.{i}" for i in range(1, 61)}
    log = await asyncio.to_thread(upstream.queries_since, offset)
    assert "query[A] big.test from 127.0.0.1" in log


async def test_malformed_packets_are_dropped_and_the_next_query_works(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy]
) -> None:
    policies[SANDBOX] = NetworkPolicy()
    reply = dns.message.make_response(dns.message.make_query("allowed.test", "A")).to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for junk in (b"", b"\x00", b"garbage that is not dns" * 3, b"\xff" * 600, reply):
            sock.sendto(junk, ("127.0.0.1", forwarder.port))
    assert addresses(await ask(forwarder, "allowed.test")) == {"198.51.100.10"}

    for framed in (b"\x00\x05hello", b"\xff\xff" + b"x" * 100, b"\x00\x00"):
        reader, writer = await asyncio.open_connection("127.0.0.1", forwarder.port)
        writer.write(framed)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed on us
        writer.close()
        await writer.wait_closed()
    assert addresses(await ask(forwarder, "allowed.test", tcp=True)) == {"198.51.100.10"}


async def test_all_upstreams_down_gives_servfail_in_bounded_time(
    policies: dict[str, NetworkPolicy], answers: AnswerLog
) -> None:
    policies[SANDBOX] = NetworkPolicy()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as blackhole:
        blackhole.bind(("127.0.0.1", 0))  # receives queries, never answers
        dead = [("127.0.0.1", free_port()), ("127.0.0.1", int(blackhole.getsockname()[1]))]
        fwd = DnsForwarder(policies.get, dead, answers, timeout=1.0)
        await fwd.start("127.0.0.1", 0)
        try:
            started = time.monotonic()
            response = await ask(fwd, "allowed.test")
            elapsed = time.monotonic() - started
        finally:
            await fwd.close()
    assert response.rcode() == dns.rcode.SERVFAIL
    assert elapsed < 3.5


async def test_a_records_are_logged_with_the_cname_chain_and_clamped_ttls(
    forwarder: DnsForwarder,
    policies: dict[str, NetworkPolicy],
    answers: AnswerLog,
    clock: Clock,
) -> None:
    policies[SANDBOX] = NetworkPolicy()
    response = await ask(forwarder, "Alias.Example")
    assert addresses(response) == {"198.51.100.30"}
    assert answers.names_for(SANDBOX, "198.51.100.30") == {"alias.example", "target.example"}
    assert answers.names_for("10.213.0.9", "198.51.100.30") == set()

    await ask(forwarder, "long.example")
    # dnsmasq's own answers have TTL 0 (raised to 30 s); long.example's 86400 (cut to 1 h).
    clock.now += 29
    assert answers.names_for(SANDBOX, "198.51.100.30")
    clock.now += 2
    assert answers.names_for(SANDBOX, "198.51.100.30") == set()
    assert answers.names_for(SANDBOX, "198.51.100.40") == {"long.example"}
    clock.now += 3600
    assert answers.names_for(SANDBOX, "198.51.100.40") == set()


async def test_refused_and_nxdomain_answers_are_not_logged(
    forwarder: DnsForwarder, policies: dict[str, NetworkPolicy], answers: AnswerLog
) -> None:
    policies[SANDBOX] = allowlist("allowed.test")
    await ask(forwarder, "other.test")
    assert answers.names_for(SANDBOX, "198.51.100.20") == set()


async def test_close_stops_answering(upstream: Upstream, answers: AnswerLog) -> None:
    fwd = DnsForwarder(lambda ip: NetworkPolicy(), [("127.0.0.1", upstream.port)], answers)
    await fwd.start("127.0.0.1", 0)
    port = fwd.port
    await fwd.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


def test_parse_upstream() -> None:
    assert parse_upstream("1.2.3.4") == ("1.2.3.4", 53)
    assert parse_upstream(" 10.0.0.2:5353 ") == ("10.0.0.2", 5353)
    assert parse_upstream("[::1]:54") == ("::1", 54)
    for bad in ("", "example.com", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:70000", "1.2.3.4:x", "[::1"):
        with pytest.raises(ValueError, match="invalid DNS upstream"):
            parse_upstream(bad)


def test_system_upstreams(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\nsearch example.org\nnameserver 127.0.0.53\nnameserver  9.9.9.9 \n"
        "nameserver bogus\nnameserver 127.0.0.53\noptions edns0\n"
    )
    assert system_upstreams(conf) == [("127.0.0.53", 53), ("9.9.9.9", 53)]
    assert system_upstreams(tmp_path / "missing") == []


def test_forwarder_port_before_start_is_an_error(answers: AnswerLog) -> None:
    fwd = DnsForwarder(lambda ip: None, [], answers)
    with pytest.raises(RuntimeError, match="not started"):
        _ = fwd.port
