"""The way in to a sandbox's exposed ports over HTTP and WebSocket (port_tunnel.py carries
raw TCP).

A sandbox has its own address on a host-only network (e.g. 10.213.0.2) that only this
machine can reach, so users reach the servers they start inside it through the Stockade
server:

- :class:`SandboxProxy`, an ASGI middleware in front of the API, forwards HTTP and
  WebSocket traffic addressed to a sandbox port, picked either by the ``Host`` header
  (``8080-sb-0123456789abcdef.sandboxes.example.com``, for apps that need to own ``/``) or
  by the path (``/proxy/sb-0123456789abcdef/8080/...``, which needs no DNS). It sits outside
  the FastAPI app so that none of the API's rules (the admin token, JSON bodies, the body
  size limit) apply to a sandbox's own traffic. A private port asks for the sandbox's access
  token instead (header ``X-Stockade-Access-Token`` or query ``stockade_token``), which is
  removed before the request goes on, as is an ``Authorization`` header that carries the
  server's own admin token.

  The token is checked before anything else happens to the sandbox: only once it matches
  (or the port is public) is the port resolved, which may resume a paused ``auto_resume``
  sandbox, wake a dozing one and count as activity for ``idle_timeout``. Until then every
  refusal reads the same, whether the sandbox exists, runs, is paused, or exposes the port,
  so that a caller without the token learns nothing about it.

Where a port lives is asked of a :class:`PortTargets` (the sandbox service), the one seam
between this module and the sandboxes; tests point it at servers on 127.0.0.1.

Connections to sandboxes, HTTP and WebSocket together, are capped (``_MAX_CONNECTIONS``,
or ``STOCKADE_PROXY_MAX_CONNECTIONS``); past the cap a request waits a while, then gets 503.

Bodies stream in both directions with bounded memory: a request body is sent upstream as
it is received, a response is passed down chunk by chunk (so server-sent events arrive as
they are produced), and a client that goes away ends the upstream request.

Wiring (outermost middleware, so it sees requests before RequestIds/BodyLimit/JsonByDefault)::

    app.add_middleware(
        SandboxProxy, targets_getter=lambda: getattr(app.state, "port_targets", None)
    )
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import secrets
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, unquote_plus

import httpx
import websockets.asyncio.client
import websockets.exceptions
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.typing import Subprotocol

from ...errors import AuthenticationError, InvalidArgumentError, NotFoundError, StockadeError
from ..service.access import is_key
from ..service.ports import PortTarget
from ..state.records import ExposedPort
from .deps import bearer_credentials, server_token
from .errors import error_response
from .relay import first_of, relay_websocket

__all__ = [
    "ACCESS_TOKEN_HEADER",
    "ACCESS_TOKEN_QUERY",
    "CONNECT_TIMEOUT",
    "WS_MAX_SIZE",
    "PortTarget",
    "PortTargets",
    "SandboxAccess",
    "SandboxProxy",
    "TargetsGetter",
]

log = logging.getLogger(__name__)

ACCESS_TOKEN_HEADER = "X-Stockade-Access-Token"
ACCESS_TOKEN_QUERY = "stockade_token"

# Sandboxes are on this machine: a connect that takes seconds means nothing answers (a
# dropped SYN), and a client should hear that rather than wait.
CONNECT_TIMEOUT = 5.0
# The same cap as the API's own WebSockets (uvicorn's ws_max_size): one message is held
# whole in memory, so it has to be bounded.
WS_MAX_SIZE = 16 * 1024 * 1024
# Connections to all sandboxes together, HTTP and WebSocket alike. Streams (SSE, long
# downloads, WebSockets) each hold one for their whole life, so this is generous; past it a
# request waits _POOL_TIMEOUT, then 503. Each one costs the server two file descriptors
# (client and sandbox side): an operator with a higher open-files limit may raise it.
_MAX_CONNECTIONS = 1024
_MAX_CONNECTIONS_ENV = "STOCKADE_PROXY_MAX_CONNECTIONS"
_POOL_TIMEOUT = 10.0

_PROXY_PREFIX = b"/proxy/"
# The first label of a routed Host: "{port}-{sandbox id}".
_HOST_LABEL = re.compile(r"^(\d{1,5})-(sb-[0-9a-f]{16})$")

# RFC 9110 §7.6.1: these describe one hop and are never forwarded (nor the headers that
# Connection names). proxy-connection is the non-standard spelling some clients still send.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
    b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
})  # fmt: skip
_TOKEN_HEADER = ACCESS_TOKEN_HEADER.lower().encode()
# Compared against when there is no real token to compare with (no such sandbox), so that
# every refusal takes the same path.
_NO_TOKEN = secrets.token_bytes(32)
_HOW = (
    f"send the sandbox's access token in the {ACCESS_TOKEN_HEADER} header or the "
    f"{ACCESS_TOKEN_QUERY} query parameter (?{ACCESS_TOKEN_QUERY}=<token>)"
)
# Set by this proxy; a client's own values would let it claim another origin.
_FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix"}
)
# Belong to one WebSocket handshake; the upstream one is made by the websockets client.
_WS_HANDSHAKE = frozenset({
    b"host", b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol", b"sec-websocket-accept", b"user-agent",
})  # fmt: skip
# The front server (uvicorn) writes its own Date and Server: a second copy would be sent.
_RESPONSE_DROP = frozenset({b"date", b"server"})
# What is left of an upgrade answer that the client's own handshake can carry (cookies).
_WS_ACCEPT_DROP = _RESPONSE_DROP | _WS_HANDSHAKE | {b"content-length", b"content-type"}


class SandboxAccess(Protocol):
    """What the proxy reads of a sandbox's record to decide who may reach its ports."""

    @property
    def ports(self) -> Sequence[ExposedPort]:
        """The exposed ports."""
        ...

    @property
    def access_token(self) -> str | None:
        """The token that opens the sandbox's non-public ports."""
        ...


