"""What the MCP layer costs: a ``run_code`` tool call over the server's ``/mcp`` (streamable
HTTP) and over ``stockade mcp`` (stdio), each against the Python SDK's ``run_code`` on a
sandbox of the same image, measured in turns in one run. Both MCP transports reach the
same sandbox API underneath, so the ratio is the price of the MCP framing, the JSON-RPC
session and (for HTTP) the loopback hop the server's /mcp makes with the caller's key."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from stockade import Client, Sandbox

from .access import Row, Timer, _in_turns
from .server import Server

IMAGE = "code-interpreter"
CODE = "1 + 1"


@asynccontextmanager
async def _http(url: str, token: str) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(headers=headers, timeout=120) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def _stdio(url: str, token: str) -> AsyncIterator[ClientSession]:
    env = {**os.environ, "STOCKADE_URL": url, "STOCKADE_TOKEN": token}
    command = str(Path(sys.executable).parent / "stockade")
    params = StdioServerParameters(command=command, args=["mcp"], env=env)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def _tool_call(portal: BlockingPortal, session: ClientSession) -> Callable[[], None]:
    def once() -> None:
        result = portal.call(session.call_tool, "run_code", {"code": CODE})
        assert not result.isError, result.content

    once()  # the session's sandbox and its kernel start here, outside the timing
    return once


def mcp_rows(server: Server, runs: int, timed: Timer) -> list[Row]:
    rows: list[Row] = []
    with Client(server.url, server.token) as client:
        sb = Sandbox.create(image=IMAGE, memory=1024, timeout=1800, client=client)
        try:
            ex = sb.run_code(CODE)  # starts the kernel
            assert ex.error is None, ex.error
            with start_blocking_portal() as portal:
                for name, opener in (("HTTP /mcp", _http), ("stdio", _stdio)):
                    with portal.wrap_async_context_manager(
                        opener(server.url, server.token)
                    ) as session:
                        ours, theirs = _in_turns(
                            timed, _tool_call(portal, session), lambda: sb.run_code(CODE), runs
                        )
                    rows.append((f"MCP run_code round trip ({name})", ours, theirs, "SDK run_code"))
        finally:
            sb.terminate()
    return rows
