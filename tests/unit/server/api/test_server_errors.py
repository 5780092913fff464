"""The server's error contract, checked on a small app with the real handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from stockade.errors import (
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    SandboxTerminatedError,
)
from stockade.server.api.errors import BodyLimit, JsonByDefault, RequestIds, install_error_handlers


class Body(BaseModel):
    n: int


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/missing")
    async def missing() -> None:
        raise NotFoundError("sandbox sb-1 does not exist")

    @app.get("/ended")
    async def ended() -> None:
        raise SandboxTerminatedError("sandbox sb-1 was terminated (timeout)")

    @app.post("/quota")
    async def quota() -> None:
        raise QuotaExceededError("tenant acme has 1 live sandboxes of max_sandboxes=1")

    @app.post("/rate")
    async def rate() -> None:
        raise RateLimitedError("tenant acme is past creates_per_minute=2", retry_after=12.2)

    @app.post("/echo")
    async def echo(body: Body) -> dict[str, int]:
        return {"n": body.n}

    app.add_middleware(JsonByDefault)
    app.add_middleware(BodyLimit, limit=1024)
    app.add_middleware(RequestIds)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_unexpected_error_is_500_with_request_id_and_no_traceback(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/boom")
    assert resp.status_code == 500
    err = resp.json()["error"]
    assert err["code"] == "internal"
    assert err["request_id"].startswith("req-")
    assert err["request_id"] in err["message"]
    assert "secret internals" not in resp.text and "Traceback" not in resp.text
    # The server log has the details, under the same ID.
    assert err["request_id"] in caplog.text and "secret internals" in caplog.text


async def test_typed_errors_keep_status_and_code(client: httpx.AsyncClient) -> None:
    resp = await client.get("/missing")
    assert resp.status_code == 404
    assert resp.json() == {"error": {"code": "not_found", "message": "sandbox sb-1 does not exist"}}
    resp = await client.get("/ended")
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "sandbox_terminated"


async def test_a_rate_limit_says_when_to_come_back(client: httpx.AsyncClient) -> None:
    resp = await client.post("/rate")
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "rate_limited"
    assert resp.headers["retry-after"] == "13"  # whole seconds, rounded up
    resp = await client.post("/quota")
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "quota_exceeded"
    assert "retry-after" not in resp.headers


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    resp = await client.get("/nope")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    resp = await client.delete("/missing")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "bad_request"


async def test_json_errors(client: httpx.AsyncClient) -> None:
    resp = await client.post("/echo", content=b"{nope")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "bad_request"
    resp = await client.post("/echo", content=b'"a string"')
    assert resp.status_code == 400
    resp = await client.post("/echo", json={"n": "x"})
    assert resp.status_code == 422
    assert "n:" in resp.json()["error"]["message"]


async def test_json_is_assumed_whatever_the_content_type(client: httpx.AsyncClient) -> None:
    resp = await client.post(
        "/echo", content=b'{"n": 3}', headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert resp.status_code == 200 and resp.json() == {"n": 3}


async def test_body_limit(client: httpx.AsyncClient) -> None:
    resp = await client.post("/echo", content=b'{"n": 1, "pad": "' + b"x" * 4096 + b'"}')
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"n": 1, "pad": "'
        for _ in range(10):
            yield b"x" * 512
        yield b'"}'

    resp = await client.post("/echo", content=chunks())
    assert resp.status_code == 413
