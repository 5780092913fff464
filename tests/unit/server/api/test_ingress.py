"""The sandbox port proxy, the TCP bridge and ``stockade port-forward``, on the wire.

Everything runs on 127.0.0.1: a Starlette app on uvicorn stands in for a server inside a
sandbox (HTTP and WebSocket), an asyncio echo server for a TCP one, and the proxy is
wrapped around a small FastAPI app exactly as the Stockade app wires it, served by uvicorn
and driven by real httpx / websockets clients, so streaming is proven on a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
import websockets.asyncio.client
import websockets.exceptions
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from stockade import AsyncClient, NotFoundError, SandboxTerminatedError, StockadeError
from stockade.cli.ports import forward_port
from stockade.server.api.errors import BodyLimit, JsonByDefault, RequestIds, install_error_handlers
from stockade.server.api.ingress import WS_MAX_SIZE, PortTarget, SandboxProxy
from stockade.server.api.port_tunnel import router
from stockade.server.state.records import ExposedPort
from tests.unit.fakes import operator_access

pytestmark = pytest.mark.timeout(10)

SB = "sb-0123456789abcdef"
DEAD = "sb-deaddeaddeaddead"
ACCESS = "access-token-1"
TOKEN = "admin-token-1"
HTTP_PORT, PUBLIC_PORT, TCP_PORT, CLOSED_PORT = 8080, 8081, 5432, 9999
BLOCK = bytes(range(256)) * 256  # 64 KiB


@dataclass
class FakeRecord:
    """The part of a sandbox record that the proxy checks access on."""

    ports: list[ExposedPort]
    access_token: str | None


class FakeTargets:
    """The sandbox service's part: ``SB`` exposes a few ports, ``DEAD`` has ended.

    ``resolved`` lists the sandboxes that ``resolve`` (which resumes, wakes and counts
    activity in the real service) was called for.
    """

    def __init__(self, targets: dict[int, PortTarget]) -> None:
        self.targets = targets
        self.resolved: list[str] = []

    async def get(self, sandbox_id: str) -> FakeRecord:
        if sandbox_id not in (SB, DEAD):
            raise NotFoundError(f"sandbox {sandbox_id} does not exist")
        ports = [ExposedPort(n, t.public) for n, t in self.targets.items()]
        return FakeRecord(ports, ACCESS)

    async def resolve(self, sandbox_id: str, port: int) -> PortTarget:
        self.resolved.append(sandbox_id)
        if sandbox_id == DEAD:
            raise SandboxTerminatedError(f"sandbox {DEAD} is terminated (reason: timeout)")
        if sandbox_id != SB:
            raise NotFoundError(f"sandbox {sandbox_id} does not exist")
        if port not in self.targets:
            raise NotFoundError(f"port {port} of sandbox {sandbox_id} is not exposed")
        return self.targets[port]


@dataclass
class Upstream:
    """What the fake in-sandbox server saw."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    stream_stopped: asyncio.Event = field(default_factory=asyncio.Event)
    ws_closes: list[int] = field(default_factory=list)
    ws_closed: asyncio.Event = field(default_factory=asyncio.Event)


