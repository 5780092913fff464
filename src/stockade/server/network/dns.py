"""The DNS forwarder that networked sandboxes use: the first half of domain allowlisting.

nftables sends every sandbox's DNS (UDP and TCP port 53) to this forwarder on the host's
services address, so a sandbox cannot ask another resolver. The forwarder answers by the
sandbox's policy, found from the query's source address:

- not a sandbox, or a ``blocked`` one: REFUSED;
- a name the policy does not allow: NXDOMAIN, without asking upstream, so the sandbox
  learns nothing about names it may not reach;
- AAAA: an empty NOERROR answer. Sandboxes have IPv4 only, and clients that get AAAA
  records try IPv6 first and wait for it to fail;
- anything else: forwarded to the host's upstream resolvers in order (UDP, then TCP when
  the reply is truncated, ~2 s each), SERVFAIL if none answers.

Every A record handed to a sandbox goes into the shared :class:`~.egress.AnswerLog`, which
is how the egress proxy knows that an address was resolved for an allowed name when the
connection itself names no host (SSH, SMTP, database protocols).

The forwarder never parses DNS wire format itself: dnspython does, and whatever it
rejects is dropped (UDP) or ends the connection (TCP).

Concurrency: a :class:`DnsForwarder` belongs to the event loop that started it and is not
thread-safe.

Example::

    answers = AnswerLog()
    forwarder = DnsForwarder(policies.get, system_upstreams(), answers)
    await forwarder.start("10.213.0.1", 53)
    ...
    await forwarder.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.entropy
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from .egress import AnswerLog, PolicyLookup

__all__ = ["DnsForwarder", "PolicyLookup", "parse_upstream", "system_upstreams"]

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 2.0
MAX_IN_FLIGHT = 256
MAX_TCP_CONNECTIONS = 128
# Queries are a question plus perhaps an OPT record; anything longer is not a query we answer.
MAX_TCP_QUERY = 4096
TCP_IDLE_TIMEOUT = 10.0
MIN_ANSWER_TTL = 30
MAX_ANSWER_TTL = 3600
# Longer CNAME chains are loops or abuse; resolvers give up around here too.
MAX_CNAME_CHAIN = 16

# An upstream that answers these may be alone in its trouble: ask the next one.
_TRY_NEXT = frozenset({dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP})
_UPSTREAM_ERRORS = (dns.exception.DNSException, OSError, EOFError, ValueError)


def parse_upstream(text: str) -> tuple[str, int]:
    """``1.2.3.4`` or ``1.2.3.4:5353`` (``[::1]:53`` for IPv6) as ``(address, port)``.

    >>> parse_upstream("10.0.0.2:5353")
    ('10.0.0.2', 5353)
    """
    spec = text.strip()
    host, port_text = spec, None
    if spec.startswith("["):
        host, sep, rest = spec[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            host = ""
        port_text = rest[1:] if rest else None
    elif spec.count(":") == 1:
        host, _, port_text = spec.partition(":")
    try:
        address = str(ipaddress.ip_address(host))
        port = 53 if port_text is None else int(port_text)
    except ValueError:
        address, port = "", 0
    if not address or not 0 < port < 65536:
        raise ValueError(
            f"invalid DNS upstream {text!r}: expected an IP address with an optional port, "
            "such as 1.1.1.1 or 10.0.0.2:5353"
        )
    return address, port


def system_upstreams(resolv_conf: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    """The ``nameserver`` entries of the host's resolv.conf, port 53; [] if it has none.

    A systemd-resolved stub (127.0.0.53) is fine here: the forwarder runs on the host.
    """
    try:
        text = resolv_conf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found: list[tuple[str, int]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append((str(ipaddress.ip_address(fields[1])), 53))
            except ValueError:
                log.warning(
                    "ignoring nameserver %r in %s: not an IP address", fields[1], resolv_conf
                )
    return list(dict.fromkeys(found))


def _name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _udp_limit(query: dns.message.Message) -> int:
    # RFC 6891: a client without EDNS accepts 512 bytes; with EDNS, what it advertised.
    return max(512, query.payload) if query.edns >= 0 else 512


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, forwarder: DnsForwarder) -> None:
        self._forwarder = forwarder

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._forwarder._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (a client that went away): nothing to do.
        log.debug("dns: UDP error: %s", exc)


class DnsForwarder:
    """Answers sandboxes' DNS by their policy, over UDP and TCP on one address and port.

    ``lookup`` maps a query's source address to its sandbox's policy (None: not a
    sandbox). ``upstreams`` are tried in order. A records given to sandboxes are recorded
    in ``answers``.
    """

    def __init__(
        self,
        lookup: PolicyLookup,
        upstreams: Sequence[tuple[str, int]],
        answers: AnswerLog,
        *,
        timeout: float = UPSTREAM_TIMEOUT,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._lookup = lookup
        self._upstreams = list(upstreams)
        self._answers = answers
        self._timeout = timeout
        self._max_in_flight = max_in_flight
        self._upstream_slots = asyncio.Semaphore(max_in_flight)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._port: int | None = None
        self._udp_tasks: set[asyncio.Task[None]] = set()
        self._tcp_tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        if self._port is None:
            raise RuntimeError("the DNS forwarder is not started")
        return self._port

    async def start(self, host: str, port: int) -> None:
        """Bind UDP and TCP on ``host:port``; port 0 picks one free for both."""
        if self._udp is not None:
            raise RuntimeError("the DNS forwarder is already started")
        loop = asyncio.get_running_loop()
        # With port 0 the UDP port the kernel picks may be taken for TCP: try a few.
        attempts = 8 if port == 0 else 1
        for attempt in range(attempts):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
            bound = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, bound)
            except OSError:
                transport.close()
                if attempt == attempts - 1:
                    raise
                continue
            self._udp, self._port = transport, bound
            break
        log.info("dns: forwarding on %s:%d to %s", host, self._port, self._upstreams)

    async def close(self) -> None:
        """Stop answering, drop queries in flight and close TCP connections."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        tasks = self._udp_tasks | self._tcp_tasks
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
        self._udp = self._tcp = None

    # -- transports -----------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        if len(self._udp_tasks) >= self._max_in_flight:
            # Dropping is what an overloaded resolver does: the client retries later.
            log.debug("dns: %d queries in flight, dropping one from %s", len(self._udp_tasks), addr)
            return
        task = asyncio.create_task(self._answer_udp(data, addr))
        self._udp_tasks.add(task)
        task.add_done_callback(self._udp_tasks.discard)

    async def _answer_udp(self, data: bytes, addr: Any) -> None:
        try:
            reply = await self._answer(data, str(addr[0]), udp=True)
            if reply is not None and self._udp is not None and not self._udp.is_closing():
                self._udp.sendto(reply, addr)
        except Exception:
            log.exception("dns: answering %s failed", addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_tasks.add(task)
        try:
            peer = writer.get_extra_info("peername")
            if peer is None or len(self._tcp_tasks) > MAX_TCP_CONNECTIONS:
                return
            source_ip = str(peer[0])
            # RFC 7766: several queries may follow on one connection, each length-prefixed.
            while True:
                try:
                    async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                        length = int.from_bytes(await reader.readexactly(2), "big")
                        if not 12 <= length <= MAX_TCP_QUERY:
                            return
                        wire = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, OSError):
                    return
                reply = await self._answer(wire, source_ip, udp=False)
                if reply is None:
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except OSError:
            pass
        except Exception:
            log.exception("dns: TCP connection from %s failed", writer.get_extra_info("peername"))
        finally:
            self._tcp_tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    # -- answering ------------------------------------------------------------------------

    async def _answer(self, wire: bytes, source_ip: str, *, udp: bool) -> bytes | None:
        """The reply's wire format, or None to drop a packet that is not a query."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            # dnspython raises many exception types for garbage; none of it is answerable.
            log.debug("dns: dropping a malformed packet from %s", source_ip)
            return None
        if query.flags & dns.flags.QR:
            return None
        client_id = query.id
        response = await self._respond(query, source_ip)
        response.id = client_id
        try:
            # A reply too big for the client's UDP buffer is cut and marked TC, so the
            # client asks again over TCP (RFC 1035 4.2.1).
            return response.to_wire(
                max_size=_udp_limit(query) if udp else 65535, prefer_truncation=True
            )
        except Exception:
            log.warning("dns: could not encode the reply to %s", source_ip, exc_info=True)
            return None

    async def _respond(self, query: dns.message.Message, source_ip: str) -> dns.message.Message:
        if query.opcode() != dns.opcode.QUERY:
            return _reply(query, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            return _reply(query, dns.rcode.FORMERR)
        policy = self._lookup(source_ip)
        if policy is None or policy.block_network:
            return _reply(query, dns.rcode.REFUSED)
        question = query.question[0]
        name = _name_text(question.name)
        if not policy.allows_name(name):
            log.debug("dns: %s asked for %s, not in its allowlist", source_ip, name)
            return _reply(query, dns.rcode.NXDOMAIN)
        if question.rdtype == dns.rdatatype.AAAA:
            return _reply(query, dns.rcode.NOERROR)
        response = await self._forward(query)
        if response is None:
            return _reply(query, dns.rcode.SERVFAIL)
        self._record(source_ip, question.name, response)
        return response

    async def _forward(self, query: dns.message.Message) -> dns.message.Message | None:
        client_id = query.id
        # A fresh ID: the client's may be predictable (even constant), and upstream
        # replies are only as hard to spoof as the ID and source port are to guess.
        query.id = dns.entropy.random_16()
        last: dns.message.Message | None = None
        try:
            async with self._upstream_slots:
                for host, port in self._upstreams:
                    try:
                        response = await dns.asyncquery.udp(
                            query,
                            host,
                            timeout=self._timeout,
                            port=port,
                            ignore_unexpected=True,
                            ignore_errors=True,
                        )
                        if response.flags & dns.flags.TC:
                            response = await dns.asyncquery.tcp(
                                query, host, timeout=self._timeout, port=port
                            )
                    except _UPSTREAM_ERRORS as exc:
                        log.debug("dns: upstream %s:%d failed: %r", host, port, exc)
                        continue
                    if response.rcode() in _TRY_NEXT:
                        last = response
                        continue
                    return response
        finally:
            query.id = client_id
        if last is None:
            log.warning("dns: no upstream of %s answered", self._upstreams)
        return last

    def _record(self, source_ip: str, qname: dns.name.Name, response: dns.message.Message) -> None:
        chain = [qname]
        for _ in range(MAX_CNAME_CHAIN):
            cname = response.get_rrset(
                response.answer, chain[-1], dns.rdataclass.IN, dns.rdatatype.CNAME
            )
            if cname is None or not len(cname):
                break
            chain.append(cname[0].target)
        names = {_name_text(n) for n in chain}
        for rrset in response.answer:
            if (
                rrset.rdtype == dns.rdatatype.A
                and rrset.rdclass == dns.rdataclass.IN
                and rrset.name in chain
            ):
                ttl = min(max(rrset.ttl, MIN_ANSWER_TTL), MAX_ANSWER_TTL)
                for rdata in rrset:
                    self._answers.record(source_ip, names, rdata.address, ttl)


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    response.set_rcode(rcode)
    return response
