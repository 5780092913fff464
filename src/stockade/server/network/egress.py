"""The egress proxy for domain-allowlisted sandboxes: the second half of domain allowlisting.

Answering DNS by the allowlist (see dns.py) is not enough: a sandbox can connect to any
address it learnt elsewhere. So nftables DNATs all outbound TCP of a sandbox whose policy
has ``outbound_domain_allowlist`` to this transparent proxy, which recovers the original
destination (``SO_ORIGINAL_DST``) and lets a connection through only when:

- the destination is in the policy's ``outbound_cidr_allowlist`` (no name needed), or
- the client's first bytes name a host (TLS SNI, HTTP ``Host``) that the policy allows,
  *and* the destination is an address of that name: one our DNS forwarder gave this
  sandbox for it, or one the host's resolvers return for it now. Naming an allowed host
  while connecting elsewhere (a faked SNI or Host) reaches nothing; or
- the client names no host (SSH, SMTP, an unknown protocol, or silence for ~3 s) and the
  forwarder gave this sandbox the destination address for an allowed name.

Destinations that are not public addresses (loopback, private ranges, link-local, the
host's own services) are refused unless the CIDR allowlist lists them: the proxy runs on
the host, outside the sandbox's nftables rules, and an allowed name whose DNS points at
10.213.0.1 must not become a way into the host.

Known limit: only the first request of a connection is inspected. A client may send other
Host headers later on the same connection, or a different Host inside TLS (domain
fronting); both still reach the address of an allowed name, never another one.

Concurrency: :class:`AnswerLog` and :class:`EgressProxy` belong to the event loop that
uses them and are not thread-safe.

Example::

    proxy = EgressProxy(policies.get, answers, upstream_resolver(system_upstreams()))
    await proxy.start("10.213.0.1", 15001)
    ...
    await proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from .policy import NetworkPolicy

__all__ = [
    "AnswerLog",
    "EgressProxy",
    "IncompleteClientHello",
    "MalformedClientHello",
    "PolicyLookup",
    "Resolve",
    "http_request_host",
    "parse_client_hello_sni",
    "so_original_dst",
    "upstream_resolver",
]

log = logging.getLogger(__name__)

PolicyLookup: TypeAlias = Callable[[str], NetworkPolicy | None]
"""A sandbox's policy by its IPv4 address; None for an address that is no sandbox's."""

Resolve: TypeAlias = Callable[[str], Awaitable[set[str]]]
"""A name's current IPv4 addresses; an empty set when it has none or resolution fails."""

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; the socket module does not export it
MAX_FIRST_BYTES = 16 * 1024
FIRST_BYTES_WAIT = 3.0
CONNECT_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 5.0
MAX_CONNECTIONS = 1024
MAX_ANSWERS_PER_SANDBOX = 4096
RELAY_CHUNK = 64 * 1024
_OVERLOAD_LOG_INTERVAL = 60.0


# -- what the DNS forwarder handed out ------------------------------------------------------