def upstream_app(seen: Upstream) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse({
            "method": request.method,
            "raw_path": request.scope["raw_path"].decode(),
            "query": request.scope["query_string"].decode(),
            "headers": request.headers.items(),
            "body_length": len(body),
        })  # fmt: skip

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            await seen.gate.wait()  # set by the test once it has the first chunk
            yield b"second\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def forever(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"tick\n"
                    await asyncio.sleep(0.02)
            finally:
                seen.stream_stopped.set()

        return StreamingResponse(chunks())

    async def upload(request: Request) -> JSONResponse:
        digest, length = hashlib.sha256(), 0
        async for chunk in request.stream():
            digest.update(chunk)
            length += len(chunk)
        return JSONResponse({"sha256": digest.hexdigest(), "length": length})

    async def download(request: Request) -> StreamingResponse:
        blocks = int(request.query_params["blocks"])

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(blocks):
                yield BLOCK

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def ws_echo(ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(
            subprotocol="chat.v1" if "chat.v1" in offered else None,
            headers=[(b"set-cookie", b"session=1")],
        )
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                seen.ws_closes.append(message.get("code", 0))
                seen.ws_closed.set()
                return
            text = message.get("text")
            if text == "close":
                await ws.close(4001, "bye")
                return
            if text == "info":
                await ws.send_json({
                    "path": ws.scope["raw_path"].decode(),
                    "query": ws.scope["query_string"].decode(),
                    "headers": ws.headers.items(),
                })  # fmt: skip
            elif text is not None:
                await ws.send_text(text)
            else:
                await ws.send_bytes(message["bytes"])

    return Starlette(
        routes=[
            Route("/stream", stream),
            Route("/forever", forever),
            Route("/upload", upload, methods=["POST", "PUT"]),
            Route("/download", download),
            WebSocketRoute("/ws", ws_echo),
            Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "HEAD"]),
        ]
    )


