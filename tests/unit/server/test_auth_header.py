"""The admin token check on the wire: any Authorization header a client can send, however
malformed (no scheme, another scheme, bytes that are not ASCII, latin-1 garbage), is a 401
with the API's error body, never a 500.

The real Stockade app is served by uvicorn on 127.0.0.1 without its lifespan (so without
runsc): its services are stand-ins that hold the config, and requests are written as raw
bytes on a socket, since an HTTP client would refuse to send some of these headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn

from stockade.errors import NotFoundError
from stockade.server.app import create_app
from stockade.server.config import ServerConfig
from tests.unit.fakes import operator_access

pytestmark = pytest.mark.timeout(30)

TOKEN = "sk_test_0123456789abcdef"

MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"Bearer", id="scheme-only"),
    pytest.param(b"Bearer ", id="scheme-and-space"),
    pytest.param(b"garbage", id="garbage"),
    pytest.param(b"Basic " + b"dXNlcjpwYXNz", id="basic"),
    pytest.param(TOKEN.encode(), id="token-without-scheme"),
    pytest.param(b"Bearer \xff", id="latin-1-byte"),
    pytest.param(b"Bearer \xc3\xa9t\xc3\xa9", id="utf-8-text"),
    pytest.param(b"Bearer " + TOKEN.encode() + b"\xff", id="token-then-latin-1"),
    pytest.param(b"\xff\xfe\xfd", id="only-high-bytes"),
    pytest.param(b"Bearer wrong", id="wrong-token"),
    pytest.param(b"Bearer " + TOKEN[:-1].encode(), id="token-prefix"),
    pytest.param(b"Bearer " + TOKEN.encode() + b" extra", id="token-and-more"),
    pytest.param(b"Bearer " + b"x" * 6000, id="long"),
]


class FakeSandboxes:
    """Just enough of the sandbox service for the routes below, once past the token."""

    async def list(self, **_: Any) -> list[Any]:
        return []

    async def ready_for_use(self, sandbox_id: str) -> Any:
        raise NotFoundError(f"sandbox {sandbox_id} does not exist")


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[int]:
    """The Stockade app on a free loopback port, in this event loop; yields the port."""
    config = ServerConfig(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", token=TOKEN)
    app = create_app(config)
    app.state.services = SimpleNamespace(
        config=config, sandboxes=FakeSandboxes(), access=operator_access(config.token)
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None)
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(5):
            while not server.started:
                if task.done():
                    await task
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    async with serving(tmp_path) as port:
        yield port


async def exchange(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (a request without a body) and read the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return int(status_line.split()[1]), headers, body


def get(path: bytes, authorization: bytes | None, *, websocket: bool = False) -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    if websocket:
        lines += [
            b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ]  # fmt: skip
    if authorization is not None:
        lines.append(b"Authorization: " + authorization)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def assert_unauthorized(status: int, body: bytes) -> None:
    assert status == 401, body
    error = json.loads(body)["error"]
    assert error["code"] == "unauthorized"
    assert "Authorization: Bearer <token>" in error["message"]
    assert "request_id" not in error  # only internal errors carry one


@pytest.mark.parametrize("authorization", MALFORMED)
async def test_malformed_authorization_is_401(port: int, authorization: bytes) -> None:
    status, headers, body = await exchange(port, get(b"/v1/sandboxes", authorization))
    assert headers["content-type"] == "application/json"
    assert_unauthorized(status, body)


@pytest.mark.parametrize("authorization", MALFORMED)
@pytest.mark.parametrize(
    "path",
    [
        b"/v1/sandboxes/sb-0123456789abcdef/exec/ws",
        b"/v1/sandboxes/sb-0123456789abcdef/ports/80/connect",
    ],
    ids=["exec", "port-connect"],
)
async def test_malformed_authorization_refuses_websockets(
    port: int, path: bytes, authorization: bytes
) -> None:
    # Refused in the handshake, with the same answer as plain HTTP routes.
    status, _, body = await exchange(port, get(path, authorization, websocket=True))
    assert_unauthorized(status, body)


async def test_missing_authorization_is_401(port: int) -> None:
    status, _, body = await exchange(port, get(b"/v1/sandboxes", None))
    assert_unauthorized(status, body)
    assert json.loads(body)["error"]["message"].startswith("missing token")


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(b"Bearer " + TOKEN.encode(), id="exact"),
        pytest.param(b"bearer " + TOKEN.encode(), id="lower-case-scheme"),
        pytest.param(b"BEARER   " + TOKEN.encode(), id="upper-case-and-spaces"),
    ],
)
async def test_the_right_token_still_passes(port: int, authorization: bytes) -> None:
    # The other side of the tests above: the same requests with the token get through,
    # so their 401s come from the token check, not from a route that fails anyway.
    status, _, body = await exchange(port, get(b"/v1/sandboxes", authorization))
    assert (status, json.loads(body)) == (200, {"sandboxes": []})
    exec_ws = get(b"/v1/sandboxes/sb-0123456789abcdef/exec/ws", authorization, websocket=True)
    status, _, body = await exchange(port, exec_ws)
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
