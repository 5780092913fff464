"""The IO primitives that differ between the sync and async SDKs, written twice by hand.

Everything in ``_async/`` is turned into ``_sync/`` by scripts/gen_sync.py, which renames
``AsyncWebSocket`` to ``WebSocket`` and ``AsyncCondition`` to ``Condition``. The pairs
below are the only code that cannot be generated: they wrap ``websockets``' asyncio and
threaded clients behind one shape, and translate websockets' errors (the one place that
does) into Stockade's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from enum import Enum

import websockets.asyncio.client
import websockets.exceptions
import websockets.sync.client

from stockade._base import CONNECT_TIMEOUT, transport_error

__all__ = ["NOTHING", "AsyncCondition", "AsyncWebSocket", "Condition", "Nothing", "WebSocket"]

# The coroutine and thread flavours of a condition variable share their whole API
# (``with``/``async with``, ``wait``, ``notify_all``), so generated code can use either.
AsyncCondition = asyncio.Condition
Condition = threading.Condition

# Keepalive pings would fail a long silent exec (`sleep 600`) whenever the server is
# busy enough to answer a ping late; the server ends the stream itself, so rely on that.
_PING_INTERVAL = None
# Output frames come from our own server, which sizes them; any cap here could only break
# a legitimate large frame.
_MAX_SIZE = None
_CLOSE_TIMEOUT = 5.0


class Nothing(Enum):
    """The marker :meth:`WebSocket.recv` returns when no message is waiting."""

    NOTHING = "nothing"


NOTHING = Nothing.NOTHING


class AsyncWebSocket:
    """One WebSocket to the server (asyncio). Safe for one receiver and many senders."""

    def __init__(self, conn: websockets.asyncio.client.ClientConnection, url: str) -> None:
        self._conn = conn
        self._url = url
        self.close_reason = ""

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        headers: dict[str, str],
        action: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> AsyncWebSocket:
        """Open the socket; raises the Stockade error for a refused or failed handshake."""
        try:
            conn = await websockets.asyncio.client.connect(
                url,
                additional_headers=headers,
                # ws:// takes no context; wss:// without one would load the CA store anew.
                ssl=ssl_context if url.startswith("wss://") else None,
                open_timeout=CONNECT_TIMEOUT,
                ping_interval=_PING_INTERVAL,
                max_size=_MAX_SIZE,
                close_timeout=_CLOSE_TIMEOUT,
                compression=None,
            )
        except (websockets.exceptions.WebSocketException, OSError, TimeoutError) as exc:
            raise transport_error(exc, url=url, action=action) from exc
        return cls(conn, url)

    async def recv(self, *, block: bool = True) -> str | bytes | Nothing | None:
        """The next message; ``None`` once the socket closed, ``NOTHING`` if none waits."""
        try:
            if block:
                return await self._conn.recv()
            # A zero timeout still returns a message that is already queued: recv() only
            # yields to the loop, where the timeout fires, when it has to wait.
            async with asyncio.timeout(0):
                return await self._conn.recv()
        except TimeoutError:
            return NOTHING
        except websockets.exceptions.ConnectionClosed as exc:
            self.close_reason = _describe_close(exc)
            return None

    async def send(self, message: str | bytes) -> bool:
        """Send one message; ``False`` when the socket has already closed."""
        try:
            await self._conn.send(message)
        except websockets.exceptions.ConnectionClosed:
            return False
        except (websockets.exceptions.WebSocketException, OSError) as exc:
            raise transport_error(exc, url=self._url, action="sending to an exec") from exc
        return True

    async def close(self) -> None:
        """Close the socket (the server then kills the process if it still runs)."""
        # Closing a broken socket may fail: it is gone either way.
        with contextlib.suppress(websockets.exceptions.WebSocketException, OSError):
            await self._conn.close()


class WebSocket:
    """One WebSocket to the server (threads). Safe for one receiver and many senders."""

    def __init__(self, conn: websockets.sync.client.ClientConnection, url: str) -> None:
        self._conn = conn
        self._url = url
        self.close_reason = ""

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        headers: dict[str, str],
        action: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> WebSocket:
        """Open the socket; raises the Stockade error for a refused or failed handshake."""
        try:
            conn = websockets.sync.client.connect(
                url,
                additional_headers=headers,
                # ws:// takes no context; wss:// without one would load the CA store anew.
                ssl=ssl_context if url.startswith("wss://") else None,
                open_timeout=CONNECT_TIMEOUT,
                ping_interval=_PING_INTERVAL,
                max_size=_MAX_SIZE,
                close_timeout=_CLOSE_TIMEOUT,
                compression=None,
                # The connection outlives this call (it is owned by a Process), so it cannot
                # be a `with` block; legacy=True is websockets' way to say so.
                legacy=True,
            )
        except (websockets.exceptions.WebSocketException, OSError, TimeoutError) as exc:
            raise transport_error(exc, url=url, action=action) from exc
        return cls(conn, url)

    def recv(self, *, block: bool = True) -> str | bytes | Nothing | None:
        """The next message; ``None`` once the socket closed, ``NOTHING`` if none waits."""
        try:
            return self._conn.recv(timeout=None if block else 0)
        except TimeoutError:
            return NOTHING
        except websockets.exceptions.ConnectionClosed as exc:
            self.close_reason = _describe_close(exc)
            return None

    def send(self, message: str | bytes) -> bool:
        """Send one message; ``False`` when the socket has already closed."""
        try:
            self._conn.send(message)
        except websockets.exceptions.ConnectionClosed:
            return False
        except (websockets.exceptions.WebSocketException, OSError) as exc:
            raise transport_error(exc, url=self._url, action="sending to an exec") from exc
        return True

    def close(self) -> None:
        """Close the socket (the server then kills the process if it still runs)."""
        # Closing a broken socket may fail: it is gone either way.
        with contextlib.suppress(websockets.exceptions.WebSocketException, OSError):
            self._conn.close()


def _describe_close(exc: websockets.exceptions.ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "the connection dropped without a close frame"
    return f"closed with code {int(frame.code)}" + (f": {frame.reason}" if frame.reason else "")