class PortTargets(Protocol):
    """Finds the address of a sandbox's exposed port (implemented by the sandbox service)."""

    async def get(self, sandbox_id: str) -> SandboxAccess:
        """The sandbox's record as it is, for the access check.

        Must have no side effects on the sandbox: it runs for callers who have not shown a
        token yet, so it never resumes, wakes or counts as activity. Raises
        :class:`~stockade.errors.NotFoundError` for an unknown sandbox.
        """
        ...

    async def resolve(self, sandbox_id: str, port: int) -> PortTarget:
        """The target of ``port`` in ``sandbox_id``, the sandbox made ready for traffic.

        Called only once the caller may reach the port. Raises
        :class:`~stockade.errors.NotFoundError` for an unknown sandbox or a port that was not
        exposed, and :class:`~stockade.errors.SandboxTerminatedError` for a sandbox that is
        no longer running. Called once per request: keep it cheap.
        """
        ...


TargetsGetter = Callable[[], PortTargets | None]
"""Returns the :class:`PortTargets`, or ``None`` while the server is still starting."""


class _ClientGone(Exception):
    """The client disconnected before it had sent its whole request body."""


@dataclass(frozen=True)
class Route:
    """A request addressed to a sandbox port, as the proxy will forward it."""

    sandbox_id: str
    port: int
    path: bytes  # the upstream path, still percent-encoded as received
    prefix: str  # the path prefix that was removed ("" for Host routing)
    redirect: bool = False  # "/proxy/{id}/{port}" without the slash that relative links need


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value)
    return None


def _match(scope: Scope) -> Route | None:
    """The sandbox port ``scope`` is addressed to; ``None`` for a request to the API.

    Raises :class:`InvalidArgumentError` or :class:`NotFoundError` for a malformed
    ``/proxy/`` path, so it is answered with an error that shows the right shape.
    """
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    host = (_header(scope, b"host") or b"").decode("latin-1")
    if host and not host.startswith("["):  # an IPv6 literal has no labels
        label = host.split(":", 1)[0].split(".", 1)[0].lower()
        found = _HOST_LABEL.match(label)
        if found:
            port = port_number(found.group(1))
            return Route(found.group(2), port, raw_path or b"/", "")
    if not (raw_path.startswith(_PROXY_PREFIX) or raw_path == _PROXY_PREFIX.rstrip(b"/")):
        return None
    parts = raw_path[len(_PROXY_PREFIX) :].split(b"/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise NotFoundError(
            f"no such route: {scope['path']}; address a sandbox port as "
            "/proxy/{sandbox_id}/{port}/{path}, e.g. /proxy/sb-0123456789abcdef/8080/"
        )
    sandbox_id = unquote(parts[0].decode("latin-1"))
    port = port_number(parts[1].decode("latin-1"))
    prefix = f"/proxy/{sandbox_id}/{port}"
    if len(parts) == 2:
        return Route(sandbox_id, port, b"/", prefix, redirect=True)
    return Route(sandbox_id, port, b"/" + parts[2], prefix)


