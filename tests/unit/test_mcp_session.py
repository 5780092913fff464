"""A session's client is bound to the credential that opened it, and progress
notifications are throttled and bounded."""

from __future__ import annotations

import pytest
from mcp.server.fastmcp.exceptions import ToolError

from stockade.mcp import Connection, SessionDefaults, SessionSandboxes, tools


async def test_a_second_credential_cannot_use_the_sessions_client() -> None:
    sessions = SessionSandboxes(SessionDefaults())
    mine = Connection(url="http://127.0.0.1:1", token="stk_mine")
    try:
        client = sessions.client(mine)
        assert sessions.client(Connection(url="http://127.0.0.1:1", token="stk_mine")) is client
        with pytest.raises(ToolError, match="another credential"):
            sessions.client(Connection(url="http://127.0.0.1:1", token="stk_theirs"))
    finally:
        await sessions.aclose()


class _Ctx:
    """What _Progress uses of an MCP Context: report_progress."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, str]] = []

    async def report_progress(self, progress: float, total: float | None, message: str) -> None:
        self.sent.append((progress, message))


async def test_progress_is_throttled_bounded_and_flushed() -> None:
    now = [100.0]
    ctx = _Ctx()
    progress = tools._Progress(ctx, clock=lambda: now[0])  # type: ignore[arg-type]
    await progress.feed(b"first\n")  # the first chunk goes at once
    for _ in range(1000):
        await progress.feed(b"x" * 10)  # within the same quarter second: held back
    assert ctx.sent == [(6, "first\n")]
    now[0] += 1
    await progress.feed(b"end\n")
    done, text = ctx.sent[-1]
    assert done == 6 + 10_000 + 4
    assert len(text) == tools._PROGRESS_TEXT and text.endswith("xxend\n")
    await progress.flush()  # nothing new: nothing sent
    assert len(ctx.sent) == 2


async def test_every_tool_says_what_it_returns() -> None:
    listed = await tools.build_server().list_tools()
    assert len(listed) == 10
    for tool in listed:
        assert "return" in (tool.description or "").lower(), tool.name
        assert "\n    " not in (tool.description or ""), tool.name
