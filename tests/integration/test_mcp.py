"""The MCP server, over both transports, with the official MCP client library against a
real server and real runsc: `stockade mcp` spawned as a stdio subprocess, and the
server's own streamable HTTP endpoint at /mcp."""

from __future__ import annotations

import base64
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ImageContent, TextContent

from stockade import AsyncSandbox

from ..waiting import wait_for
from .conftest import LiveServer, own_server

pytestmark = pytest.mark.runsc

TOOLS = {
    "create_sandbox", "run_command", "run_code", "read_file", "write_file", "list_files",
    "expose_port", "snapshot", "fork", "terminate",
}  # fmt: skip
CHART = """\
import matplotlib.pyplot as plt
plt.figure(figsize=(4, 3), dpi=50)
plt.plot([1, 2, 3], [1, 4, 9])
plt.show()
print("drawn")
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stockade_command() -> str:
    return str(Path(sys.executable).parent / "stockade")


@asynccontextmanager
async def stdio_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    env = {**os.environ, "STOCKADE_URL": url, "STOCKADE_TOKEN": token}
    params = StdioServerParameters(command=stockade_command(), args=["mcp"], env=env)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def http_session(url: str, token: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(120, read=300)) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


Opener = Callable[[str, str], AbstractAsyncContextManager[ClientSession]]


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def call(session: ClientSession, tool: str, **args: Any) -> CallToolResult:
    result = await session.call_tool(tool, args)
    assert not result.isError, text_of(result)
    return result


def api(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


@pytest.mark.parametrize("opener", [stdio_session, http_session], ids=["stdio", "http"])
async def test_an_agent_uses_its_session_sandbox(server: LiveServer, opener: Opener) -> None:
    async with opener(server.url, server.token) as session:
        listed = await session.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        for t in listed.tools:
            assert t.description and len(t.description) > 80, t.name

        # run_code: a matplotlib chart comes back as MCP image content, a real PNG.
        drawn = await call(session, "run_code", code=CHART)
        images = [c for c in drawn.content if isinstance(c, ImageContent)]
        assert len(images) == 1 and images[0].mimeType == "image/png"
        assert base64.b64decode(images[0].data).startswith(PNG_MAGIC)
        assert "drawn" in text_of(drawn)
        found = re.search(r"\[sandbox (sb-[\w-]+)\]", text_of(drawn))
        assert found, text_of(drawn)
        default_id = found.group(1)

        # An exception in the code is data, not a failed call.
        raised = await call(session, "run_code", code="1 / 0")
        assert "ZeroDivisionError" in text_of(raised)

        await call(session, "write_file", path="/tmp/mcp/note.txt", content="hello agent\n")
        read = await call(session, "read_file", path="/tmp/mcp/../mcp/note.txt")
        assert text_of(read) == "hello agent\n"
        listing = await call(session, "list_files", path="/tmp/mcp")
        assert "note.txt" in text_of(listing)

        # run_command: output streams as progress, and long output is capped with a note.
        seen: list[str] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(message or "")

        ran = await session.call_tool(
            "run_command",
            {"command": "cat /tmp/mcp/note.txt; echo oops >&2; exit 3"},
            progress_callback=on_progress,
        )
        assert not ran.isError
        assert "exit code: 3" in text_of(ran)
        assert "hello agent" in text_of(ran) and "oops" in text_of(ran)
        assert "hello agent" in "".join(seen)
        long = await call(session, "run_command", command="seq 1 100000")
        assert "bytes of stdout cut here" in text_of(long) and "read_file" in text_of(long)
        assert text_of(long).rstrip().endswith("100000")

        # Bad input is a tool error with a message, and the session keeps working.
        missing = await session.call_tool("read_file", {"path": "/tmp/mcp/absent.txt"})
        assert missing.isError and "absent.txt" in text_of(missing)
        relative = await session.call_tool("read_file", {"path": "etc/passwd"})
        assert relative.isError and "absolute" in text_of(relative)
        unknown = await session.call_tool(
            "run_command", {"command": "true", "sandbox_id": "sb-doesnotexist"}
        )
        assert unknown.isError and "sb-doesnotexist" in text_of(unknown)
        again = await call(session, "run_command", command="echo still here")
        assert "still here" in text_of(again)

    # The session ended: its default sandbox ends with it.
    with api(server, server.token) as admin:

        def ended() -> bool | None:
            status = admin.get(f"/v1/sandboxes/{default_id}").json()["status"]
            return True if status != "running" else None

        wait_for(ended, timeout=30, what=f"the session's sandbox {default_id} to end")


async def test_an_ended_session_sandbox_is_said_and_replaced(server: LiveServer) -> None:
    async with http_session(server.url, server.token) as session:
        first = text_of(await call(session, "run_command", command="echo one"))
        found = re.search(r"\[sandbox (sb-[\w-]+)\]", first)
        assert found, first
        with api(server, server.token) as admin:  # its lifetime ran out, say
            assert admin.delete(f"/v1/sandboxes/{found.group(1)}").status_code == 200
        ended = await session.call_tool("run_command", {"command": "echo two"})
        assert ended.isError and "has ended" in text_of(ended), text_of(ended)
        again = text_of(await call(session, "run_command", command="echo three"))
        assert "three" in again and found.group(1) not in again


def test_mcp_without_a_credential_is_refused(server: LiveServer) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer sk_wrong"}, {"Authorization": "Basic x"}):
        answer = httpx.post(f"{server.url}/mcp", json=body, headers=headers, timeout=30)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["code"] == "unauthorized"


async def test_a_tenant_key_cannot_reach_another_tenants_sandbox(server: LiveServer) -> None:
    keys = []
    with api(server, server.token) as admin:
        # The second tenant may hold 512 MiB, less than a session's sandbox asks for.
        for quotas in ({}, {"max_memory": 512}):
            name = "mcp-" + secrets.token_hex(4)
            made = admin.post("/v1/tenants", json={"name": name, **quotas})
            assert made.status_code == 201, made.text
            made = admin.post("/v1/keys", json={"tenant": name, "role": "user", "name": "u"})
            keys.append(made.json()["key"])
    theirs = await AsyncSandbox.create(image="debian", timeout=300, url=server.url, token=keys[0])
    try:
        async with (
            httpx.AsyncClient(headers={"Authorization": f"Bearer {keys[1]}"}, timeout=120) as h,
            streamable_http_client(f"{server.url}/mcp", http_client=h) as (read, write, sid),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            # Its session is its own: the admin token holding the ID may not drive it.
            session_id = sid()
            assert session_id
            hijack = await h.post(
                f"{server.url}/mcp",
                json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                headers={**server.headers, "Mcp-Session-Id": session_id},
            )
            assert hijack.status_code == 404, hijack.text
            assert hijack.json()["error"]["code"] == "not_found"
            for tool, args in (
                ("run_command", {"command": "id"}),
                ("read_file", {"path": "/etc/hostname"}),
                ("terminate", {}),
            ):
                refused = await session.call_tool(tool, {**args, "sandbox_id": theirs.id})
                assert refused.isError and f"{theirs.id} does not exist" in text_of(refused), tool
            # A quota refusal is a tool error naming the quota; the session carries on.
            over = await session.call_tool("run_command", {"command": "true"})
            assert over.isError and "max_memory" in text_of(over), text_of(over)
            assert len((await session.list_tools()).tools) == len(TOOLS)
        assert (await theirs.info()).status == "running"
    finally:
        await theirs.terminate()


PER_KEY = 3
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}


@pytest.fixture(scope="module")
def small_mcp() -> Iterator[LiveServer]:
    with pytest.MonkeyPatch.context() as env:
        # Read by the server at start (api/mcp.py): the limit is reached in a test.
        env.setenv("STOCKADE_MCP_SESSIONS_PER_KEY", str(PER_KEY))
        with own_server("stockade-mcp-sessions-") as server:
            yield server


def test_a_credential_holds_at_most_its_sessions(small_mcp: LiveServer) -> None:
    with api(small_mcp, small_mcp.token) as admin:
        name = "mcp-" + secrets.token_hex(4)
        assert admin.post("/v1/tenants", json={"name": name}).status_code == 201
        made = admin.post("/v1/keys", json={"tenant": name, "role": "readonly", "name": "r"})
        key = made.json()["key"]
    accept = {"Accept": "application/json, text/event-stream"}
    with (
        httpx.Client(base_url=small_mcp.url, headers={**accept, "Authorization": f"Bearer {key}"},
                     timeout=60) as mine,
        httpx.Client(base_url=small_mcp.url, headers={**accept, **small_mcp.headers},
                     timeout=60) as other,
    ):  # fmt: skip
        # Requests that open no session (not an initialize) hold no slot once answered.
        for _ in range(PER_KEY + 1):
            stray = mine.post("/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert stray.status_code == 400, stray.text
        sessions = []
        for _ in range(PER_KEY):
            opened = mine.post("/mcp", json=INITIALIZE)
            assert opened.status_code == 200, opened.text
            sessions.append(opened.headers["mcp-session-id"])

        refused = mine.post("/mcp", json=INITIALIZE)
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert f"{PER_KEY} open MCP sessions" in error["message"]
        assert "DELETE" in error["message"] and "idle" in error["message"]

        # Another credential has slots of its own.
        theirs = other.post("/mcp", json=INITIALIZE)
        assert theirs.status_code == 200, theirs.text
        # Only the owner may close a session; a refused close frees nothing.
        hijack = other.delete("/mcp", headers={"Mcp-Session-Id": sessions[0]})
        assert hijack.status_code == 404, hijack.text
        assert mine.post("/mcp", json=INITIALIZE).status_code == 429

        closed = mine.delete("/mcp", headers={"Mcp-Session-Id": sessions[0]})
        assert closed.status_code == 200, closed.text
        reopened = mine.post("/mcp", json=INITIALIZE)
        assert reopened.status_code == 200, reopened.text
        assert mine.post("/mcp", json=INITIALIZE).status_code == 429
        for session in [*sessions[1:], reopened.headers["mcp-session-id"]]:
            assert mine.delete("/mcp", headers={"Mcp-Session-Id": session}).status_code == 200
        other.delete("/mcp", headers={"Mcp-Session-Id": theirs.headers["mcp-session-id"]})
