"""A session's client is bound to the credential that opened it, progress
notifications are throttled and bounded, and /mcp counts each credential's open
sessions until they end."""

from __future__ import annotations

import contextvars
import hashlib
import json
import secrets

import pytest
from mcp.server.fastmcp.exceptions import ToolError
from starlette.types import Message, Receive, Scope, Send

from stockade.mcp import Connection, SessionDefaults, SessionSandboxes, tools
from stockade.server.api import mcp as mcp_api


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


# ---- /mcp: open sessions per credential (server/api/mcp.py) ----


def test_session_slots_count_per_credential_and_free_once() -> None:
    slots = mcp_api.SessionSlots(2)
    first, second = slots.admit(b"a"), slots.admit(b"a")
    assert first is not None and second is not None
    assert slots.admit(b"a") is None  # at its limit
    other = slots.admit(b"b")  # another credential is counted on its own
    assert other is not None and slots.held(b"b") == 1
    slots.bind(first, "s1")
    assert slots.owner_of("s1") == b"a"
    slots.end("s1")  # e.g. DELETE; then the session's own end releases it again
    slots.release(first)
    assert slots.held(b"a") == 1 and slots.owner_of("s1") is None
    third = slots.admit(b"a")
    assert third is not None and slots.admit(b"a") is None
    for slot in (second, third, other):
        slots.release(slot)
    assert slots.held(b"a") == slots.held(b"b") == 0
    with pytest.raises(ValueError, match="positive"):
        mcp_api.SessionSlots(0)


def test_session_slots_keep_a_bounded_map(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mcp_api, "_MAX_TRACKED", 3)
    slots = mcp_api.SessionSlots(10)
    for n in range(5):
        slot = slots.admit(b"a")
        assert slot is not None
        slots.bind(slot, f"s{n}")
    # The two oldest were forgotten, and their counts given back with them.
    assert [slots.owner_of(f"s{n}") for n in range(5)] == [None, None, b"a", b"a", b"a"]
    assert slots.held(b"a") == 3


def test_sessions_per_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKADE_MCP_SESSIONS_PER_KEY", raising=False)
    assert mcp_api.sessions_per_credential_from_env() == 32
    for raw, limit in (("3", 3), (" 7 ", 7), ("0", 32), ("-1", 32), ("many", 32), ("٣", 32)):
        monkeypatch.setenv("STOCKADE_MCP_SESSIONS_PER_KEY", raw)
        assert mcp_api.sessions_per_credential_from_env() == limit, raw


class _Manager:
    """The MCP SDK's session manager, as McpEndpoint uses it (handle_request): a request
    without a session ID opens one and starts its task, which inherits the request's
    context (kept here, to end the session later from it, as its task would)."""

    def __init__(self) -> None:
        self.tasks: dict[str, contextvars.Context] = {}
        self.full = False  # the SDK's own global limit
        self.bad = False  # not an initialize: the SDK names a session, answers 400, drops it

    async def handle_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        if b"mcp-session-id" in headers:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        elif self.full:
            await send({"type": "http.response.start", "status": 503, "headers": []})
        else:
            session_id = secrets.token_hex(16)
            self.tasks[session_id] = contextvars.copy_context()
            start = [(b"mcp-session-id", session_id.encode())]
            status = 400 if self.bad else 200
            await send({"type": "http.response.start", "status": status, "headers": start})
        await send({"type": "http.response.body", "body": b"{}"})

    def end(self, session_id: str, endpoint: mcp_api.McpEndpoint) -> None:
        """The session idled out or crashed: its task ends, and build_server's
        on_session_end runs in it."""
        self.tasks.pop(session_id).run(endpoint._session_ended)


async def _request(
    endpoint: mcp_api.McpEndpoint, token: str, method: str = "POST", session: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    if session is not None:
        headers.append((b"mcp-session-id", session.encode()))
    scope = {"type": "http", "method": method, "path": "/mcp", "headers": headers}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await endpoint(scope, receive, send)
    start = sent[0]
    answer = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], answer, b"".join(m.get("body", b"") for m in sent[1:])


async def test_mcp_endpoint_counts_sessions_until_they_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mcp_api, "check_token", lambda conn: None)  # any bearer is valid
    endpoint = mcp_api.McpEndpoint(sessions_per_credential=2)
    manager = _Manager()
    endpoint._manager = manager  # type: ignore[assignment]
    opened = []
    for _ in range(2):
        status, headers, _body = await _request(endpoint, "stk_a")
        assert status == 200
        opened.append(headers["mcp-session-id"])

    status, _headers, body = await _request(endpoint, "stk_a")
    assert status == 429
    error = json.loads(body)["error"]
    assert error["code"] == "quota_exceeded"
    assert "2 open MCP sessions" in error["message"] and "DELETE" in error["message"]
    assert (await _request(endpoint, "stk_b"))[0] == 200  # another credential: its own count

    # A request with a session ID, and one the SDK refuses, take no slot.
    assert (await _request(endpoint, "stk_a", session=opened[0]))[0] == 200
    manager.full = True
    assert (await _request(endpoint, "stk_b"))[0] == 503
    manager.full = False
    manager.bad = True
    assert (await _request(endpoint, "stk_b"))[0] == 400
    manager.bad = False
    assert endpoint.slots.held(hashlib.sha256(b"Bearer stk_b").digest()) == 1
    manager.end(next(reversed(manager.tasks)), endpoint)  # its task ends later: no change
    assert endpoint.slots.held(hashlib.sha256(b"Bearer stk_b").digest()) == 1

    # Idled out: its task's end gives the slot back.
    manager.end(opened[0], endpoint)
    status, headers, _body = await _request(endpoint, "stk_a")
    assert status == 200
    assert (await _request(endpoint, "stk_a"))[0] == 429

    # Closed by the client: the slot is free at once; the task's end later changes nothing.
    assert (await _request(endpoint, "stk_a", "DELETE", opened[1]))[0] == 200
    assert (await _request(endpoint, "stk_a"))[0] == 200
    manager.end(opened[1], endpoint)
    assert (await _request(endpoint, "stk_a"))[0] == 429
