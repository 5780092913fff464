"""Sandbox lifetimes without runsc: the deadline rules, the timeout loop, set_timeout, the
retention purge, the exec sessions' activity, and the route, SDK and CLI that reach them.

The loop, the purge, terminate and pause run in the real SandboxService over a real
SQLiteStore; only the runtime (runsc) is a fake, injected as the server injects the real
one, that records what it was asked to do.
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
from stockade.server.runtime.runsc import Runsc, RunscError, SandboxState
from stockade.server.service.execs import TIMEOUT_EXIT_CODE, ExecSession, ExitInfo
from stockade.server.service.quotas import Quotas
from stockade.server.service.sandboxes import SandboxService, lifetimes
from stockade.server.service.sandboxes.lifetimes import Deadline
from stockade.server.state.records import EndReason, SandboxRecord, SandboxStatus
from stockade.server.state.store import SQLiteStore
from tests.unit.fakes import operator_access, sandbox_record
from tests.waiting import wait_for_async

TOKEN = "admin-token"
NOW = 1_800_000_000.0


def _record(sandbox_id: str = "sb-1", **fields: Any) -> SandboxRecord:
    record = SandboxRecord(
        id=sandbox_id, image="debian", cpu=1, memory=256, disk=256, timeout=300,
        status=SandboxStatus.RUNNING, created_at=NOW, started_at=NOW, expires_at=NOW + 300,
    )  # fmt: skip
    for name, value in fields.items():
        setattr(record, name, value)
    return record


# -- the rules ----------------------------------------------------------------------------


def test_deadline_is_the_timeout_without_idle_timeout() -> None:
    due = lifetimes.deadline(_record(), last_active=NOW + 100, busy=False, since=NOW)
    assert due == Deadline(NOW + 300, EndReason.TIMEOUT)
    never = _record(expires_at=None)
    assert lifetimes.deadline(never, last_active=None, busy=False, since=NOW) is None


def test_idle_deadline_counts_from_the_last_activity() -> None:
    record = _record(idle_timeout=30)
    assert lifetimes.deadline(record, last_active=None, busy=False, since=NOW) == Deadline(
        NOW + 30, EndReason.IDLE
    )
    assert lifetimes.deadline(record, last_active=NOW + 50, busy=False, since=NOW) == Deadline(
        NOW + 80, EndReason.IDLE
    )
    # Whichever comes first wins: here the timeout.
    late = lifetimes.deadline(record, last_active=NOW + 290, busy=False, since=NOW)
    assert late == Deadline(NOW + 300, EndReason.TIMEOUT)


def test_a_busy_sandbox_has_no_idle_deadline() -> None:
    record = _record(idle_timeout=30, expires_at=None)
    assert lifetimes.deadline(record, last_active=NOW, busy=True, since=NOW) is None
    record.expires_at = NOW + 300
    assert lifetimes.deadline(record, last_active=NOW, busy=True, since=NOW) == Deadline(
        NOW + 300, EndReason.TIMEOUT
    )


def test_after_a_restart_activity_counts_from_the_restart() -> None:
    # Started an hour before this server: it was not idle for an hour as far as we know.
    record = _record(idle_timeout=30, started_at=NOW - 3600, expires_at=None)
    due = lifetimes.deadline(record, last_active=None, busy=False, since=NOW)
    assert due == Deadline(NOW + 30, EndReason.IDLE)


def test_end_messages_name_the_limit_and_the_fix() -> None:
    idle = lifetimes.end_message(_record(idle_timeout=30), EndReason.IDLE)
    assert "idle_timeout of 30s" in idle and "`idle_timeout=`" in idle
    assert "no exec, file or API activity" in idle
    timeout = lifetimes.end_message(_record(timeout=2.5), EndReason.TIMEOUT)
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


class FakeRuntime:
    """runsc as the sandbox service uses it, without sandboxes: it records each call
    (verb, sandbox ID, when) and does what the state machine needs of it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.checkpoint_error: str | None = None  # checkpoint fails with this
        self.states: dict[str, SandboxState | None] = {}

    def _note(self, verb: str, sandbox_id: str) -> None:
        self.calls.append((verb, sandbox_id, time.time()))

    async def pause(self, sandbox_id: str) -> None:
        self._note("pause", sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        self._note("resume", sandbox_id)

    async def checkpoint(self, sandbox_id: str, image_path: Path) -> None:
        self._note("checkpoint", sandbox_id)
        if self.checkpoint_error is not None:
            raise RunscError(self.checkpoint_error)
        (image_path / "checkpoint.img").write_bytes(b"memory")

    async def delete(self, sandbox_id: str) -> None:
        self._note("delete", sandbox_id)

    async def state(self, sandbox_id: str) -> SandboxState | None:
        return self.states.get(sandbox_id, SandboxState(sandbox_id, "running", 1))

    async def list(self) -> list[SandboxState]:
        return []

    def first(self, sandbox_id: str, *verbs: str) -> tuple[str, float] | None:
        """The first of ``verbs`` asked for ``sandbox_id``: (verb, when)."""
        return next(((v, t) for v, sid, t in self.calls if sid == sandbox_id and v in verbs), None)


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
async def svc(tmp_path: Path, runtime: FakeRuntime) -> AsyncIterator[SandboxService]:
    config = ServerConfig(data_dir=tmp_path, cache_dir=tmp_path, token=TOKEN, retention=60)
    store = SQLiteStore(tmp_path / "state.db")
    service = SandboxService(
        config, store, cast(ImageCatalog, None), runtime=cast(Runsc, runtime)
    )
    yield service
    await service.stop()
    await store.close()


@pytest.fixture
async def loop_running(svc: SandboxService) -> AsyncIterator[None]:
    svc.lifetimes.start()  # stopped by svc.stop()
    yield


async def _running(svc: SandboxService, sandbox_id: str, **fields: Any) -> SandboxRecord:
    now = time.time()
    record = _record(sandbox_id, created_at=now, started_at=now, expires_at=now + 300)
    for name, value in fields.items():
        setattr(record, name, value)
    svc.sandbox_dir(sandbox_id).mkdir(parents=True, exist_ok=True)
    await svc.store.put_sandbox(record)
    svc.lifetimes.changed()  # as a create does
    return record


async def _wait_ended(
    svc: SandboxService, runtime: FakeRuntime, sandbox_id: str, within: float
) -> tuple[str, str, float]:
    """How the sandbox left ``running`` once it has: (status, reason, when the runtime was
    first asked to stop it)."""

    async def probe() -> tuple[str, str, float] | None:
        record = await svc.get(sandbox_id)
        asked = runtime.first(sandbox_id, "delete", "pause")
        if record.status == "running" or asked is None:
            return None
        return record.status, record.reason or "", asked[1]

    return await wait_for_async(probe, timeout=within, interval=0.01, what=f"{sandbox_id} to end")


@pytest.mark.usefixtures("loop_running")
async def test_loop_ends_a_sandbox_at_its_timeout(
    svc: SandboxService, runtime: FakeRuntime
) -> None:
    record = await _running(svc, "sb-t", expires_at=time.time() + 0.3, timeout=0.3)
    status, reason, when = await _wait_ended(svc, runtime, "sb-t", 2)
    assert (status, reason) == ("terminated", "timeout")
    assert record.expires_at is not None
    assert record.expires_at - 0.01 <= when < record.expires_at + 0.2
    assert "timeout of 0.3s" in ((await svc.get("sb-t")).message or "")


@pytest.mark.usefixtures("loop_running")
async def test_activity_defers_the_idle_deadline(
    svc: SandboxService, runtime: FakeRuntime
) -> None:
    await _running(svc, "sb-i", idle_timeout=0.4)
    for _ in range(6):  # 1.2 s of activity: three idle_timeouts
        await asyncio.sleep(0.2)
        svc.touch("sb-i")
    last = time.time()
    assert runtime.calls == []
    status, reason, when = await _wait_ended(svc, runtime, "sb-i", 2)
    assert (status, reason) == ("terminated", "idle")
    assert last + 0.4 - 0.01 <= when < last + 0.4 + 0.2
    assert "idle_timeout of 0.4s" in ((await svc.get("sb-i")).message or "")


@pytest.mark.usefixtures("loop_running")
async def test_a_live_exec_keeps_it_from_idling(
    svc: SandboxService, runtime: FakeRuntime
) -> None:
    await _running(svc, "sb-b", idle_timeout=0.3)
    svc.busy("sb-b")
    svc.busy("sb-b")  # two sessions
    await asyncio.sleep(0.8)
    svc.idle_again("sb-b")
    await asyncio.sleep(0.5)
    assert runtime.calls == []
    # The last session ends while the loop sleeps towards the 300 s timeout: it must wake.
    svc.idle_again("sb-b")
    done = time.time()
    status, reason, when = await _wait_ended(svc, runtime, "sb-b", 2)
    assert (status, reason) == ("terminated", "idle")
    assert done + 0.3 - 0.01 <= when < done + 0.3 + 0.2
    assert svc.lifetimes.sessions("sb-b") == 0


@pytest.mark.usefixtures("loop_running")
async def test_set_timeout_extends_and_shortens(
    svc: SandboxService, runtime: FakeRuntime
) -> None:
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
    _, reason, y_end = await _wait_ended(svc, runtime, "sb-y", 2)
    assert reason == "timeout" and abs(y_end - shorter.expires_at) < 0.2
    _, reason, x_end = await _wait_ended(svc, runtime, "sb-x", 2)
    assert reason == "timeout" and abs(x_end - longer.expires_at) < 0.2


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_stopping_is_never_lost_to_a_deadline_change(svc: SandboxService, turns: int) -> None:
    # An expiry that ends as the server stops wakes the loop just as it is cancelled; the
    # loop must end all the same, or stop() would wait for it forever.
    loop = asyncio.create_task(svc.lifetimes.run())
    await asyncio.sleep(0.05)
    svc.lifetimes.changed()
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
async def test_on_timeout_pause_pauses_instead(
    svc: SandboxService, runtime: FakeRuntime
) -> None:
    await _running(svc, "sb-p", idle_timeout=0.3, on_timeout="pause")
    await _running(svc, "sb-q", expires_at=time.time() + 0.3, timeout=40, on_timeout="pause")
    assert (await _wait_ended(svc, runtime, "sb-p", 2))[0] == "paused"
    assert (await _wait_ended(svc, runtime, "sb-q", 2))[0] == "paused"
    for sid in ("sb-p", "sb-q"):  # frozen, its memory saved, then its runsc sandbox gone
        assert [v for v, s, _ in runtime.calls if s == sid] == ["pause", "checkpoint", "delete"]
        assert svc.checkpoint_dir(sid).is_dir()

    def granted(record: SandboxRecord) -> float:
        """What a resume now would give the sandbox of its timeout."""
        now = time.time()
        copy = SandboxRecord.from_json(record.to_json())
        lifetimes.resume_clock(copy, now)
        assert copy.expires_at is not None
        return copy.expires_at - now

    idle_paused, timeout_paused = await svc.get("sb-p"), await svc.get("sb-q")
    # Paused at its idle_timeout: what was left of its timeout waits for the resume.
    assert idle_paused.timeout == 300 and 290 < granted(idle_paused) <= 300
    # Paused at its timeout: a resume gets the whole timeout again (less the moment the
    # pause took), not nothing.
    assert timeout_paused.timeout == 40 and 39 < granted(timeout_paused) <= 40
    # A paused sandbox has no clocks: the loop, woken by a change, leaves both alone.
    await _running(svc, "sb-r")
    await asyncio.sleep(0.3)
    assert len(runtime.calls) == 6


@pytest.mark.usefixtures("loop_running")
async def test_a_failed_pause_terminates_and_says_why(
    svc: SandboxService, runtime: FakeRuntime
) -> None:
    runtime.checkpoint_error = "checkpointing failed: no space left"
    await _running(svc, "sb-f", idle_timeout=0.3, on_timeout="pause")
    status, reason, _ = await _wait_ended(svc, runtime, "sb-f", 2)
    assert (status, reason) == ("terminated", "idle")
    message = (await svc.get("sb-f")).message or ""
    assert "pausing it instead failed: checkpointing sandbox sb-f failed: " in message
    assert "no space left" in message
    # Thawed after the failed checkpoint, then ended: no half-written checkpoint is left.
    assert [v for v, _, _ in runtime.calls] == ["pause", "checkpoint", "resume", "delete"]
    assert not svc.checkpoint_dir("sb-f").with_name("checkpoint.tmp").exists()


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
        assert svc.live.get(gone) is None  # nothing of it is held in memory either
    for kept in ("sb-recent", "sb-live", "sb-asleep"):
        assert await svc.store.get_sandbox(kept) is not None
        assert svc.log_path(kept).read_text() == "output\n"
    assert await svc.purge() == []
    # Retention 0 keeps everything forever.
    svc.lifetimes.retention = 0
    assert await svc.purge(now=now + 10**9) == []


async def test_purge_loop_runs_by_itself(svc: SandboxService) -> None:
    svc.lifetimes.retention = 0.5
    await svc.store.put_sandbox(_record("sb-gone", status="terminated", ended_at=time.time()))
    svc.lifetimes.start()  # stopped by svc.stop()

    async def purged() -> bool | None:
        return True if await svc.store.get_sandbox("sb-gone") is None else None

    await wait_for_async(purged, timeout=5, interval=0.05, what="sb-gone to be purged")


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
    assert svc.lifetimes.sessions("sb-e") == 1
    events = [e async for e in session.events()]
    assert svc.lifetimes.sessions("sb-e") == 0
    assert events[-1] == session.exit
    await session.aclose()  # releasing twice does not go below zero
    assert svc.lifetimes.sessions("sb-e") == 0
    assert time.time() - (svc.lifetimes.last_active("sb-e") or 0) < 1


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
    assert svc.lifetimes.sessions("sb-e") == 0
    # Without a deadline of its own, the command waits the agent's, then it is a 504.
    silent = ExecSession(cast(Channel, SilentChannel()), svc, "sb-e", pty=False, timeout=None)
    with pytest.raises(StockadeTimeoutError, match="kill -STOP"):
        await silent.start({"argv": ["true"]})
    assert svc.lifetimes.sessions("sb-e") == 0


async def test_an_abandoned_or_killed_session_is_released(svc: SandboxService) -> None:
    # A client that goes away mid-command: the transport calls aclose.
    first = _session(svc, FakeChannel())
    await first.start({"argv": ["sleep", "100"]})
    second = _session(svc, FakeChannel(Frame(FrameType.STDOUT, 1, b"hi")))
    await second.start({"argv": ["sleep", "100"]})
    assert svc.lifetimes.sessions("sb-e") == 2
    await first.aclose()
    assert svc.lifetimes.sessions("sb-e") == 1
    # A consumer that stops reading the stream half way.
    stream = cast(AsyncGenerator[Any, None], second.events())
    assert await anext(stream) is not None
    await stream.aclose()
    assert svc.lifetimes.sessions("sb-e") == 0


async def test_a_session_that_fails_to_start_is_released(svc: SandboxService) -> None:
    class Broken(FakeChannel):
        async def recv(self) -> Frame:
            raise asyncio.CancelledError  # e.g. the request was cancelled mid-start

    with pytest.raises(asyncio.CancelledError):
        await _session(svc, Broken()).start({"argv": ["true"]})
    assert svc.lifetimes.sessions("sb-e") == 0


async def test_server_helpers_are_not_activity(svc: SandboxService) -> None:
    kernel = _session(svc, FakeChannel(), activity=False)
    await kernel.start({"argv": ["python3", "-m", "ipykernel_launcher"]})
    assert svc.lifetimes.sessions("sb-e") == 0 and svc.lifetimes.last_active("sb-e") is None
    await kernel.aclose()


# -- the route, the SDK and the CLI -------------------------------------------------------


@pytest.fixture
async def api(svc: SandboxService) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(sandbox_routes.router, dependencies=[Depends(require_token)])
    # Tenant acme may ask for at most a minute.
    quotas = Quotas(svc.store, lambda tenant: {"max_timeout": 60} if tenant == "acme" else {})
    app.state.services = SimpleNamespace(
        config=svc.config, sandboxes=svc, access=operator_access(TOKEN), quotas=quotas
    )
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


async def test_timeout_route_keeps_to_the_tenants_max_timeout(
    svc: SandboxService, api: httpx.AsyncClient
) -> None:
    await svc.store.put_sandbox(_record("sb-q", created_at=time.time(), tenant="acme"))
    r = await api.post("/v1/sandboxes/sb-q/timeout", json={"timeout": 61})
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
    assert "timeout=61 is longer than tenant acme's max_timeout=60 seconds" in r.text
    assert (await svc.get("sb-q")).timeout == 300
    r = await api.post("/v1/sandboxes/sb-q/timeout", json={"timeout": 60})
    assert r.status_code == 200 and r.json()["timeout"] == 60


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
    runtime: FakeRuntime,
    monkeypatch: pytest.MonkeyPatch,
    state: SandboxState | None,
    ooms: int,
    error: type[Exception],
    says: str,
) -> None:
    """A sandbox killed (out of memory, say) while its pages are saved makes runsc's
    checkpoint fail: that is the sandbox's end, a 409, not a 500 of the server's."""
    await _running(svc, "sb-cp")
    runtime.checkpoint_error = "runsc checkpoint sb-cp failed: urpc: EOF"
    runtime.states["sb-cp"] = state
    monkeypatch.setattr(cgroups, "oom_kills", lambda sandbox_id: ooms)
    with pytest.raises(error, match=says):
        await svc.pause("sb-cp")
    assert [v for v, _, _ in runtime.calls] == ["pause", "checkpoint", "resume"]
    assert (await svc.get("sb-cp")).status == "running"
    assert not (svc.checkpoint_dir("sb-cp").with_name("checkpoint.tmp")).exists()
