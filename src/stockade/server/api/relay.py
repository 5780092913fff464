"""Relaying between two ends until either closes: what the port proxy and the TCP tunnel
share. Whichever side ends first ends the relay; the close is passed on to the other."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import websockets.asyncio.client
import websockets.exceptions
from starlette.types import Receive, Send

__all__ = ["first_of", "relay_websocket"]


async def first_of(*jobs: Coroutine[Any, Any, None]) -> None:
    """Run ``jobs`` until the first one ends; cancel the others and re-raise its error."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


def _sendable_close(code: int | None, fallback: int) -> int:
    """``code`` if a close frame may carry it; 1005/1006/1015 only describe a close."""
    if code is not None and (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code < 5000):
        return code
    return fallback


async def relay_websocket(
    receive: Receive, send: Send, upstream: websockets.asyncio.client.ClientConnection
) -> None:
    async def client_to_upstream() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                # 1006 (dropped) is not sendable: tell the app the client went away.
                code = _sendable_close(message.get("code"), 1001)
                await upstream.close(code, message.get("reason") or "")
                return
            if message["type"] != "websocket.receive":
                continue
            data: bytes | None = message.get("bytes")
            try:
                await upstream.send(data if data is not None else message.get("text") or "")
            except websockets.exceptions.ConnectionClosed:
                return  # upstream_to_client reports how the app closed

    async def upstream_to_client() -> None:
        try:
            async for data in upstream:
                if isinstance(data, str):
                    await send({"type": "websocket.send", "text": data})
                else:
                    await send({"type": "websocket.send", "bytes": data})
        except websockets.exceptions.ConnectionClosedError:
            pass  # a dropped connection or a protocol error: reported by the close below
        except OSError:
            return  # the client is gone; client_to_upstream closes the app's side
        if upstream.close_code is None:
            code, reason = 1011, "the connection to the sandbox dropped"
        else:
            code = _sendable_close(upstream.close_code, 1000)
            reason = upstream.close_reason or ""
        with contextlib.suppress(OSError):
            await send({"type": "websocket.close", "code": code, "reason": reason})

    # Whichever side closes first ends the relay; the close was passed on to the other.
    await first_of(client_to_upstream(), upstream_to_client())
