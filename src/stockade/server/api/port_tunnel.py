"""The raw TCP way in to a sandbox's exposed port: ``/v1/sandboxes/{id}/ports/{port}/connect``,
a WebSocket carrying one TCP connection, for ``stockade port-forward`` and anything else that is
not HTTP (databases, SSH). It is an API route, guarded by the admin token; the port's
public flag and access token do not apply. HTTP and WebSocket traffic goes through the
proxy in ingress.py instead.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from ...errors import StockadeError
from .deps import check_owner, check_token
from .ingress import (
    CONNECT_TIMEOUT,
    PortTargets,
    Route,
    not_listening,
    port_number,
    refuse,
    unavailable,
)
from .relay import first_of

__all__ = ["router"]

_READ_SIZE = 64 * 1024  # bytes read from the sandbox per WebSocket message

router = APIRouter(tags=["ports"])


@router.websocket("/v1/sandboxes/{sandbox_id}/ports/{port}/connect")
async def connect_port(websocket: WebSocket, sandbox_id: str, port: str) -> None:
    """One TCP connection to ``port`` in the sandbox, carried as binary WebSocket messages.

    Each binary message is written to the connection as is; an empty one means the client
    has no more to send (a TCP half-close, so a request-then-EOF client still gets its
    answer). When the sandbox closes its side the WebSocket closes with 1000; when the
    client closes the WebSocket the connection is closed. The admin token is required, and
    the port's public flag and access token do not apply.
    """
    try:
        await check_owner(websocket, check_token(websocket, "user"))
        route = Route(sandbox_id, port_number(port), b"", "")
        targets: PortTargets | None = getattr(websocket.app.state, "port_targets", None)
        if targets is None:
            raise unavailable()
        target = await targets.resolve(sandbox_id, route.port)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            raise not_listening(route) from None
    except StockadeError as err:
        await refuse(websocket.scope, websocket.receive, websocket.send, err)
        return
    try:
        await websocket.accept()
        await _bridge(websocket, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _bridge(
    websocket: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    async def client_to_sandbox() -> None:
        eof_sent = False
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data: bytes | None = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            if not data:
                # An empty message: the client is done sending (see connect_port).
                if not eof_sent and writer.can_write_eof():
                    writer.write_eof()
                eof_sent = True
                continue
            if eof_sent:
                continue  # data after the client's own EOF has nowhere to go
            writer.write(data)
            await writer.drain()

    async def sandbox_to_client() -> None:
        try:
            while data := await reader.read(_READ_SIZE):
                await websocket.send_bytes(data)
            code, reason = 1000, ""
        except OSError as exc:
            code, reason = 1011, f"the connection to the sandbox failed: {exc.strerror or exc}"
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close(code, reason[:123])

    # Either side dropping ends both: the caller closes the TCP connection.
    with contextlib.suppress(WebSocketDisconnect, OSError):
        await first_of(client_to_sandbox(), sandbox_to_client())
