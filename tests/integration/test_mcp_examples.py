"""The MCP client configurations in examples/mcp/ work as written: every server they name
is started (stdio) or reached (HTTP) against a test server, and lists Stockade's tools."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from .conftest import LiveServer
from .test_mcp import TOOLS, stockade_command

pytestmark = pytest.mark.runsc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mcp"
PLACEHOLDER_URL = "http://127.0.0.1:7423"
PLACEHOLDER_KEY = "stk_your_api_key"


def _entries() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.json")):
        for name, entry in json.loads(path.read_text())["mcpServers"].items():
            found.append((path.name, name, entry))
    return found


ENTRIES = _entries()


def _filled(text: str, server: LiveServer) -> str:
    """A configured value with the placeholders replaced by the test server's."""
    return text.replace(PLACEHOLDER_URL, server.url).replace(PLACEHOLDER_KEY, server.token)


def test_the_examples_exist_for_both_transports() -> None:
    kinds = {"url" in entry for _, _, entry in ENTRIES}
    assert kinds == {True, False}, ENTRIES


@pytest.mark.parametrize(
    ("file", "name", "entry"), ENTRIES, ids=[f"{f}:{n}" for f, n, _ in ENTRIES]
)
async def test_an_example_config_lists_the_tools(
    server: LiveServer, file: str, name: str, entry: dict[str, Any]
) -> None:
    if "url" in entry:
        assert entry.get("type", "http") == "http"
        headers = {k: _filled(v, server) for k, v in entry["headers"].items()}
        async with (
            httpx.AsyncClient(headers=headers, timeout=60) as http,
            streamable_http_client(_filled(entry["url"], server), http_client=http) as (r, w, _),
            ClientSession(r, w) as session,
        ):
            await session.initialize()
            tools = await session.list_tools()
    else:
        # The command as configured, found where this test's `stockade` is installed.
        assert entry["command"] == "stockade"
        env = {k: _filled(v, server) for k, v in entry["env"].items()}
        assert set(env) == {"STOCKADE_URL", "STOCKADE_TOKEN"}
        params = StdioServerParameters(
            command=stockade_command(), args=entry["args"], env={**os.environ, **env}
        )
        async with stdio_client(params) as (r, w), ClientSession(r, w) as session:
            await session.initialize()
            tools = await session.list_tools()
    assert {t.name for t in tools.tools} == TOOLS
