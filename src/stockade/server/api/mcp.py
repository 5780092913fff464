"""``/mcp``: the MCP tools (``stockade.mcp``) over streamable HTTP, for agents.

The tools are the SDK-side ones that ``stockade mcp`` serves over stdio, built once in
``stockade.mcp`` so the two transports cannot drift. Here they act with the caller's own
bearer credential against this server's API over loopback: every call the tools make is
authenticated, role-checked, tenant-scoped, quota-checked and audited by the same routes as
any other client's, so an agent can do through MCP exactly what its key may do, never what
the server's admin token could. The credential is checked here first, before any MCP work
(a session, a parse of the body): 401 with the API's JSON error otherwise.

Lifetime: :meth:`McpEndpoint.running` (entered by the app's lifespan) runs the MCP SDK's
session manager; each MCP session's sandboxes end with it, or by their idle timeout.

Sessions per credential: each credential may hold ``sessions_per_credential`` open sessions
(``$STOCKADE_MCP_SESSIONS_PER_KEY``, default 32); the next ``initialize`` gets 429
``quota_exceeded``, so one tenant cannot take every session of the server's global limit
(``MAX_HTTP_SESSIONS``, the MCP SDK's own 503, kept as a backstop). A slot is taken when an
opening request arrives and given back when the session ends, whichever way: a ``DELETE``,
the idle timeout, the SDK refusing or dropping it (see :class:`SessionSlots`).

Concurrency: the endpoint's state is touched only from the event loop's thread, and never
across an ``await`` between a check and its update.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import HTTPConnection, Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from ...errors import ServerError, StockadeError
from ...mcp import Connection, SessionDefaults, build_server
from ...mcp.tools import MAX_HTTP_SESSIONS
from ..config import ServerConfig
from .deps import bearer_credentials, check_token
from .errors import error_response

__all__ = [
    "DEFAULT_SESSIONS_PER_CREDENTIAL",
    "McpEndpoint",
    "SessionSlots",
    "loopback_url",
    "route",
    "sessions_per_credential_from_env",
]

log = logging.getLogger(__name__)

SESSION_HEADER = "mcp-session-id"
# Enough for an agent with a few parallel workers; far below MAX_HTTP_SESSIONS, so a few
# dozen tenants fill the server before any one of them does.
DEFAULT_SESSIONS_PER_CREDENTIAL = 32
_SESSIONS_ENV = "STOCKADE_MCP_SESSIONS_PER_KEY"
_IDLE_S = round(SessionDefaults().idle_timeout)  # the HTTP sessions' idle timeout (tools.py)
# Sessions whose slots are tracked at most: the SDK's limit of live ones, and as many again
# for ones it has dropped whose tasks are still ending their sandboxes.
_MAX_TRACKED = 2 * MAX_HTTP_SESSIONS


def sessions_per_credential_from_env() -> int:
    """``$STOCKADE_MCP_SESSIONS_PER_KEY`` if set to a positive whole number, else the
    default."""
    raw = os.environ.get(_SESSIONS_ENV, "").strip()
    if not raw:
        return DEFAULT_SESSIONS_PER_CREDENTIAL
    if raw.isascii() and raw.isdigit() and int(raw) > 0:
        return int(raw)
    # Read when the app is built, where an exception would stop the server for a typo in
    # a limit that has a safe default: say so in the log and go on with the default.
    log.warning(
        "%s=%r is not a positive whole number; using %d",
        _SESSIONS_ENV, raw, DEFAULT_SESSIONS_PER_CREDENTIAL,
    )  # fmt: skip
    return DEFAULT_SESSIONS_PER_CREDENTIAL


class _Slot:
    """One session a credential holds, from its opening request until it ends."""

    __slots__ = ("owner", "released", "session_id")

    def __init__(self, owner: bytes) -> None:
        self.owner = owner
        self.session_id: str | None = None  # once the MCP SDK has named the session
        self.released = False


class SessionSlots:
    """How many MCP sessions each credential holds, and which credential holds each one.

    Every slot that :meth:`admit` hands out must reach :meth:`release` (it is idempotent,
    so each way a session can end may call it). IO-free; one event loop's thread only.
    """

    def __init__(self, per_credential: int) -> None:
        if per_credential <= 0:
            raise ValueError(f"per_credential must be positive, not {per_credential}")
        self.per_credential = per_credential
        self._held: dict[bytes, int] = {}  # credential hash -> open slots, never 0
        # Session ID -> its slot. Only slots not yet released are here, so it holds no
        # more than the sessions the SDK keeps (MAX_HTTP_SESSIONS) plus ones still
        # ending; :meth:`bind` bounds it anyway, against a bug leaking slots.
        self._sessions: OrderedDict[str, _Slot] = OrderedDict()

    def held(self, owner: bytes) -> int:
        return self._held.get(owner, 0)

    def admit(self, owner: bytes) -> _Slot | None:
        """A slot for a new session of ``owner``; None when it holds its limit already."""
        if self.held(owner) >= self.per_credential:
            return None
        self._held[owner] = self.held(owner) + 1
        return _Slot(owner)

    def bind(self, slot: _Slot, session_id: str) -> None:
        """``slot`` holds the session the MCP SDK named ``session_id``."""
        if slot.released:
            return
        slot.session_id = session_id
        self._sessions[session_id] = slot
        while len(self._sessions) > _MAX_TRACKED:
            # The oldest: only a slot leaked by a bug can be this old, as the SDK keeps
            # no more sessions than this. Its count is given back with it.
            self.release(self._sessions.popitem(last=False)[1])

    def owner_of(self, session_id: str) -> bytes | None:
        slot = self._sessions.get(session_id)
        return slot.owner if slot is not None else None

    def end(self, session_id: str) -> None:
        """The session ``session_id`` has ended: give its slot back."""
        slot = self._sessions.get(session_id)
        if slot is not None:
            self.release(slot)

    def release(self, slot: _Slot) -> None:
        if slot.released:
            return
        slot.released = True
        left = self.held(slot.owner) - 1
        if left > 0:
            self._held[slot.owner] = left
        else:
            self._held.pop(slot.owner, None)
        if slot.session_id is not None and self._sessions.get(slot.session_id) is slot:
            del self._sessions[slot.session_id]


# The slot of the request opening a session. The MCP SDK starts the session's task from
# within that request, so the task inherits this and its end (``on_session_end`` of
# build_server) knows which slot to give back, with no hook into the SDK's internals.
_opening: ContextVar[_Slot | None] = ContextVar("stockade_mcp_opening", default=None)


def loopback_url(config: ServerConfig) -> str:
    """The address this server answers itself on: its own, or loopback when it listens
    on every address."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(config.host, config.host)
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if config.tls else 'http'}://{host}:{config.port}"