class AnswerLog:
    """Which addresses the DNS forwarder gave each sandbox, for which names, until when.

    Bounded: each sandbox keeps its ``max_per_sandbox`` most recent (address, name) pairs.
    """

    def __init__(
        self,
        *,
        max_per_sandbox: int = MAX_ANSWERS_PER_SANDBOX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_per_sandbox
        self._clock = clock
        # Per sandbox: expiry by (address, name), oldest first, and names by address.
        self._expiry: dict[str, OrderedDict[tuple[str, str], float]] = {}
        self._names: dict[str, dict[str, set[str]]] = {}

    def record(self, sandbox_ip: str, names: Iterable[str], address: str, ttl: float) -> None:
        """Remember that ``sandbox_ip`` was told ``names`` resolve to ``address``."""
        expiry = self._expiry.setdefault(sandbox_ip, OrderedDict())
        by_address = self._names.setdefault(sandbox_ip, {})
        until = self._clock() + ttl
        for raw in names:
            name = raw.lower().rstrip(".")
            key = (address, name)
            # The client may still cache an earlier, longer-lived answer: keep the later expiry.
            expiry[key] = max(until, expiry.pop(key, until))
            by_address.setdefault(address, set()).add(name)
        while len(expiry) > self._max:
            (old_address, old_name), _ = expiry.popitem(last=False)
            self._drop_name(by_address, old_address, old_name)

    def names_for(self, sandbox_ip: str, address: str) -> set[str]:
        """The names ``address`` was given to ``sandbox_ip`` for, and has not expired for."""
        by_address = self._names.get(sandbox_ip, {})
        expiry = self._expiry.get(sandbox_ip)
        if expiry is None:
            return set()
        now = self._clock()
        found: set[str] = set()
        for name in list(by_address.get(address, ())):
            if expiry[(address, name)] > now:
                found.add(name)
            else:
                del expiry[(address, name)]
                self._drop_name(by_address, address, name)
        return found

    def forget(self, sandbox_ip: str) -> None:
        """Drop everything about a sandbox (it ended; its address may be reused)."""
        self._expiry.pop(sandbox_ip, None)
        self._names.pop(sandbox_ip, None)

    @staticmethod
    def _drop_name(by_address: dict[str, set[str]], address: str, name: str) -> None:
        names = by_address.get(address)
        if names is not None:
            names.discard(name)
            if not names:
                del by_address[address]


def upstream_resolver(upstreams: Sequence[tuple[str, int]], *, timeout: float = 2.0) -> Resolve:
    """A :data:`Resolve` that asks ``upstreams`` (address, port) directly, with a small cache."""
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in upstreams]
    resolver.timeout = timeout
    resolver.lifetime = timeout * max(1, len(upstreams))
    resolver.cache = dns.resolver.LRUCache(1024)

    async def resolve(name: str) -> set[str]:
        try:
            answer = await resolver.resolve(
                name, dns.rdatatype.A, search=False, raise_on_no_answer=False
            )
        except (dns.exception.DNSException, ValueError) as exc:
            log.debug("egress: resolving %s failed: %r", name, exc)
            return set()
        return {rdata.address for rdata in answer.rrset} if answer.rrset is not None else set()

    return resolve


def so_original_dst(sock: socket.socket) -> tuple[str, int]:
    """The destination a DNATed TCP connection was sent to, before nftables rewrote it.

    Raises OSError (ENOENT) for a connection that was not DNATed.
    """
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    # struct sockaddr_in: family (host order), port and address (network order), padding.
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


# -- naming the host from a connection's first bytes -----------------------------------------


class IncompleteClientHello(Exception):
    """The bytes so far are a valid start of a TLS ClientHello: read more."""


class MalformedClientHello(ValueError):
    """The bytes are not a well-formed TLS ClientHello."""