def proxy_app(targets: FakeTargets) -> FastAPI:
    """A stand-in for the Stockade app, with the proxy wired in the same way."""
    app = FastAPI()
    install_error_handlers(app)
    app.state.services = SimpleNamespace(
        config=SimpleNamespace(token=TOKEN), access=operator_access(TOKEN)
    )
    app.state.port_targets = targets

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "api"}

    @app.get("/v1/sandboxes/{sandbox_id}")
    async def info(sandbox_id: str) -> dict[str, str]:
        await targets.resolve(sandbox_id, HTTP_PORT)  # the same not-found answer
        return {"id": sandbox_id, "status": "running"}

    app.include_router(router)
    app.add_middleware(JsonByDefault)
    app.add_middleware(BodyLimit, limit=1024 * 1024)
    app.add_middleware(RequestIds)
    app.add_middleware(SandboxProxy, targets_getter=lambda: app.state.port_targets)
    return app


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[int]:
    """Serve ``app`` with uvicorn on a free loopback port, in this event loop."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, ws_max_size=WS_MAX_SIZE,
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = uvicorn.Server(config)
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


async def echo_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A TCP server in the sandbox: echoes until EOF, then closes."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's clients honour proxy variables; every byte here must stay on loopback."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@dataclass
class Env:
    url: str
    port: int
    app: FastAPI
    seen: Upstream
    http: httpx.AsyncClient

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@pytest.fixture
async def env(closed_port: int) -> AsyncIterator[Env]:
    seen = Upstream()
    tcp = await asyncio.start_server(echo_tcp, "127.0.0.1", 0)
    tcp_port = int(tcp.sockets[0].getsockname()[1])
    async with serving(upstream_app(seen)) as up_port:
        targets = FakeTargets({
            HTTP_PORT: PortTarget("127.0.0.1", up_port, public=False, access_token=ACCESS),
            PUBLIC_PORT: PortTarget("127.0.0.1", up_port, public=True, access_token=ACCESS),
            TCP_PORT: PortTarget("127.0.0.1", tcp_port, public=False, access_token=ACCESS),
            CLOSED_PORT: PortTarget("127.0.0.1", closed_port, public=True, access_token=""),
        })  # fmt: skip
        app = proxy_app(targets)
        async with serving(app) as port:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=5) as http:
                yield Env(url, port, app, seen, http)
    tcp.close()
    await tcp.wait_closed()


def at(port: int, rest: str = "/echo") -> str:
    return f"/proxy/{SB}/{port}{rest}"


def upstream_headers(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return dict(response.json()["headers"])


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    return error


# -- routing -----------------------------------------------------------------------------


async def test_path_routing_forwards_path_query_and_headers(env: Env) -> None:
    request = env.http.build_request(
        "GET",
        at(HTTP_PORT, f"/echo/a%20b?x=1&stockade_token={ACCESS}&y=2"),
        headers={"X-Custom": "kept", "Connection": "keep-alive, x-hop", "X-Hop": "dropped"},
    )
    del request.headers["accept-encoding"], request.headers["user-agent"]
    response = await env.http.send(request)
    body = response.json()
    assert (body["raw_path"], body["query"]) == ("/echo/a%20b", "x=1&y=2")
    headers = upstream_headers(response)
    assert headers["x-custom"] == "kept"
    assert "x-hop" not in headers
    assert "x-stockade-access-token" not in headers
    assert headers["host"].startswith("127.0.0.1:")
    assert headers["host"] != f"127.0.0.1:{env.port}"  # rewritten to the upstream
    assert headers["x-forwarded-host"] == f"127.0.0.1:{env.port}"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-prefix"] == f"/proxy/{SB}/{HTTP_PORT}"
    # Only what the client sent: an encoding it never offered would garble its body.
    assert "accept-encoding" not in headers
    assert "user-agent" not in headers


async def test_host_routing_with_the_token_in_a_header(env: Env) -> None:
    response = await env.http.post(
        "/submit?q=1",
        headers={
            "Host": f"{HTTP_PORT}-{SB}.sandboxes.example.com",
            "X-Stockade-Access-Token": ACCESS,
            "Content-Type": "text/plain",
        },
        content=b"hello",
    )
    body = response.json()
    assert (body["method"], body["raw_path"], body["query"]) == ("POST", "/submit", "q=1")
    assert body["body_length"] == 5
    headers = upstream_headers(response)
    assert "x-stockade-access-token" not in headers
    # Outside the API: JsonByDefault did not rewrite the type, and no request ID was added.
    assert headers["content-type"] == "text/plain"
    assert "x-request-id" not in response.headers
    assert headers["x-forwarded-host"] == f"{HTTP_PORT}-{SB}.sandboxes.example.com"


async def test_other_requests_reach_the_app(env: Env) -> None:
    for host in (None, "example.com", f"{HTTP_PORT}-sb-nothex.localhost", "[::1]:7423"):
        response = await env.http.get("/hello", headers={"Host": host} if host else {})
        assert response.json() == {"hello": "api"}
        assert response.headers["x-request-id"].startswith("req-")


async def test_redirect_adds_the_slash(env: Env) -> None:
    response = await env.http.get(f"/proxy/{SB}/{HTTP_PORT}?stockade_token={ACCESS}")
    assert response.status_code == 307
    assert response.headers["location"] == f"/proxy/{SB}/{HTTP_PORT}/?stockade_token={ACCESS}"


async def test_malformed_proxy_paths(env: Env) -> None:
    response = await env.http.get(f"/proxy/{SB}")
    assert response.status_code == 404
    assert "/proxy/{sandbox_id}/{port}/" in error_of(response)["message"]
    response = await env.http.get(f"/proxy/{SB}/http/")
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_argument"


# -- access ------------------------------------------------------------------------------


async def test_public_port_needs_no_token(env: Env) -> None:
    response = await env.http.get(at(PUBLIC_PORT, "/page?stockade_token=ignored&a=1"))
    assert response.json()["query"] == "a=1"


async def test_missing_and_wrong_tokens(env: Env) -> None:
    response = await env.http.get(at(HTTP_PORT))
    assert response.status_code == 401
    error = error_of(response)
    assert error["code"] == "unauthorized"
    assert "X-Stockade-Access-Token" in error["message"]
    assert "stockade_token" in error["message"]
    response = await env.http.get(at(HTTP_PORT), headers={"X-Stockade-Access-Token": "nope"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "forbidden"
    response = await env.http.get(at(HTTP_PORT, "/?stockade_token=n%C3%B6pe"))
    assert response.status_code == 403  # non-ASCII compares safely


async def test_unknown_sandbox_port_and_ended_sandbox(env: Env) -> None:
    # With the token, the caller hears what is wrong; without it, only that the token is
    # (tests/integration/test_proxy_auth.py has the answers without it).
    token = {"X-Stockade-Access-Token": ACCESS}
    response = await env.http.get(f"/proxy/sb-ffffffffffffffff/{HTTP_PORT}/", headers=token)
    assert response.status_code == 403  # no such sandbox: no token of it matches
    assert error_of(response)["code"] == "forbidden"
    response = await env.http.get(at(1234, "/"), headers=token)
    assert response.status_code == 404
    assert "not exposed" in error_of(response)["message"]
    response = await env.http.get("/", headers={"Host": f"80-{DEAD}.localhost", **token})
    assert response.status_code == 409
    assert error_of(response)["code"] == "sandbox_terminated"


async def test_not_started_is_503(env: Env) -> None:
    env.app.state.port_targets = None
    response = await env.http.get(at(PUBLIC_PORT))
    assert response.status_code == 503
    assert error_of(response)["code"] == "unavailable"


class BrokenTargets:
    async def get(self, sandbox_id: str) -> FakeRecord:
        raise RuntimeError("database is locked")

    async def resolve(self, sandbox_id: str, port: int) -> PortTarget:
        raise RuntimeError("database is locked")


async def test_a_crash_is_a_500_with_a_request_id(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    env.app.state.port_targets = BrokenTargets()
    response = await env.http.get(at(PUBLIC_PORT))
    assert response.status_code == 500
    error = error_of(response)
    assert error["code"] == "internal"
    assert "database is locked" not in error["message"]  # no internals to the client
    assert error["request_id"] in caplog.text
    assert "database is locked" in caplog.text


async def test_nothing_listening_is_a_fast_502(env: Env) -> None:
    started = time.monotonic()
    response = await env.http.get(at(CLOSED_PORT, "/"))
    assert time.monotonic() - started < 2
    assert response.status_code == 502
    assert error_of(response) == {
        "code": "bad_gateway",
        "message": f"nothing is listening on port {CLOSED_PORT} in sandbox {SB}: "
        f"start a server bound to 0.0.0.0:{CLOSED_PORT}",
    }


# -- streaming ---------------------------------------------------------------------------


async def test_response_streams_incrementally(env: Env) -> None:
    async with env.http.stream("GET", at(PUBLIC_PORT, "/stream")) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.aiter_raw()
        # The upstream holds its second chunk until the first has reached us: a proxy that
        # buffered would never deliver it, and this would time out.
        async with asyncio.timeout(3):
            assert await anext(chunks) == b"first\n"
        env.seen.gate.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == b"second\n"


async def test_client_leaving_stops_the_upstream_stream(env: Env) -> None:
    async with env.http.stream("GET", at(PUBLIC_PORT, "/forever")) as response:
        async for chunk in response.aiter_raw():
            assert chunk.startswith(b"tick")
            break
    async with asyncio.timeout(3):
        await env.seen.stream_stopped.wait()


@pytest.mark.parametrize("chunked", [True, False])
async def test_large_upload_is_streamed_intact(env: Env, chunked: bool) -> None:
    blocks = 128  # 8 MiB: far past the API's 1 MiB body limit, which must not apply here
    expected = hashlib.sha256(BLOCK * blocks).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(blocks):
            yield BLOCK

    content: bytes | AsyncIterator[bytes] = body() if chunked else BLOCK * blocks
    response = await env.http.post(at(PUBLIC_PORT, "/upload"), content=content)
    assert response.json() == {"sha256": expected, "length": len(BLOCK) * blocks}


async def test_large_download_is_streamed_intact(env: Env) -> None:
    blocks = 256  # 16 MiB
    digest, length = hashlib.sha256(), 0
    async with env.http.stream("GET", at(PUBLIC_PORT, f"/download?blocks={blocks}")) as response:
        assert response.status_code == 200
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            length += len(chunk)
    assert length == len(BLOCK) * blocks
    assert digest.hexdigest() == hashlib.sha256(BLOCK * blocks).hexdigest()


# -- WebSocket proxy ---------------------------------------------------------------------


def ws_connect(url: str, **kwargs: Any) -> websockets.asyncio.client.connect:
    return websockets.asyncio.client.connect(
        url, proxy=None, open_timeout=5, max_size=WS_MAX_SIZE, **kwargs
    )


async def test_websocket_echo_text_binary_and_subprotocol(env: Env) -> None:
    url = f"{env.ws}{at(HTTP_PORT, '/ws')}?x=1&stockade_token={ACCESS}"
    async with ws_connect(url, subprotocols=["chat.v2", "chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"
        assert ws.response is not None
        assert ws.response.headers.get("set-cookie") == "session=1"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\xffbinary")
        assert await ws.recv() == b"\x00\xffbinary"
        big = b"x" * (4 * 1024 * 1024)
        await ws.send(big)
        assert await ws.recv() == big
        await ws.send("info")
        info = json.loads(await ws.recv())
    assert (info["path"], info["query"]) == ("/ws", "x=1")
    assert "x-stockade-access-token" not in dict(info["headers"])


async def test_websocket_close_codes_pass_both_ways(env: Env) -> None:
    url = f"{env.ws}{at(PUBLIC_PORT, '/ws')}"
    async with ws_connect(url) as ws:
        await ws.send("close")
        with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "bye")

    async with ws_connect(url) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        await ws.close(4002, "done")
    await asyncio.wait_for(env.seen.ws_closed.wait(), 3)
    assert env.seen.ws_closes == [4002]


async def test_websocket_host_routing_with_header_token(env: Env) -> None:
    url = f"ws://{HTTP_PORT}-{SB}.localhost:{env.port}/ws"
    headers = {"X-Stockade-Access-Token": ACCESS}
    # host= dials loopback while the URL's name goes into the Host header: no DNS.
    async with ws_connect(url, host="127.0.0.1", additional_headers=headers) as ws:
        await ws.send("info")
        info = json.loads(await ws.recv())
    assert "x-stockade-access-token" not in dict(info["headers"])


async def test_websocket_refusals(env: Env) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with ws_connect(f"{env.ws}{at(HTTP_PORT, '/ws')}"):
            pass
    assert refused.value.response.status_code == 401
    assert b"X-Stockade-Access-Token" in refused.value.response.body
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with ws_connect(f"{env.ws}{at(CLOSED_PORT, '/ws')}"):
            pass
    assert refused.value.response.status_code == 502
    assert b"nothing is listening" in refused.value.response.body
    # The app's own refusal (no WebSocket at this path) is passed on as it was.
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with ws_connect(f"{env.ws}{at(PUBLIC_PORT, '/no-ws-here')}"):
            pass
    assert refused.value.response.status_code == 403


# -- TCP bridge --------------------------------------------------------------------------


def bridge(env: Env, port: int = TCP_PORT, sandbox_id: str = SB, token: str = TOKEN) -> Any:
    url = f"{env.ws}/v1/sandboxes/{sandbox_id}/ports/{port}/connect"
    return ws_connect(url, additional_headers={"Authorization": f"Bearer {token}"})


async def test_bridge_relays_bytes_and_half_close(env: Env) -> None:
    async with bridge(env) as ws:
        await ws.send(b"ping")
        assert await ws.recv() == b"ping"
        await ws.send(b"x" * 300_000)
        received = b""
        while len(received) < 300_000:
            message = await ws.recv()
            assert isinstance(message, bytes)
            received += message
        assert received == b"x" * 300_000
        await ws.send(b"")  # EOF: the echo server answers by closing
        with pytest.raises(websockets.exceptions.ConnectionClosedOK):
            await ws.recv()
        assert ws.close_code == 1000


async def test_bridge_refusals(env: Env) -> None:
    cases = [
        (bridge(env, token="wrong"), 401, b"wrong token"),
        (bridge(env, port=1234), 404, b"not exposed"),
        (bridge(env, sandbox_id=DEAD), 409, b"terminated"),
        (bridge(env, port=CLOSED_PORT), 502, b"nothing is listening"),
    ]
    for connect, status, text in cases:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with connect:
                pass
        assert refused.value.response.status_code == status
        assert text in refused.value.response.body


# -- stockade port-forward ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def forwarding(env: Env, port: int, errors: list[StockadeError]) -> AsyncIterator[int]:
    """Run :func:`forward_port` to ``port`` of ``SB``; yields the local port it listens on."""
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    async with AsyncClient(env.url, TOKEN) as client:
        job = forward_port(
            client, SB, port, local_port=0,
            on_ready=lambda host, bound: ready.set_result(bound), on_error=errors.append,
        )  # fmt: skip
        task = asyncio.create_task(job)
        try:
            yield await asyncio.wait_for(ready, 5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_port_forward_relays_local_connections(env: Env, isolated_env: Any) -> None:
    errors: list[StockadeError] = []
    async with forwarding(env, TCP_PORT, errors) as local:
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        writer.write(b"hello")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        writer.write_eof()  # half-close: the echo server closes, and so does the forward
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
    assert errors == []


async def test_port_forward_survives_a_connection_error(env: Env, isolated_env: Any) -> None:
    errors: list[StockadeError] = []
    async with forwarding(env, CLOSED_PORT, errors) as local:
        for _ in range(2):  # still forwarding after the first failure
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()
    assert len(errors) == 2
    assert f"nothing is listening on port {CLOSED_PORT} in sandbox {SB}" in str(errors[0])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# main.py does not register the verb yet; the script does, as main.py will.
_CLI = (
    "from stockade.cli.main import cli; from stockade.cli.ports import port_forward; "
    "cli.add_command(port_forward); cli.main(prog_name='stockade')"
)


@contextlib.asynccontextmanager
async def stockade_cli(env: Env, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``stockade port-forward ARGS`` as its own process.

    Not CliRunner: its swap of the process-wide sys.stdout/stderr races the servers that
    run in this thread's event loop, while a process has streams of its own.
    """
    argv = ["--url", env.url, "--token", TOKEN, "port-forward", *args]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLI, *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()