def _loopback_verify(config: ServerConfig) -> ssl.SSLContext | bool:
    """Trust exactly the certificate this server serves: its name may not cover the
    loopback address, but no other certificate can be on our own port."""
    if config.tls is None:
        return True
    context = ssl.create_default_context(cafile=str(config.tls.cert))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class McpEndpoint:
    """The ASGI app of ``/mcp``: checks the bearer credential, then hands the request to
    the MCP SDK's streamable HTTP session manager."""

    def __init__(self, sessions_per_credential: int | None = None) -> None:
        self._manager: StreamableHTTPSessionManager | None = None
        # Keyed by the SHA-256 of the Authorization header that opened each session.
        self.slots = SessionSlots(sessions_per_credential or sessions_per_credential_from_env())

    @asynccontextmanager
    async def running(self, config: ServerConfig) -> AsyncIterator[None]:
        url = loopback_url(config)
        verify = _loopback_verify(config)

        def connection_for(request: object) -> Connection:
            # The request each tool call came with; /mcp only lets authenticated ones in.
            if not isinstance(request, Request):
                raise ServerError("an MCP tool call over HTTP came without its request")
            header = request.headers.get("authorization", "").encode("latin-1")
            return Connection(
                url=url,
                token=(bearer_credentials(header) or b"").decode("latin-1"),
                verify=verify,
                public_url=str(request.base_url),
            )

        server = build_server(connection_for, http=True, on_session_end=self._session_ended)
        server.streamable_http_app()  # makes server.session_manager
        async with server.session_manager.run():
            self._manager = server.session_manager
            try:
                yield
            finally:
                self._manager = None

    def _session_ended(self) -> None:
        slot = _opening.get()
        if slot is not None:
            self.slots.release(slot)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = HTTPConnection(scope)
        try:
            check_token(conn)
        except StockadeError as exc:
            response = error_response(exc.status or 500, exc.code, exc.message)
            await response(scope, receive, send)
            return
        if self._manager is None:
            response = error_response(503, "unavailable", "the MCP endpoint is not running")
            await response(scope, receive, send)
            return
        # A session belongs to the credential that opened it: its sandboxes are that
        # caller's, and another valid credential holding its ID must not drive them.
        owner = hashlib.sha256(conn.headers.get("authorization", "").encode("latin-1")).digest()
        session_id = conn.headers.get(SESSION_HEADER)
        if session_id is not None:
            known = self.slots.owner_of(session_id)
            if known is not None and not hmac.compare_digest(known, owner):
                message = (
                    f"no MCP session {session_id[:64]!r} for this credential; start a new "
                    "session (initialize) with yours"
                )
                await error_response(404, "not_found", message)(scope, receive, send)
                return
            status: list[int] = []

            async def noting_the_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])
                await send(message)

            await self._manager.handle_request(scope, receive, noting_the_status)
            if scope.get("method") == "DELETE" and status and status[0] < 300:
                # Ended: its slot is free now, not only once its sandboxes are gone.
                self.slots.end(session_id)
            return

        slot = self.slots.admit(owner)
        if slot is None:
            limit = self.slots.per_credential
            message = (
                f"this credential already holds {limit} open MCP sessions, its limit "
                f"({_SESSIONS_ENV} on the server); end one to open another: send DELETE "
                f"/mcp with its Mcp-Session-Id header, or leave it idle for {_IDLE_S} s"
            )
            await error_response(429, "quota_exceeded", message)(scope, receive, send)
            return

        answered: list[int] = []

        async def noting_the_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])
                for key, value in message.get("headers", []):
                    if key.lower() == SESSION_HEADER.encode():
                        self.slots.bind(slot, value.decode("latin-1"))
            await send(message)

        opening = _opening.set(slot)
        try:
            await self._manager.handle_request(scope, receive, noting_the_session)
        finally:
            _opening.reset(opening)
            if slot.session_id is None or not answered or answered[0] >= 400:
                # No session came of it (not an initialize, the SDK's global limit, a
                # failure): the SDK keeps a session only when its opening request got
                # an answer under 400. Given back now, not once its task has wound down.
                self.slots.release(slot)


def route(endpoint: McpEndpoint) -> Route:
    """The ``/mcp`` route: POST (messages), GET (the server's event stream), DELETE (end
    the session), as the streamable HTTP transport has them; not in the OpenAPI schema."""
    return Route("/mcp", endpoint, methods=["GET", "POST", "DELETE"], include_in_schema=False)
