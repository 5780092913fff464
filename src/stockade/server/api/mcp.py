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
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import HTTPConnection, Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from ...errors import ServerError, StockadeError
from ...mcp import Connection, build_server
from ...mcp.tools import MAX_HTTP_SESSIONS
from ..config import ServerConfig
from .deps import bearer_credentials, check_token
from .errors import error_response

__all__ = ["McpEndpoint", "loopback_url", "route"]

SESSION_HEADER = "mcp-session-id"


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

    def __init__(self) -> None:
        self._manager: StreamableHTTPSessionManager | None = None
        # Session ID -> SHA-256 of the Authorization header that opened it.
        self._owners: OrderedDict[str, bytes] = OrderedDict()

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

        server = build_server(connection_for, http=True)
        server.streamable_http_app()  # makes server.session_manager
        async with server.session_manager.run():
            self._manager = server.session_manager
            try:
                yield
            finally:
                self._manager = None

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
            known = self._owners.get(session_id)
            if known is not None and not hmac.compare_digest(known, owner):
                message = (
                    f"no MCP session {session_id[:64]!r} for this credential; start a new "
                    "session (initialize) with yours"
                )
                await error_response(404, "not_found", message)(scope, receive, send)
                return
            await self._manager.handle_request(scope, receive, send)
            if scope.get("method") == "DELETE":
                self._owners.pop(session_id, None)
            return

        async def noting_the_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                for key, value in message.get("headers", []):
                    if key.lower() == SESSION_HEADER.encode():
                        self._remember(value.decode("latin-1"), owner)
            await send(message)

        await self._manager.handle_request(scope, receive, noting_the_session)

    def _remember(self, session_id: str, owner: bytes) -> None:
        self._owners[session_id] = owner
        while len(self._owners) > MAX_HTTP_SESSIONS:
            # The oldest; its session has most likely ended (the tools also refuse a
            # second credential on their own, so forgetting one here opens nothing).
            self._owners.popitem(last=False)


def route(endpoint: McpEndpoint) -> Route:
    """The ``/mcp`` route: POST (messages), GET (the server's event stream), DELETE (end
    the session), as the streamable HTTP transport has them; not in the OpenAPI schema."""
    return Route("/mcp", endpoint, methods=["GET", "POST", "DELETE"], include_in_schema=False)
