"""``Image.tag`` and ``Image.atag`` build and name an image through either SDK flavour."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

import stockade.image
from stockade import AsyncClient, Client, Image
from tests.unit.fakes import TOKEN, ndjson


class BuildApi:
    """``POST /v1/images/builds`` answered with a built image named as the body's tag."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.transport = httpx.MockTransport(self.handler)

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/v1/images/builds")
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        body = json.loads(request.content)
        self.bodies.append(body)
        image = {"name": body["tag"], "ready": True, "kind": "built", "size_mib": 12}
        return httpx.Response(
            200,
            content=ndjson({"type": "log", "line": "step 1/1"}, {"type": "done", "image": image}),
        )


IMAGE = Image.from_name("debian").run_commands("echo hi > /hi")


def _expect(api: BuildApi, tag: str) -> None:
    (body,) = api.bodies
    assert body["tag"] == tag
    assert body["image"] == "debian"
    assert body["steps"] == [{"op": "run", "commands": ["echo hi > /hi"]}]


def test_tag_through_a_client() -> None:
    api = BuildApi()
    with Client("http://127.0.0.1:1", TOKEN, transport=api.transport) as client:
        assert IMAGE.tag("agent:v1", client=client) == "agent:v1"
    _expect(api, "agent:v1")


async def test_atag_through_a_client() -> None:
    api = BuildApi()
    async with AsyncClient("http://127.0.0.1:1", TOKEN, transport=api.transport) as client:
        assert await IMAGE.atag("agent:v2", client=client) == "agent:v2"
    _expect(api, "agent:v2")


def test_tag_opens_and_closes_a_default_client(monkeypatch: pytest.MonkeyPatch) -> None:
    api = BuildApi()
    opened: list[Client] = []

    def default() -> Client:
        opened.append(Client("http://127.0.0.1:1", TOKEN, transport=api.transport))
        return opened[-1]

    monkeypatch.setitem(stockade.image._CLIENTS, "sync", default)
    assert IMAGE.tag("agent:v3") == "agent:v3"
    _expect(api, "agent:v3")
    assert len(opened) == 1 and opened[0]._http.is_closed


async def test_atag_opens_and_closes_a_default_client(monkeypatch: pytest.MonkeyPatch) -> None:
    api = BuildApi()
    opened: list[AsyncClient] = []

    def default() -> AsyncClient:
        opened.append(AsyncClient("http://127.0.0.1:1", TOKEN, transport=api.transport))
        return opened[-1]

    monkeypatch.setitem(stockade.image._CLIENTS, "async", default)
    assert await IMAGE.atag("agent:v4") == "agent:v4"
    _expect(api, "agent:v4")
    assert len(opened) == 1 and opened[0]._http.is_closed


def test_each_flavour_registers_its_own_client() -> None:
    assert {"sync": Client, "async": AsyncClient} == stockade.image._CLIENTS


def test_image_imports_neither_client() -> None:
    source = Path(stockade.image.__file__).read_text()
    imported = {
        node.module or ""
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not {name for name in imported if name.startswith(("stockade._sync", "stockade._async"))}
    assert "stockade" not in imported
