"""The port proxy checks the access token before it does anything to a sandbox, answers a
caller without it the same whatever the sandbox's state, passes no server credential on to
the app, and counts WebSockets against its connection cap.

On loopback, with the stand-ins of test_ingress.py: the fake service records each
``resolve`` (which, in the real service, resumes, wakes and counts activity), so a request
that must not touch the sandbox must not show up there. tests/integration/test_proxy_auth.py
proves the same against real sandboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import websockets.asyncio.client
import websockets.exceptions

from stockade.server.api import ingress
from stockade.server.service.ports import PortTarget
from tests.unit.server.api.test_ingress import (
    ACCESS,
    DEAD,
    HTTP_PORT,
    PUBLIC_PORT,
    SB,
    TOKEN,
    FakeTargets,
    Upstream,
    at,
    proxy_app,
    serving,
    upstream_app,
    upstream_headers,
    ws_connect,
)

pytestmark = pytest.mark.timeout(20)

UNEXPOSED = 1234
CAP = 2


@dataclass
class Proxy:
    targets: FakeTargets
    http: httpx.AsyncClient
    ws: str


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Proxy]:
    # A small cap, and a short wait for a slot, so that the cap is reached in a test.
    monkeypatch.setenv("STOCKADE_PROXY_MAX_CONNECTIONS", str(CAP))
    monkeypatch.setattr(ingress, "_POOL_TIMEOUT", 0.3)
    for name in ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    async with serving(upstream_app(Upstream())) as up_port:
        targets = FakeTargets({
            HTTP_PORT: PortTarget("127.0.0.1", up_port, public=False, access_token=ACCESS),
            PUBLIC_PORT: PortTarget("127.0.0.1", up_port, public=True, access_token=ACCESS),
        })  # fmt: skip
        async with serving(proxy_app(targets)) as port:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=5) as http:
                yield Proxy(targets, http, f"ws://127.0.0.1:{port}")


# A private port, a port that is not exposed, an ended sandbox and one that does not exist.
PLACES = [at(HTTP_PORT), at(UNEXPOSED), f"/proxy/{DEAD}/{HTTP_PORT}/echo",
          f"/proxy/sb-ffffffffffffffff/{HTTP_PORT}/echo"]  # fmt: skip


def answer(response: httpx.Response) -> tuple[int, str, bytes]:
    return response.status_code, response.headers["content-type"], response.content


@pytest.mark.parametrize(
    "credentials",
    [{}, {"X-Stockade-Access-Token": "wrong"}, {"Authorization": f"Bearer {TOKEN}"}],
    ids=["none", "wrong-token", "admin-token-only"],
)
async def test_refusals_touch_nothing_and_read_the_same(
    proxy: Proxy, credentials: dict[str, str]
) -> None:
    answers = {answer(await proxy.http.get(path, headers=credentials)) for path in PLACES}
    assert len(answers) == 1, answers
    status, _, body = answers.pop()
    assert status == (403 if credentials.get("X-Stockade-Access-Token") else 401)
    assert b"X-Stockade-Access-Token" in body and b"stockade_token" in body
    for forbidden in (SB.encode(), DEAD.encode(), str(HTTP_PORT).encode(), b"not exposed"):
        assert forbidden not in body
    for path in PLACES:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with ws_connect(proxy.ws + path, additional_headers=credentials):
                pass
        assert (refused.value.response.status_code, refused.value.response.body) == (
            status,
            body,
        )
    assert proxy.targets.resolved == []  # nothing was resumed, woken or touched


async def test_the_token_or_a_public_port_lets_the_request_through(proxy: Proxy) -> None:
    response = await proxy.http.get(at(PUBLIC_PORT))
    assert response.status_code == 200
    response = await proxy.http.get(at(HTTP_PORT), headers={"X-Stockade-Access-Token": ACCESS})
    assert response.status_code == 200
    # With the token the caller hears what is wrong.
    response = await proxy.http.get(at(UNEXPOSED), headers={"X-Stockade-Access-Token": ACCESS})
    assert response.status_code == 404 and b"not exposed" in response.content
    assert proxy.targets.resolved == [SB, SB, SB]


@pytest.mark.parametrize(
    ("authorization", "forwarded"),
    [
        (f"Bearer {TOKEN}", False),
        (f"bearer   {TOKEN}", False),
        ("Bearer the-apps-own-token", True),
        ("Basic dXNlcjpwYXNz", True),
        # A tenant's API key, even one this server does not know, never reaches an app.
        (f"Bearer stk_0123456789abcdef_{'k' * 43}", False),
    ],
    ids=["admin", "admin-spelled-otherwise", "other-bearer", "basic", "api-key"],
)
async def test_the_admin_token_and_api_keys_are_not_forwarded(
    proxy: Proxy, authorization: str, forwarded: bool
) -> None:
    headers = {"Authorization": authorization, "X-Stockade-Access-Token": ACCESS}
    seen = upstream_headers(await proxy.http.get(at(HTTP_PORT, "/echo?a=1"), headers=headers))
    assert ("authorization" in seen) is forwarded
    if forwarded:
        assert seen["authorization"] == authorization
    url = f"{proxy.ws}{at(HTTP_PORT, '/ws')}?stockade_token={ACCESS}"
    async with ws_connect(url, additional_headers={"Authorization": authorization}) as ws:
        await ws.send("info")
        info = json.loads(await ws.recv())
    seen = dict(info["headers"])
    assert ("authorization" in seen) is forwarded
    assert "stockade_token" not in info["query"]


async def test_websockets_take_connection_slots(proxy: Proxy) -> None:
    url = f"{proxy.ws}{at(PUBLIC_PORT, '/ws')}"
    async with contextlib.AsyncExitStack() as stack:
        held = [await stack.enter_async_context(ws_connect(url)) for _ in range(CAP)]
        for ws in held:
            await ws.send("still here")
            assert await ws.recv() == "still here"
        # The cap is reached: neither another WebSocket nor an HTTP request gets through.
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with ws_connect(url):
                pass
        assert refused.value.response.status_code == 503
        response = await proxy.http.get(at(PUBLIC_PORT))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "unavailable"
        # A WebSocket that ends gives its slot back.
        await held.pop().close()
        await asyncio.sleep(0.1)
        assert (await proxy.http.get(at(PUBLIC_PORT))).status_code == 200
        async with ws_connect(url) as ws:
            await ws.send("in")
            assert await ws.recv() == "in"
    # All given back: CAP requests at once all get through.
    answers = await asyncio.gather(*(proxy.http.get(at(PUBLIC_PORT)) for _ in range(CAP)))
    assert [r.status_code for r in answers] == [200] * CAP