class _Cursor:
    """Bounds-checked reads over one length-delimited structure."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n > self.remaining:
            raise MalformedClientHello(f"{self._what} is truncated")
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")


_TLS_HANDSHAKE = 22
_TLS_CLIENT_HELLO = 1
_TLS_MAX_RECORD = 16384
_EXT_SERVER_NAME = 0
_SNI_HOST_NAME = 0
# Labels of 1 to 63 characters (RFC 1035): a longer one cannot be a name DNS answers for.
_HOSTNAME = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")


def _hostname(raw: str) -> str | None:
    name = raw.lower().rstrip(".")
    # fullmatch, not match with "$": "$" also matches before a final "\n", which let an SNI
    # of "allowed.example\n" through as a name.
    return name if len(name) <= 253 and _HOSTNAME.fullmatch(name) else None


def _client_hello_body(data: bytes) -> bytes:
    """Join the handshake fragments of consecutive TLS records into the ClientHello body."""
    handshake = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            raise IncompleteClientHello
        content_type, major = data[pos], data[pos + 1]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if content_type != _TLS_HANDSHAKE:
            raise MalformedClientHello("not a TLS handshake record")
        if major != 3:
            raise MalformedClientHello("not a TLS record version")
        if not 0 < length <= _TLS_MAX_RECORD:
            raise MalformedClientHello(f"bad TLS record length {length}")
        fragment = data[pos + 5 : pos + 5 + length]
        handshake += fragment
        if len(handshake) >= 4:
            if handshake[0] != _TLS_CLIENT_HELLO:
                raise MalformedClientHello("the first handshake message is not a ClientHello")
            body_length = int.from_bytes(handshake[1:4], "big")
            if body_length > MAX_FIRST_BYTES:
                raise MalformedClientHello(f"ClientHello of {body_length} bytes is too large")
            if len(handshake) >= 4 + body_length:
                return bytes(handshake[4 : 4 + body_length])
        if len(fragment) < length:
            raise IncompleteClientHello
        pos += 5 + length


def _server_name(extension: bytes) -> str | None:
    cursor = _Cursor(extension, "server_name extension")
    if cursor.uint(2) != cursor.remaining or cursor.remaining == 0:
        raise MalformedClientHello("bad server_name list length")
    host: str | None = None
    while cursor.remaining:
        name_type = cursor.uint(1)
        value = cursor.take(cursor.uint(2))
        if name_type != _SNI_HOST_NAME:
            continue
        if host is not None:
            raise MalformedClientHello("more than one host_name in server_name")
        try:
            host = _hostname(value.decode("ascii"))
        except UnicodeDecodeError:
            host = None
        if host is None:
            raise MalformedClientHello("server_name is not a host name")
    return host


def parse_client_hello_sni(data: bytes) -> str | None:
    """The SNI host name of the TLS ClientHello ``data`` starts with; None if it sends none.

    Lower-case, without a trailing dot. Raises :class:`IncompleteClientHello` while
    ``data`` is a valid prefix of one, :class:`MalformedClientHello` when it is not.
    """
    cursor = _Cursor(_client_hello_body(data), "ClientHello")
    if cursor.uint(2) >> 8 != 3:
        raise MalformedClientHello("not a TLS ClientHello version")
    cursor.take(32)  # random
    session_id_length = cursor.uint(1)
    if session_id_length > 32:
        raise MalformedClientHello("session id longer than 32 bytes")
    cursor.take(session_id_length)
    suites_length = cursor.uint(2)
    if suites_length < 2 or suites_length % 2:
        raise MalformedClientHello("bad cipher_suites length")
    cursor.take(suites_length)
    compression_length = cursor.uint(1)
    if compression_length < 1:
        raise MalformedClientHello("no compression methods")
    cursor.take(compression_length)
    if not cursor.remaining:
        return None  # a ClientHello without extensions (SSL 3.0 style)
    if cursor.uint(2) != cursor.remaining:
        raise MalformedClientHello("extensions length does not match the ClientHello")
    seen: set[int] = set()
    host: str | None = None
    while cursor.remaining:
        ext_type = cursor.uint(2)
        ext_data = cursor.take(cursor.uint(2))
        # RFC 8446 4.2: at most one extension of each type. Two server_names could let
        # us check one while the server uses the other.
        if ext_type in seen:
            raise MalformedClientHello(f"extension {ext_type} appears twice")
        seen.add(ext_type)
        if ext_type == _EXT_SERVER_NAME:
            host = _server_name(ext_data)
    return host


_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/1\.[0-9]")
_METHOD_PREFIX = re.compile(rb"[A-Z]{1,20}( |$)")


def _strip_port(authority: str) -> str:
    if authority.startswith("["):
        return authority  # an IPv6 literal: never an allowed name
    host, sep, port = authority.rpartition(":")
    return host if sep and port.isdigit() else authority


def http_request_host(head: bytes) -> str | None:
    """The host an HTTP/1.x request head (request line and headers) is for.

    From an absolute-form target (``GET http://host/ …``), a CONNECT target or the Host
    header, without the port, lower-case. None when the request names no host (HTTP/1.0
    without Host). Raises ValueError for what a server might read differently than we do:
    two Host headers, a target and a Host that disagree, folded headers, bad names.
    """
    lines = head.split(b"\n")
    match = _REQUEST_LINE.fullmatch(lines[0].rstrip(b"\r"))
    if match is None:
        raise ValueError("not an HTTP/1.x request line")
    method, target = match.group(1).decode("latin-1"), match.group(2).decode("latin-1")
    hosts: list[str] = []
    for raw_line in lines[1:]:
        line = raw_line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            raise ValueError("folded header lines")
        field, sep, value = line.partition(b":")
        if not sep or field != field.strip():
            raise ValueError("malformed header line")
        if field.lower() == b"host":
            hosts.append(value.strip(b" \t").decode("latin-1"))
    if len(hosts) > 1:
        raise ValueError("more than one Host header")
    candidates: list[str] = [_strip_port(h) for h in hosts]
    if method == "CONNECT":
        candidates.append(_strip_port(target))
    elif "://" in target:
        try:
            target_host = urlsplit(target).hostname
        except ValueError:
            raise ValueError("malformed request target") from None
        if target_host is None:
            raise ValueError("request target without a host")
        candidates.append(target_host)
    if not candidates:
        return None
    names = {_hostname(c) for c in candidates}
    if None in names:
        raise ValueError(f"{candidates[0]!r} is not a host name")
    if len(names) > 1:
        raise ValueError("the request target and the Host header name different hosts")
    return names.pop()


@dataclass(frozen=True)
class _Opening:
    """What a connection's first bytes say about where it is going."""

    data: bytes
    protocol: Literal["tls", "http", "other"]
    name: str | None = None
    # Set when the bytes try to name a host but do so malformedly: always refused.
    error: str | None = None


def _inspect(data: bytes, final: bool) -> _Opening | None:
    """Classify the first bytes; None while more could change the answer and ``final`` is
    false (the wait and the size limit are not used up)."""
    if not data:
        return _Opening(data, "other") if final else None
    if data[0] == _TLS_HANDSHAKE:
        try:
            return _Opening(data, "tls", parse_client_hello_sni(data))
        except IncompleteClientHello:
            return _Opening(data, "tls", error="incomplete TLS ClientHello") if final else None
        except MalformedClientHello as exc:
            return _Opening(data, "tls", error=f"malformed TLS ClientHello: {exc}")
    line_end = data.find(b"\n")
    first_line = data if line_end < 0 else data[:line_end]
    if not _METHOD_PREFIX.match(first_line):
        return _Opening(data, "other")
    if line_end < 0:
        return _Opening(data, "http") if final else None
    if not _REQUEST_LINE.fullmatch(first_line.rstrip(b"\r")):
        return _Opening(data, "other")
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    if not ends:
        # Headers not all in by the deadline: judged like a client that names no host.
        return _Opening(data, "http") if final else None
    try:
        return _Opening(data, "http", http_request_host(data[: min(ends)]))
    except ValueError as exc:
        return _Opening(data, "http", error=f"malformed HTTP request: {exc}")


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def _in_cidrs(address: str, cidrs: Iterable[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(cidr) for cidr in cidrs)


def _forbidden(host: str, reason: str) -> bytes:
    body = f"stockade: connection to {host} refused: {reason}\n".encode()
    head = (
        "HTTP/1.1 403 Forbidden\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


_BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while chunk := await source.read(RELAY_CHUNK):
        sink.write(chunk)
        await sink.drain()  # backpressure: read no faster than the other side takes
    # Half-close: the other side may still be sending (a request body, then the response).
    if sink.can_write_eof():
        with contextlib.suppress(OSError):
            sink.write_eof()


# -- the proxy --------------------------------------------------------------------------------


class EgressProxy:
    """Transparent TCP proxy that lets a sandbox reach only the hosts its policy names.

    ``original_destination`` gets the accepted connection's socket (asyncio's
    ``TransportSocket``) and returns the pre-DNAT (address, port); tests on loopback, where
    nothing is DNATed, inject their own. ``allow_private_destinations`` drops the
    public-address rule; it exists for those tests. ``forbidden`` replaces that rule with
    the server's own (the firewall's deny list plus the host's addresses), so the proxy and
    nftables refuse exactly the same destinations.
    """

    def __init__(
        self,
        lookup: PolicyLookup,
        answers: AnswerLog,
        resolve: Resolve,
        *,
        original_destination: Callable[[socket.socket], tuple[str, int]] = so_original_dst,
        allow_private_destinations: bool = False,
        forbidden: Callable[[str], bool] | None = None,
        max_connections: int = MAX_CONNECTIONS,
        first_bytes_wait: float = FIRST_BYTES_WAIT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._lookup = lookup
        self._answers = answers
        self._resolve = resolve
        self._original_destination = original_destination
        self._forbidden = forbidden or (
            (lambda _ip: False) if allow_private_destinations else (lambda ip: not _is_public(ip))
        )
        self._max_connections = max_connections
        self._first_bytes_wait = first_bytes_wait
        self._connect_timeout = connect_timeout
        self._server: asyncio.Server | None = None
        self._host: str | None = None
        self._port: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._overload_logged = float("-inf")

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        if self._port is None:
            raise RuntimeError("the egress proxy is not started")
        return self._port

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (port 0 picks a free one)."""
        if self._server is not None:
            raise RuntimeError("the egress proxy is already started")
        self._server = await asyncio.start_server(self._handle, host, port)
        self._host = host
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info("egress: proxying on %s:%d", host, self._port)

    async def close(self) -> None:
        """Stop accepting and end every connection, relayed or not."""
        if self._server is None:
            return
        self._server.close()
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if len(self._tasks) > self._max_connections:
                now = time.monotonic()
                if now - self._overload_logged > _OVERLOAD_LOG_INTERVAL:
                    self._overload_logged = now
                    log.warning("egress: %d connections open, refusing more", self._max_connections)
                return
            await self._serve(reader, writer)
        except OSError as exc:
            log.debug(
                "egress: connection from %s ended: %r", writer.get_extra_info("peername"), exc
            )
        except Exception:
            log.exception("egress: connection from %s failed", writer.get_extra_info("peername"))
        finally:
            self._tasks.discard(task)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if peer is None:
            return
        sandbox_ip = str(peer[0])
        policy = self._lookup(sandbox_ip)
        if policy is None or policy.domain_allowlist is None or policy.block_network:
            log.debug("egress: %s is not a domain-allowlisted sandbox; closing", sandbox_ip)
            return
        try:
            dst_ip, dst_port = self._original_destination(writer.get_extra_info("socket"))
        except OSError as exc:
            log.info(
                "egress: no original destination for a connection from %s: %s", sandbox_ip, exc
            )
            return
        local = writer.get_extra_info("sockname")
        if (dst_ip, dst_port) in ((local[0], local[1]), (self._host, self._port)):
            log.info("egress: refused %s connecting to the proxy itself", sandbox_ip)
            return

        if policy.cidr_allowlist and _in_cidrs(dst_ip, policy.cidr_allowlist):
            opening = _Opening(b"", "other")
        else:
            opening = await self._read_opening(reader)
            reason = await self._refusal(sandbox_ip, policy, dst_ip, opening)
            if reason is not None:
                host = opening.name or dst_ip
                log.info(
                    "egress: refused sandbox %s -> %s:%d (name %s): %s",
                    sandbox_ip,
                    dst_ip,
                    dst_port,
                    opening.name,
                    reason,
                )
                if opening.protocol == "http":
                    writer.write(_forbidden(host, reason))
                    with contextlib.suppress(OSError):
                        await writer.drain()
                return

        try:
            async with asyncio.timeout(self._connect_timeout):
                up_reader, up_writer = await asyncio.open_connection(dst_ip, dst_port)
        except (OSError, TimeoutError) as exc:
            log.info("egress: %s -> %s:%d: connect failed: %r", sandbox_ip, dst_ip, dst_port, exc)
            if opening.protocol == "http":
                writer.write(_BAD_GATEWAY)
                with contextlib.suppress(OSError):
                    await writer.drain()
            return
        try:
            up_writer.write(opening.data)
            await self._relay(reader, writer, up_reader, up_writer)
        finally:
            await _close(up_writer)

    async def _read_opening(self, reader: asyncio.StreamReader) -> _Opening:
        """Read until the first bytes name a host, or cannot, or the wait is over."""
        data = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._first_bytes_wait
        while True:
            opening = _inspect(data, final=len(data) >= MAX_FIRST_BYTES)
            if opening is not None:
                return opening
            remaining = deadline - loop.time()
            chunk = b""
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        chunk = await reader.read(MAX_FIRST_BYTES - len(data))
            if not chunk:  # the wait is over, or the client sent EOF
                return _inspect(data, final=True) or _Opening(data, "other")
            data += chunk

    async def _refusal(
        self, sandbox_ip: str, policy: NetworkPolicy, dst_ip: str, opening: _Opening
    ) -> str | None:
        """Why the connection may not go through; None if it may."""
        if self._forbidden(dst_ip):
            return f"{dst_ip} is not a public address and not in outbound_cidr_allowlist"
        if opening.error is not None:
            return opening.error
        name = opening.name
        if name is not None:
            if not policy.allows_name(name):
                return "not in this sandbox's outbound_domain_allowlist"
            if name in self._answers.names_for(sandbox_ip, dst_ip):
                return None
            if dst_ip in await self._resolve_quietly(name):
                return None
            return f"{name} does not resolve to {dst_ip}"
        if any(policy.allows_name(n) for n in self._answers.names_for(sandbox_ip, dst_ip)):
            return None
        return (
            f"no host name was sent and {dst_ip} was not resolved for a name in this "
            "sandbox's outbound_domain_allowlist"
        )

    async def _resolve_quietly(self, name: str) -> set[str]:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                return await self._resolve(name)
        except Exception as exc:
            log.info("egress: resolving %s failed: %r", name, exc)
            return set()

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Copy both ways until both sides have sent EOF; an error on either ends both."""
        pumps = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        try:
            await asyncio.gather(*pumps)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