def port_number(text: str) -> int:
    if text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    raise InvalidArgumentError(f"port must be a number from 1 to 65535, got {text!r}")


def _split_query(query: bytes) -> tuple[bytes, str | None]:
    """The query without ``stockade_token``, and that token; other bytes are kept as sent."""
    kept: list[bytes] = []
    token: str | None = None
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        if unquote_plus(name.decode("latin-1")) == ACCESS_TOKEN_QUERY:
            token = unquote_plus(value.decode("latin-1"))
        elif part:
            kept.append(part)
    return b"&".join(kept), token


def _given_token(scope: Scope, query_token: str | None) -> bytes:
    """The access token the client sent (the header wins over the query); empty: none."""
    header = _header(scope, _TOKEN_HEADER)
    if header is not None:
        return header.strip()
    return query_token.encode() if query_token else b""


def _check_token(given: bytes, expected: str | None) -> None:
    """Refuse unless ``given`` is ``expected``, with answers that do not depend on why.

    ``expected`` is None when there is no such sandbox: the caller hears the same as for a
    wrong token, and the messages name neither the sandbox nor the port (both came from
    the caller anyway), so no answer tells which sandboxes exist or which ports they expose.
    """
    if not given:
        raise AuthenticationError(
            f"this sandbox port is private: {_HOW}; a port exposed with public=True needs none"
        )
    # Bytes: compare_digest refuses str with non-ASCII characters, which a client controls.
    matches = hmac.compare_digest(given, expected.encode() if expected else _NO_TOKEN)
    if not (matches and expected):
        raise StockadeError(
            f"wrong access token for this sandbox port: {_HOW}",
            code="forbidden",
            status=403,
        )


async def _authorize(targets: PortTargets, route: Route, given: bytes) -> None:
    """Refuse a request that may not reach ``route``, from the record alone.

    Nothing here touches the sandbox (see :meth:`PortTargets.get`): a paused sandbox stays
    paused, a dozing one dozes on and the idle clock keeps running for a caller without the
    token. A public port needs no token.
    """
    try:
        record: SandboxAccess | None = await targets.get(route.sandbox_id)
    except NotFoundError:
        record = None
    if record is not None and any(
        p.port == route.port and p.public for p in record.ports
    ):
        return
    _check_token(given, record.access_token if record is not None else None)


def not_listening(route: Route) -> StockadeError:
    return StockadeError(
        f"nothing is listening on port {route.port} in sandbox {route.sandbox_id}: "
        f"start a server bound to 0.0.0.0:{route.port}",
        code="bad_gateway",
        status=502,
    )


def _bad_gateway(route: Route, exc: BaseException) -> StockadeError:
    detail = str(exc) or type(exc).__name__
    return StockadeError(
        f"the server on port {route.port} in sandbox {route.sandbox_id} did not answer "
        f"properly: {detail}",
        code="bad_gateway",
        status=502,
    )


def unavailable() -> StockadeError:
    return StockadeError(
        "the server is still starting and cannot reach sandboxes yet; try again in a moment",
        code="unavailable",
        status=503,
    )


async def refuse(scope: Scope, receive: Receive, send: Send, err: StockadeError) -> None:
    """Answer ``err`` as the API's JSON error, on HTTP or before a WebSocket handshake.

    An internal error is logged, with the exception being handled, under a request ID that
    the answer carries too (as the API's own 500s do).
    """
    request_id = None
    if err.code == "internal":
        request_id = "req-" + secrets.token_hex(6)
        log.error("proxying %s failed [%s]", scope.get("path"), request_id, exc_info=True)
    response = error_response(err.status or 500, err.code, err.message, request_id)
    await _send_response(scope, receive, send, response, err)


async def _send_response(
    scope: Scope, receive: Receive, send: Send, response: Response, err: StockadeError
) -> None:
    if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
        # Starlette sends a response on a WebSocket scope as a handshake denial.
        await response(scope, receive, send)
    else:
        # Without the denial extension only a close before accept is possible; the
        # reason is cut to the 123 bytes a close frame can carry.
        code = 1008 if err.status < 500 else 1011
        reason = err.message.encode()[:123].decode(errors="ignore")
        await send({"type": "websocket.close", "code": code, "reason": reason})


