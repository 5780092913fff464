"""Sandbox lifetimes without runsc: the deadline rules, the timeout loop, set_timeout, the
retention purge, the exec sessions' activity, and the route, SDK and CLI that reach them.

The loop and the purge run in the real SandboxService over a real SQLiteStore; only the
two steps that need runsc (terminate, pause) are replaced by fakes that record the call.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from click.testing import CliRunner
from fastapi import Depends, FastAPI

from stockade import AsyncClient, AsyncSandbox, Client, Sandbox
from stockade.cli._common import CliState
from stockade.cli.main import cli
from stockade.errors import (
    InvalidArgumentError,
    SandboxPausedError,
    SandboxTerminatedError,
    ServerError,
    StockadeTimeoutError,
)
from stockade.server.agent.protocol import Frame, FrameType
from stockade.server.api import sandboxes as sandbox_routes
from stockade.server.api.deps import require_token
from stockade.server.api.errors import install_error_handlers
from stockade.server.config import DEFAULT_RETENTION, ConfigError, ServerConfig, _seconds
from stockade.server.images.catalog import ImageCatalog
from stockade.server.runtime import cgroups
from stockade.server.runtime.agent_link import AgentSilent, Channel
from stockade.server.runtime.runsc import RunscError, SandboxState
from stockade.server.service import lifetimes
from stockade.server.service.execs import TIMEOUT_EXIT_CODE, ExecSession, ExitInfo
from stockade.server.service.lifetimes import Deadline
from stockade.server.service.sandboxes import SandboxService
from stockade.server.state.records import SandboxRecord
from stockade.server.state.store import SQLiteStore
from tests.unit.fakes import sandbox_record

TOKEN = "admin-token"
NOW = 1_800_000_000.0


def _record(sandbox_id: str = "sb-1", **fields: Any) -> SandboxRecord:
    record = SandboxRecord(
        id=sandbox_id, image="debian", cpu=1, memory=256, disk=256, timeout=300,
        status="running", created_at=NOW, started_at=NOW, expires_at=NOW + 300,
    )  # fmt: skip
    for name, value in fields.items():
        setattr(record, name, value)
    return record


# -- the rules ----------------------------------------------------------------------------


def test_deadline_is_the_timeout_without_idle_timeout() -> None:
    due = lifetimes.deadline(_record(), last_active=NOW + 100, busy=False, since=NOW)
    assert due == Deadline(NOW + 300, "timeout")
    never = _record(expires_at=None)
    assert lifetimes.deadline(never, last_active=None, busy=False, since=NOW) is None


def test_idle_deadline_counts_from_the_last_activity() -> None:
    record = _record(idle_timeout=30)
    assert lifetimes.deadline(record, last_active=None, busy=False, since=NOW) == Deadline(
        NOW + 30, "idle"
    )
    assert lifetimes.deadline(record, last_active=NOW + 50, busy=False, since=NOW) == Deadline(
        NOW + 80, "idle"
    )
    # Whichever comes first wins: here the timeout.
    late = lifetimes.deadline(record, last_active=NOW + 290, busy=False, since=NOW)
    assert late == Deadline(NOW + 300, "timeout")


def test_a_busy_sandbox_has_no_idle_deadline() -> None:
    record = _record(idle_timeout=30, expires_at=None)
    assert lifetimes.deadline(record, last_active=NOW, busy=True, since=NOW) is None
    record.expires_at = NOW + 300
    assert lifetimes.deadline(record, last_active=NOW, busy=True, since=NOW) == Deadline(
        NOW + 300, "timeout"
    )


def test_after_a_restart_activity_counts_from_the_restart() -> None:
    # Started an hour before this server: it was not idle for an hour as far as we know.
    record = _record(idle_timeout=30, started_at=NOW - 3600, expires_at=None)
    due = lifetimes.deadline(record, last_active=None, busy=False, since=NOW)
    assert due == Deadline(NOW + 30, "idle")


def test_end_messages_name_the_limit_and_the_fix() -> None:
    idle = lifetimes.end_message(_record(idle_timeout=30), "idle")
    assert "idle_timeout of 30s" in idle and "`idle_timeout=`" in idle
    assert "no exec, file or API activity" in idle
    timeout = lifetimes.end_message(_record(timeout=2.5), "timeout")
    assert "timeout of 2.5s" in timeout and "`timeout=`" in timeout
    assert "set_timeout" in timeout


def test_purgeable_are_the_ended_records_past_retention() -> None:
    records = [
        _record("sb-old-term", status="terminated", ended_at=NOW - 100),
        _record("sb-old-fail", status="failed", ended_at=NOW - 100),
        _record("sb-new-term", status="terminated", ended_at=NOW - 10),
        _record("sb-running", status="running", ended_at=None, created_at=NOW - 1000),
        _record("sb-paused", status="paused", paused_at=NOW - 1000),
        _record("sb-no-end", status="failed", ended_at=None, created_at=NOW - 1000),
    ]
    found = lifetimes.purgeable(records, retention=60, now=NOW)
    assert [r.id for r in found] == ["sb-old-term", "sb-old-fail", "sb-no-end"]
    assert lifetimes.purgeable(records, retention=0, now=NOW) == []


def test_purge_interval() -> None:
    assert lifetimes.purge_interval(DEFAULT_RETENTION) == 60.0
    assert lifetimes.purge_interval(100) == 10.0
    assert lifetimes.purge_interval(0.001) == 0.1


def _retention(flag: float | None) -> float:
    return _seconds(flag, "--retention", "STOCKADE_RETENTION", DEFAULT_RETENTION, "0: forever")


def test_retention_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKADE_RETENTION", raising=False)
    assert _retention(None) == DEFAULT_RETENTION == 7 * 86400
    monkeypatch.setenv("STOCKADE_RETENTION", "3600")
    assert _retention(None) == 3600
    assert _retention(5) == 5  # the flag wins
    monkeypatch.setenv("STOCKADE_RETENTION", "0")
    assert _retention(None) == 0
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv("STOCKADE_RETENTION", bad)
        with pytest.raises(ConfigError, match="STOCKADE_RETENTION"):
            _retention(None)
    with pytest.raises(ConfigError, match="--retention"):
        _retention(-3)


# -- the service, over a real store -------------------------------------------------------


class Ends:
    """Stand-ins for terminate and pause (which need runsc): they record the call and
    update the record as the real ones would."""

    def __init__(self, svc: SandboxService, *, pause_fails: bool = False) -> None:
        self.svc = svc
        self.pause_fails = pause_fails
        self.calls: list[tuple[str, str, str, float]] = []  # (verb, id, reason, when)
        self.messages: dict[str, str] = {}

    async def terminate(
        self, sandbox_id: str, *, reason: str = "terminated", message: str | None = None
    ) -> SandboxRecord:
        record = await self.svc.get(sandbox_id)
        self.calls.append(("terminate", sandbox_id, reason, time.time()))
        self.messages[sandbox_id] = message or ""
        record.status, record.reason, record.message = "terminated", reason, message
        record.ended_at = time.time()
        await self.svc.store.put_sandbox(record)
        return record

    async def pause(self, sandbox_id: str) -> SandboxRecord:
        if self.pause_fails:
            raise RuntimeError("checkpointing failed: no space left")
        record = await self.svc.get(sandbox_id)
        self.calls.append(("pause", sandbox_id, "", time.time()))
        record.status, record.paused_at = "paused", time.time()
        # As the real pause: what is left of the timeout is kept for the resume.
        record.timeout = max(1.0, (record.expires_at or 0) - record.paused_at)
        await self.svc.store.put_sandbox(record)
        return record


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[SandboxService]:
    config = ServerConfig(data_dir=tmp_path, cache_dir=tmp_path, token=TOKEN, retention=60)
    store = SQLiteStore(tmp_path / "state.db")
    service = SandboxService(config, store, cast(ImageCatalog, None))
    yield service
    await service.stop()
    await store.close()


@pytest.fixture
def ends(svc: SandboxService, monkeypatch: pytest.MonkeyPatch) -> Ends:
    fake = Ends(svc)
    monkeypatch.setattr(svc, "terminate", fake.terminate)
    monkeypatch.setattr(svc, "pause", fake.pause)
    return fake


@pytest.fixture
async def loop_running(svc: SandboxService) -> AsyncIterator[None]:
    svc._timer = asyncio.create_task(svc._expire_loop())  # stopped by svc.stop()
    yield


async def _running(svc: SandboxService, sandbox_id: str, **fields: Any) -> SandboxRecord:
    now = time.time()
    record = _record(sandbox_id, created_at=now, started_at=now, expires_at=now + 300)
    for name, value in fields.items():
        setattr(record, name, value)
    await svc.store.put_sandbox(record)
    svc._deadline_changed.set()  # as a create does
    return record


async def _wait_ended(ends: Ends, sandbox_id: str, within: float) -> tuple[str, str, float]:
    deadline = time.time() + within
    while time.time() < deadline:
        for verb, sid, reason, when in ends.calls:
            if sid == sandbox_id:
                return verb, reason, when
        await asyncio.sleep(0.01)
    raise AssertionError(f"{sandbox_id} did not end within {within}s")


@pytest.mark.usefixtures("loop_running")
async def test_loop_ends_a_sandbox_at_its_timeout(svc: SandboxService, ends: Ends) -> None:
    record = await _running(svc, "sb-t", expires_at=time.time() + 0.3, timeout=0.3)
    verb, reason, when = await _wait_ended(ends, "sb-t", 2)
    assert (verb, reason) == ("terminate", "timeout")
    assert record.expires_at is not None
    assert record.expires_at - 0.01 <= when < record.expires_at + 0.2
    assert "timeout of 0.3s" in ends.messages["sb-t"]


@pytest.mark.usefixtures("loop_running")
async def test_activity_defers_the_idle_deadline(svc: SandboxService, ends: Ends) -> None:
    await _running(svc, "sb-i", idle_timeout=0.4)
    for _ in range(6):  # 1.2 s of activity: three idle_timeouts
        await asyncio.sleep(0.2)
        svc.touch("sb-i")
    last = time.time()
    assert ends.calls == []
    verb, reason, when = await _wait_ended(ends, "sb-i", 2)
    assert (verb, reason) == ("terminate", "idle")
    assert last + 0.4 - 0.01 <= when < last + 0.4 + 0.2
    assert "idle_timeout of 0.4s" in ends.messages["sb-i"]


@pytest.mark.usefixtures("loop_running")
async def test_a_live_exec_keeps_it_from_idling(svc: SandboxService, ends: Ends) -> None:
    await _running(svc, "sb-b", idle_timeout=0.3)
    svc.busy("sb-b")
    svc.busy("sb-b")  # two sessions
    await asyncio.sleep(0.8)
    svc.idle_again("sb-b")
    await asyncio.sleep(0.5)
    assert ends.calls == []
    # The last session ends while the loop sleeps towards the 300 s timeout: it must wake.
    svc.idle_again("sb-b")
    done = time.time()
    verb, reason, when = await _wait_ended(ends, "sb-b", 2)
    assert (verb, reason) == ("terminate", "idle")
    assert done + 0.3 - 0.01 <= when < done + 0.3 + 0.2
    assert svc._busy == {}


@pytest.mark.usefixtures("loop_running")
async def test_set_timeout_extends_and_shortens(svc: SandboxService, ends: Ends) -> None:
    await _running(svc, "sb-x", expires_at=time.time() + 0.3)
    await _running(svc, "sb-y", expires_at=time.time() + 300)
    longer = await svc.set_timeout("sb-x", 1.0)
    # Shortened while the loop sleeps towards a later deadline: it must wake.
    shorter = await svc.set_timeout("sb-y", 0.5)
    assert longer.timeout == 1.0 and shorter.timeout == 0.5
    stored = await svc.get("sb-x")
    assert stored.expires_at == longer.expires_at
    assert longer.expires_at is not None and shorter.expires_at is not None
    assert abs(longer.expires_at - (time.time() + 1.0)) < 0.1
    _, reason, y_end = await _wait_ended(ends, "sb-y", 2)
    assert reason == "timeout" and abs(y_end - shorter.expires_at) < 0.2
    _, reason, x_end = await _wait_ended(ends, "sb-x", 2)
    assert reason == "timeout" and abs(x_end - longer.expires_at) < 0.2


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_stopping_is_never_lost_to_a_deadline_change(svc: SandboxService, turns: int) -> None:
    # An _expire that ends as the server stops sets _deadline_changed just as the loop is
    # cancelled; the loop must end all the same, or stop() would wait for it forever.
    loop = asyncio.create_task(svc._expire_loop())
    await asyncio.sleep(0.05)
    svc._deadline_changed.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    loop.cancel()
    done, _ = await asyncio.wait({loop}, timeout=2)
    assert done and loop.cancelled()


async def test_set_timeout_refuses_ended_paused_and_bad_values(svc: SandboxService) -> None:
    await svc.store.put_sandbox(_record("sb-done", status="terminated", reason="timeout"))
    await svc.store.put_sandbox(_record("sb-zz", status="paused"))
    await svc.store.put_sandbox(_record("sb-ok"))
    with pytest.raises(SandboxTerminatedError, match="sb-done"):
        await svc.set_timeout("sb-done", 10)
    with pytest.raises(SandboxPausedError, match="resume"):
        await svc.set_timeout("sb-zz", 10)
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(InvalidArgumentError, match="timeout"):
            await svc.set_timeout("sb-ok", bad)


@pytest.mark.usefixtures("loop_running")
async def test_on_timeout_pause_pauses_instead(svc: SandboxService, ends: Ends) -> None:
    await _running(svc, "sb-p", idle_timeout=0.3, on_timeout="pause")
    await _running(svc, "sb-q", expires_at=time.time() + 0.3, timeout=40, on_timeout="pause")
    verb, _, _ = await _wait_ended(ends, "sb-p", 2)
    assert verb == "pause"
    verb, _, _ = await _wait_ended(ends, "sb-q", 2)
    assert verb == "pause"
    idle_paused, timeout_paused = await svc.get("sb-p"), await svc.get("sb-q")
    assert idle_paused.status == timeout_paused.status == "paused"
    # Paused at its idle_timeout: what was left of its timeout waits for the resume.
    assert idle_paused.timeout > 290
    # Paused at its timeout: a resume gets the whole timeout again (less the moment the
    # pause took), not nothing.
    assert 39 < timeout_paused.timeout <= 40
    await asyncio.sleep(0.5)
    assert len(ends.calls) == 2  # a paused sandbox has no clocks


@pytest.mark.usefixtures("loop_running")
async def test_a_failed_pause_terminates_and_says_why(svc: SandboxService, ends: Ends) -> None:
    ends.pause_fails = True
    await _running(svc, "sb-f", idle_timeout=0.3, on_timeout="pause")
    verb, reason, _ = await _wait_ended(ends, "sb-f", 2)
    assert (verb, reason) == ("terminate", "idle")
    assert "pausing it instead failed: checkpointing failed" in ends.messages["sb-f"]


async def test_purge_removes_old_ended_records_and_their_logs(svc: SandboxService) -> None:
    now = time.time()
    cases = {
        "sb-old": _record("sb-old", status="terminated", ended_at=now - 120),
        "sb-failed": _record("sb-failed", status="failed", ended_at=now - 120),
        "sb-recent": _record("sb-recent", status="terminated", ended_at=now - 10),
        "sb-live": _record("sb-live", status="running", created_at=now - 1000),
        "sb-asleep": _record("sb-asleep", status="paused", paused_at=now - 1000),
    }
    for record in cases.values():
        await svc.store.put_sandbox(record)
        svc.sandbox_dir(record.id).mkdir(parents=True)
        svc.log_path(record.id).write_text("output\n")
        svc.touch(record.id)
    purged = await svc.purge()
    assert sorted(purged) == ["sb-failed", "sb-old"]
    for gone in purged:
        assert await svc.store.get_sandbox(gone) is None
        assert not svc.sandbox_dir(gone).exists()
        assert gone not in svc._active
    for kept in ("sb-recent", "sb-live", "sb-asleep"):
        assert await svc.store.get_sandbox(kept) is not None
        assert svc.log_path(kept).read_text() == "output\n"
    assert await svc.purge() == []
    # Retention 0 keeps everything forever.
    svc.config.retention = 0
    assert await svc.purge(now=now + 10**9) == []


async def test_purge_loop_runs_by_itself(svc: SandboxService) -> None:
    svc.config.retention = 0.5
    await svc.store.put_sandbox(_record("sb-gone", status="terminated", ended_at=time.time()))
    svc._purger = asyncio.create_task(svc._purge_loop())
    for _ in range(100):
        if await svc.store.get_sandbox("sb-gone") is None:
            break
        await asyncio.sleep(0.05)
    assert await svc.store.get_sandbox("sb-gone") is None


# -- exec sessions count as activity ------------------------------------------------------


class FakeChannel:
    """An agent channel that answers an EXEC with STARTED, then the scripted frames."""

    def __init__(self, *frames: Frame) -> None:
        self.frames = [Frame(FrameType.STARTED, 1, b'{"pid": 7}'), *frames]
        self.finished = False
        self.number = 1

    async def send_json(self, ftype: int, obj: Any) -> None:
        pass

    async def recv(self) -> Frame:
        if not self.frames:
            await asyncio.Event().wait()  # a command that runs until killed
        return self.frames.pop(0)

    async def reply(self, timeout: float = 30.0, *, strict: bool = False) -> Frame:
        return await self.recv()

    def grant(self, nbytes: int) -> None:
        pass

    def close(self, last: Frame | None = None) -> None:
        self.finished = True
        if last is not None:
            self.frames.append(last)


def _session(svc: SandboxService, channel: FakeChannel, activity: bool = True) -> ExecSession:
    return ExecSession(
        cast(Channel, channel), svc, "sb-e", pty=False, timeout=None, activity=activity
    )


async def test_a_session_is_busy_from_start_to_exit(svc: SandboxService) -> None:
    session = _session(svc, FakeChannel(Frame(FrameType.EXIT, 1, b'{"exit_code": 0}')))
    await session.start({"argv": ["true"]})
    assert svc._busy == {"sb-e": 1}
    events = [e async for e in session.events()]
    assert svc._busy == {}
    assert events[-1] == session.exit
    await session.aclose()  # releasing twice does not go below zero
    assert svc._busy == {}
    assert time.time() - svc._active["sb-e"] < 1


class SilentChannel(FakeChannel):
    """The agent of a sandbox whose code stopped it: it never answers."""

    async def reply(self, timeout: float = 30.0, *, strict: bool = False) -> Frame:
        raise AgentSilent(f"the agent of sandbox sb-e did not answer within {timeout:g}s")


async def test_a_command_whose_timeout_passes_before_it_starts_times_out(
    svc: SandboxService,
) -> None:
    channel = SilentChannel()
    session = ExecSession(cast(Channel, channel), svc, "sb-e", pty=False, timeout=0.5)
    await session.start({"argv": ["true"]})
    await session.write_stdin(b"ignored")  # no channel to send on: not an error
    await session.close_stdin()
    events = [e async for e in session.events()]
    assert events == [ExitInfo(TIMEOUT_EXIT_CODE, timed_out=True)] and channel.finished
    assert svc._busy == {}
    # Without a deadline of its own, the command waits the agent's, then it is a 504.
    silent = ExecSession(cast(Channel, SilentChannel()), svc, "sb-e", pty=False, timeout=None)
    with pytest.raises(StockadeTimeoutError, match="kill -STOP"):
        await silent.start({"argv": ["true"]})
    assert svc._busy == {}


async def test_an_abandoned_or_killed_session_is_released(svc: SandboxService) -> None:
    # A client that goes away mid-command: the transport calls aclose.
    first = _session(svc, FakeChannel())
    await first.start({"argv": ["sleep", "100"]})
    second = _session(svc, FakeChannel(Frame(FrameType.STDOUT, 1, b"hi")))
    await second.start({"argv": ["sleep", "100"]})
    assert svc._busy == {"sb-e": 2}
    await first.aclose()
    assert svc._busy == {"sb-e": 1}
    # A consumer that stops reading the stream half way.
    stream = cast(AsyncGenerator[Any, None], second.events())
    assert await anext(stream) is not None
    await stream.aclose()
    assert svc._busy == {}


async def test_a_session_that_fails_to_start_is_released(svc: SandboxService) -> None:
    class Broken(FakeChannel):
        async def recv(self) -> Frame:
            raise asyncio.CancelledError  # e.g. the request was cancelled mid-start

    with pytest.raises(asyncio.CancelledError):
        await _session(svc, Broken()).start({"argv": ["true"]})
    assert svc._busy == {}


async def test_server_helpers_are_not_activity(svc: SandboxService) -> None:
    kernel = _session(svc, FakeChannel(), activity=False)
    await kernel.start({"argv": ["python3", "-m", "ipykernel_launcher"]})
    assert svc._busy == {} and "sb-e" not in svc._active
    await kernel.aclose()


# -- the route, the SDK and the CLI -------------------------------------------------------


@pytest.fixture
async def api(svc: SandboxService) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(sandbox_routes.router, dependencies=[Depends(require_token)])
    app.state.services = SimpleNamespace(config=svc.config, sandboxes=svc)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://stockade", headers=headers
    ) as client:
        yield client


async def test_timeout_route(svc: SandboxService, api: httpx.AsyncClient) -> None:
    await svc.store.put_sandbox(_record("sb-r", created_at=time.time()))
    await svc.store.put_sandbox(_record("sb-done", status="terminated", reason="timeout"))
    before = time.time()
    r = await api.post("/v1/sandboxes/sb-r/timeout", json={"timeout": 90})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timeout"] == 90 and body["status"] == "running"
    stored = await svc.get("sb-r")
    assert stored.expires_at is not None and before + 90 <= stored.expires_at <= time.time() + 90
    for bad in (0, 0.5, 86401, -5, "soon", None):
        r = await api.post("/v1/sandboxes/sb-r/timeout", json={"timeout": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_argument"
    r = await api.post("/v1/sandboxes/sb-r/timeout", json={"timeout": 86400})
    assert r.status_code == 200
    r = await api.post("/v1/sandboxes/sb-r/timeout", json={})
    assert r.status_code == 422
    r = await api.post("/v1/sandboxes/sb-r/timeout", json={"timeout": 5, "extra": 1})
    assert r.status_code == 422
    r = await api.post("/v1/sandboxes/sb-done/timeout", json={"timeout": 5})
    assert r.status_code == 409 and r.json()["error"]["code"] == "sandbox_terminated"
    r = await api.post("/v1/sandboxes/sb-nope/timeout", json={"timeout": 5})
    assert r.status_code == 404


async def test_async_sdk_set_timeout(svc: SandboxService, api: httpx.AsyncClient) -> None:
    await svc.store.put_sandbox(_record("sb-s", created_at=time.time()))
    transport = api._transport
    async with AsyncClient("http://stockade", TOKEN, transport=transport) as client:
        sb = await AsyncSandbox.from_id("sb-s", client=client)
        info = await sb.set_timeout(42)
        assert info.timeout == 42 and sb.last_info is info
        assert info.expires_at is not None
        assert abs(info.expires_at.timestamp() - (time.time() + 42)) < 2
        with pytest.raises(InvalidArgumentError, match="86400"):
            await sb.set_timeout(10**6)
        await svc.store.put_sandbox(_record("sb-s", status="terminated", reason="idle"))
        with pytest.raises(SandboxTerminatedError, match="idle"):
            await sb.set_timeout(42)


def _sync_api(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json=sandbox_record("sb-1"))
        assert (request.method, request.url.path) == ("POST", "/v1/sandboxes/sb-1/timeout")
        seen.append(json.loads(request.content))
        expires = "2026-11-26T18:10:00.000000Z"
        return httpx.Response(200, json=sandbox_record("sb-1", timeout=600, expires_at=expires))

    return httpx.MockTransport(handler)


def test_sync_sdk_and_cli_set_timeout() -> None:
    seen: list[dict[str, Any]] = []
    with Client("http://stockade", TOKEN, transport=_sync_api(seen)) as client:
        info = Sandbox.from_id("sb-1", client=client).set_timeout(600)
    assert seen == [{"timeout": 600}] and info.timeout == 600

    def factory(url: str | None, token: str | None) -> Client:
        return Client("http://stockade", TOKEN, transport=_sync_api(seen))

    result = CliRunner().invoke(
        cli, ["set-timeout", "sb-1", "600"], obj=CliState(client_factory=factory)
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "2026-11-26T18:10:00+00:00"
    assert seen[-1] == {"timeout": 600.0}
    help_text = CliRunner().invoke(cli, ["set-timeout", "--help"]).output
    assert "SECONDS" in help_text


@pytest.mark.parametrize(
    ("state", "ooms", "error", "says"),
    [
        (None, 0, SandboxTerminatedError, "ended while being checkpointed"),
        (SandboxState("sb-cp", "running", 1), 1, SandboxTerminatedError, "ran out of memory"),
        (SandboxState("sb-cp", "running", 1), 0, ServerError, "checkpointing sandbox sb-cp"),
    ],
)
async def test_a_failed_checkpoint_says_whether_the_sandbox_died_under_it(
    svc: SandboxService,
    monkeypatch: pytest.MonkeyPatch,
    state: SandboxState | None,
    ooms: int,
    error: type[Exception],
    says: str,
) -> None:
    """A sandbox killed (out of memory, say) while its pages are saved makes runsc's
    checkpoint fail: that is the sandbox's end, a 409, not a 500 of the server's."""
    await _running(svc, "sb-cp")
    svc.sandbox_dir("sb-cp").mkdir(parents=True)
    resumed: list[str] = []

    async def nothing(sandbox_id: str, *args: object) -> None:
        pass

    async def fail(sandbox_id: str, path: Path) -> None:
        raise RunscError("runsc checkpoint sb-cp failed: urpc: EOF")

    async def resume(sandbox_id: str) -> None:
        resumed.append(sandbox_id)

    async def get_state(sandbox_id: str) -> SandboxState | None:
        return state

    monkeypatch.setattr(svc.runsc, "pause", nothing)
    monkeypatch.setattr(svc.runsc, "checkpoint", fail)
    monkeypatch.setattr(svc.runsc, "resume", resume)
    monkeypatch.setattr(svc.runsc, "state", get_state)
    monkeypatch.setattr(cgroups, "oom_kills", lambda sandbox_id: ooms)
    with pytest.raises(error, match=says):
        await svc._pause("sb-cp")
    assert resumed == ["sb-cp"]
    assert not (svc.checkpoint_dir("sb-cp").with_name("checkpoint.tmp")).exists()