async def test_cli_unknown_sandbox_fails_at_once(env: Env, isolated_env: Any) -> None:
    async with stockade_cli(env, "sb-ffffffffffffffff", "80") as process:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 8)
    assert process.returncode == 1, stderr
    assert b"error: sandbox sb-ffffffffffffffff does not exist" in stderr
    assert b"Forwarding" not in stdout


async def test_cli_unexposed_port_ends_the_command(env: Env, isolated_env: Any) -> None:
    local = free_port()
    async with stockade_cli(env, SB, "1234", "--local", str(local)) as process:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 8)
        assert line.decode() == f"Forwarding 127.0.0.1:{local} -> {SB}:1234 (Ctrl-C to stop)\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # refused: the command closes it
        writer.close()
        await writer.wait_closed()
        _, stderr = await asyncio.wait_for(process.communicate(), 5)
    assert process.returncode == 1, stderr
    assert f"error: port 1234 of sandbox {SB} is not exposed".encode() in stderr


async def test_lifespan_shutdown_closes_the_upstream_client(closed_port: int) -> None:
    target = PortTarget("127.0.0.1", closed_port, public=True, access_token="")
    app = proxy_app(FakeTargets({CLOSED_PORT: target}))
    async with serving(app) as port:
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.get(f"http://127.0.0.1:{port}{at(CLOSED_PORT, '/')}")
        assert response.status_code == 502
        # Starlette's ServerErrorMiddleware wraps every added middleware.
        proxy: Any = app.middleware_stack
        while not isinstance(proxy, SandboxProxy):
            proxy = proxy.app
        upstream = proxy._http  # made by the first proxied request
        assert upstream is not None and not upstream.is_closed
    assert upstream.is_closed
