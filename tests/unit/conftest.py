"""Fixtures for the unit tests: a fake API, a fake exec WebSocket server, and clients on them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stockade import AsyncClient, AsyncSandbox, Client, Sandbox
from tests.unit.fakes import TOKEN, FakeApi, FakeExecServer


@pytest.fixture
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No SDK test reads the developer's STOCKADE_* settings or a real token file.

    Returns the (empty) data directory that token lookups see.
    """
    for name in ("STOCKADE_URL", "STOCKADE_TOKEN", "STOCKADE_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    data = tmp_path / "data"
    monkeypatch.setenv("STOCKADE_DATA_DIR", str(data))
    return data


@pytest.fixture
def api(isolated_env: Path) -> FakeApi:
    return FakeApi()


@pytest.fixture
def exec_server() -> Iterator[FakeExecServer]:
    server = FakeExecServer()
    yield server
    server.close()


@pytest.fixture
def client(api: FakeApi, exec_server: FakeExecServer) -> Iterator[Client]:
    with Client(exec_server.url, TOKEN, transport=api.transport) as c:
        yield c


@pytest.fixture
async def aclient(api: FakeApi, exec_server: FakeExecServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(exec_server.url, TOKEN, transport=api.transport) as c:
        yield c


@pytest.fixture
def sb(client: Client) -> Sandbox:
    return Sandbox.from_id("sb-1", client=client)


@pytest.fixture
async def asb(aclient: AsyncClient) -> AsyncSandbox:
    return await AsyncSandbox.from_id("sb-1", client=aclient)