def _internal() -> StockadeError:
    return StockadeError(
        "internal server error while proxying to a sandbox; the server log has details",
        code="internal",
        status=500,
    )


def _refusal(exc: Exception) -> StockadeError:
    """How to answer ``exc``; call :func:`refuse` with it inside the ``except`` block, so
    that an internal error is logged with its traceback."""
    return exc if isinstance(exc, StockadeError) else _internal()


def _too_many() -> StockadeError:
    return StockadeError(
        "too many connections to sandboxes are open on this server; try again",
        code="unavailable",
        status=503,
    )


def _max_connections() -> int:
    """The connection cap: ``STOCKADE_PROXY_MAX_CONNECTIONS`` if set, else the default."""
    raw = os.environ.get(_MAX_CONNECTIONS_ENV, "").strip()
    if not raw:
        return _MAX_CONNECTIONS
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    # Read when the app builds its middleware, where an exception would turn every
    # request into a 500: say so in the log and go on with the default.
    log.warning(
        "%s=%r is not a positive whole number; using %d", _MAX_CONNECTIONS_ENV, raw,
        _MAX_CONNECTIONS,
    )  # fmt: skip
    return _MAX_CONNECTIONS


def _end_to_end(
    headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """``headers`` without hop-by-hop ones, those Connection names, and ``drop``."""
    pairs = [(bytes(k).lower(), bytes(v)) for k, v in headers]
    named = {
        token.strip().lower()
        for key, value in pairs
        if key == b"connection"
        for token in value.split(b",")
        if token.strip()
    }
    excluded = _HOP_BY_HOP | named | drop
    return [(k, v) for k, v in pairs if k not in excluded]


def _upstream_headers(
    scope: Scope, target: PortTarget, route: Route, drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """The client's end-to-end headers, as the sandbox's server should see them.

    The access token (header; the query's is removed by :func:`_split_query`) and an
    ``Authorization`` that carries the server's admin token are the proxy's business: the
    app in the sandbox, which runs untrusted code, must never see either. Any other
    ``Authorization`` is the app's own and goes on.
    """
    raw = scope.get("headers", [])
    headers = _end_to_end(raw, drop | _FORWARDED | {b"host", b"expect", _TOKEN_HEADER})
    if any(k == b"authorization" for k, _ in headers):
        admin = _admin_token(scope)
        headers = [
            (k, v) for k, v in headers if k != b"authorization" or not _is_admin_bearer(v, admin)
        ]
    if b"host" not in drop:  # the websockets client writes its own
        headers.append((b"host", f"{target.host}:{target.port}".encode()))
    # Behind a trusted proxy uvicorn already rewrote client and scheme from its headers.
    client = scope.get("client")
    chain = [v.decode("latin-1") for k, v in raw if bytes(k).lower() == b"x-forwarded-for"]
    if client:
        chain.append(str(client[0]))
    if chain:
        headers.append((b"x-forwarded-for", ", ".join(chain).encode("latin-1")))
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", ""), scope.get("scheme"))
    headers.append((b"x-forwarded-proto", str(scheme or "http").encode()))
    original_host = _header(scope, b"host")
    if original_host:
        headers.append((b"x-forwarded-host", original_host))
    if route.prefix:
        headers.append((b"x-forwarded-prefix", route.prefix.encode("latin-1")))
    return headers


def _admin_token(scope: Scope) -> bytes | None:
    """The server's admin token, from the app the request came in through (Starlette puts
    itself in ``scope["app"]``); None when it is not known."""
    return server_token(scope.get("app"))


def _is_admin_bearer(value: bytes, admin: bytes | None) -> bool:
    """Whether the ``Authorization`` value ``value`` is ``Bearer <admin>`` or carries a
    Stockade API key: neither may ever reach a sandbox's app.

    With the admin token unknown every bearer token counts as one: dropping an app's own
    header now and then is better than handing the admin token to a sandbox.
    """
    given = bearer_credentials(value)
    if given is None:
        return False
    return admin is None or is_key(given) or hmac.compare_digest(given, admin)


class SandboxProxy:
    """ASGI middleware: requests for a sandbox port go to the sandbox, the rest to ``app``.

    ``targets_getter`` returns the :class:`PortTargets` (``None`` until the server has
    started: such requests get a 503). One :class:`httpx.AsyncClient` is shared by all
    requests; it is made on first use and closed by :meth:`aclose`, which also runs when the
    wrapped app finishes its lifespan shutdown. The proxy lives in one event loop.

    Example::

        app = FastAPI()
        app.state.port_targets = service  # a PortTargets: `get(id)` and `resolve(id, port)`
        app.add_middleware(SandboxProxy, targets_getter=lambda: app.state.port_targets)
        # GET http://127.0.0.1:7423/proxy/sb-0123456789abcdef/8080/?stockade_token=...
    """

    def __init__(
        self, app: ASGIApp, targets_getter: TargetsGetter, max_connections: int | None = None
    ) -> None:
        self.app = app
        self.targets_getter = targets_getter
        self._http: httpx.AsyncClient | None = None
        self.max_connections = max_connections or _max_connections()
        # One slot per connection to a sandbox, taken for a request's (or a WebSocket's)
        # whole life: httpx's own pool limit sees only HTTP, and a WebSocket left out of
        # the count would let a client hold any number of connections (and file
        # descriptors) open.
        self._slots = asyncio.Semaphore(self.max_connections)

    async def aclose(self) -> None:
        """Close the pooled upstream connections; a later request opens new ones."""
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                # The sandbox network is local: an environment proxy must never see it.
                trust_env=False,
                # No read or write timeout: a stream may rightly stay silent for hours.
                timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT, pool=_POOL_TIMEOUT),
                limits=httpx.Limits(
                    max_connections=self.max_connections, max_keepalive_connections=64
                ),
                follow_redirects=False,
            )
            # httpx adds its own Accept, Accept-Encoding, Connection and User-Agent to
            # every request; a proxy must send only what the client sent (an Accept-Encoding
            # the client never offered would get it a body it cannot decode).
            for name in list(self._http.headers):
                del self._http.headers[name]
        return self._http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            route = _match(scope)
        except StockadeError as err:
            await refuse(scope, receive, send, err)
            return
        if route is None:
            await self.app(scope, receive, send)
            return
        if route.redirect and scope["type"] == "http":
            await self._redirect(scope, receive, send, route)
            return
        query, query_token = _split_query(scope.get("query_string", b""))
        given = _given_token(scope, query_token)
        try:
            targets = self.targets_getter()
            if targets is None:
                raise unavailable()
            # The token first, from the record alone: resolve() makes the sandbox ready
            # (resumes, wakes, counts activity), which only a caller with the token may do.
            await _authorize(targets, route, given)
            # Then a slot, so that a full server does not resume a sandbox it cannot serve.
            await self._take_slot()
        except Exception as exc:
            await refuse(scope, receive, send, _refusal(exc))
            return
        try:
            try:
                target = await targets.resolve(route.sandbox_id, route.port)
                if not target.public:
                    # Again, on the record as it is now: the port may have turned private.
                    _check_token(given, target.access_token)
            except Exception as exc:
                await refuse(scope, receive, send, _refusal(exc))
                return
            if scope["type"] == "http":
                await self._http_request(scope, receive, send, route, target, query)
            else:
                await _proxy_websocket(scope, receive, send, route, target, query)
        finally:
            self._slots.release()

    async def _take_slot(self) -> None:
        """Take a connection slot, waiting up to ``_POOL_TIMEOUT`` for one to come free."""
        try:
            async with asyncio.timeout(_POOL_TIMEOUT):
                await self._slots.acquire()
        except TimeoutError:
            raise _too_many() from None

    def _closing_on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        return wrapped

    async def _redirect(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        # A page served at /proxy/{id}/8080 would resolve its relative links one level too
        # high; with the slash they stay inside the sandbox's prefix.
        query = scope.get("query_string", b"")
        location = route.prefix + "/" + ("?" + query.decode("latin-1") if query else "")
        await Response(status_code=307, headers={"location": location})(scope, receive, send)

    async def _http_request(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        target: PortTarget,
        query: bytes,
    ) -> None:
        client = self._client()
        has_body = (
            _header(scope, b"content-length") is not None
            or _header(scope, b"transfer-encoding") is not None
        )
        body_read = asyncio.Event()
        body = _request_body(receive, body_read) if has_body else None
        if body is None:
            body_read.set()
        url = httpx.URL(
            scheme="http",
            host=target.host,
            port=target.port,
            raw_path=route.path + (b"?" + query if query else b""),
        )
        request = client.build_request(
            scope["method"], url, headers=_upstream_headers(scope, target, route), content=body
        )
        try:
            try:
                upstream = await client.send(request, stream=True)
            except _ClientGone:
                return
            except (httpx.ConnectError, httpx.ConnectTimeout):
                await refuse(scope, receive, send, not_listening(route))
                return
            except httpx.PoolTimeout:
                await refuse(scope, receive, send, _too_many())
                return
            except httpx.HTTPError as exc:
                await refuse(scope, receive, send, _bad_gateway(route, exc))
                return
            except Exception:
                await refuse(scope, receive, send, _internal())
                return
            try:
                await self._respond(upstream, receive, send, body_read)
            except (httpx.HTTPError, OSError) as exc:
                # The status line is sent: all that is left is to cut the connection, so
                # that the client sees a truncated body rather than a complete one.
                log.warning(
                    "stream from port %s of %s broke off: %s", route.port, route.sandbox_id, exc
                )
            finally:
                await upstream.aclose()
        finally:
            if body is not None:
                await body.aclose()

    async def _respond(
        self, upstream: httpx.Response, receive: Receive, send: Send, body_read: asyncio.Event
    ) -> None:
        headers = _end_to_end(upstream.headers.raw, _RESPONSE_DROP)
        await send(
            {"type": "http.response.start", "status": upstream.status_code, "headers": headers}
        )

        async def pump() -> None:
            # aiter_raw: the bytes exactly as sent (still compressed, if they were), in
            # the pieces they arrive in, so each event of a stream is passed on at once.
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def client_left() -> None:
            # uvicorn drops what is sent after a disconnect without an error, so an
            # endless stream would be read from the sandbox forever: watch for it instead.
            # receive() is only ours once the request body has been read.
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass

        await first_of(pump(), client_left())


async def _request_body(receive: Receive, done: asyncio.Event) -> AsyncGenerator[bytes, None]:
    """The client's request body, chunk by chunk as it arrives."""
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk: bytes = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return
    finally:
        done.set()


# -- WebSocket proxy ---------------------------------------------------------------------


async def _proxy_websocket(
    scope: Scope, receive: Receive, send: Send, route: Route, target: PortTarget, query: bytes
) -> None:
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return
    path = route.path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
    headers = [
        (k.decode("latin-1"), v.decode("latin-1"))
        for k, v in _upstream_headers(scope, target, route, drop=_WS_HANDSHAKE)
    ]
    user_agent = _header(scope, b"user-agent")
    offered = [Subprotocol(p) for p in scope.get("subprotocols") or []]
    try:
        upstream = await websockets.asyncio.client.connect(
            f"ws://{target.host}:{target.port}{path}",
            additional_headers=headers,
            user_agent_header=user_agent.decode("latin-1") if user_agent else None,
            subprotocols=offered or None,
            proxy=None,  # never an environment proxy: the sandbox network is local
            open_timeout=CONNECT_TIMEOUT,
            # Pings find a sandbox that vanished without a FIN; generous, so that a busy
            # app is not cut off for answering late.
            ping_interval=30,
            ping_timeout=60,
            close_timeout=5,
            max_size=WS_MAX_SIZE,
            max_queue=4,  # bounds the memory of a slow client to a few messages
            # Compression between two processes on one machine would only burn CPU; the
            # client side negotiates its own with uvicorn.
            compression=None,
        )
    except websockets.exceptions.InvalidStatus as exc:
        # The app itself refused the upgrade (a 404, its own auth): pass its answer on.
        answer = exc.response
        err = _bad_gateway(route, exc)
        content_type = answer.headers.get("Content-Type", "text/plain; charset=utf-8")
        response = Response(
            bytes(answer.body or b""),
            status_code=answer.status_code,
            headers={"content-type": content_type},
        )
        await _send_response(scope, receive, send, response, err)
        return
    except (OSError, TimeoutError):
        await refuse(scope, receive, send, not_listening(route))
        return
    except websockets.exceptions.WebSocketException as exc:
        await refuse(scope, receive, send, _bad_gateway(route, exc))
        return
    try:
        # The app's own upgrade headers (cookies, say) go to the client with its handshake.
        handshake = upstream.response
        raw = [] if handshake is None else list(handshake.headers.raw_items())
        accept_headers = _end_to_end(
            [(k.encode("latin-1"), v.encode("latin-1")) for k, v in raw], _WS_ACCEPT_DROP
        )
        accept = {"subprotocol": upstream.subprotocol, "headers": accept_headers}
        await send({"type": "websocket.accept", **accept})
        await relay_websocket(receive, send, upstream)
    finally:
        await upstream.close()


