"""Sandbox: request building, parsing, run() over NDJSON, logs (sync and async)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from stockade import (
    AsyncClient,
    AsyncSandbox,
    Client,
    CommandError,
    CommandTimeoutError,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    SandboxTerminatedError,
    StockadeConnectionError,
)
from tests.unit.fakes import FakeApi


def test_create_sends_only_what_was_given(client: Client, api: FakeApi) -> None:
    sb = Sandbox.create(client=client)
    assert json.loads(api.last("POST").content) == {"image": "python"}
    assert sb.id == "sb-2"
    assert sb.last_info.status == "running"


def test_create_sends_every_field(client: Client, api: FakeApi) -> None:
    Sandbox.create(
        image="base", cpu=0.5, memory=256, disk=2048, timeout=60, env={"A": "1"},
        workdir="/app", tags={"user": "x"}, entrypoint=["python3", "-m", "http.server"],
        client=client,
    )  # fmt: skip
    request = api.last("POST")
    assert request.url.path == "/v1/sandboxes"
    assert request.headers["authorization"] == "Bearer test-token"
    assert request.headers["user-agent"].startswith("stockade-python/")
    assert json.loads(request.content) == {
        "image": "base", "cpu": 0.5, "memory": 256, "disk": 2048, "timeout": 60,
        "env": {"A": "1"}, "workdir": "/app", "tags": {"user": "x"},
        "entrypoint": ["python3", "-m", "http.server"],
    }  # fmt: skip


def test_string_entrypoint_runs_through_sh(client: Client, api: FakeApi) -> None:
    Sandbox.create(entrypoint="python3 -m http.server", client=client)
    assert json.loads(api.last("POST").content)["entrypoint"] == [
        "sh", "-c", "python3 -m http.server",
    ]  # fmt: skip


def test_info_parses_times(sb: Sandbox) -> None:
    info = sb.info()
    assert info.created_at == datetime(2026, 11, 26, 18, 0, tzinfo=UTC)
    assert info.ended_at is None
    assert info.tags == {"user": "x"}
    assert info.running and not info.ended


def test_from_id_unknown(client: Client) -> None:
    with pytest.raises(NotFoundError, match="sb-nope does not exist"):
        Sandbox.from_id("sb-nope", client=client)


def test_list_filters(client: Client, api: FakeApi) -> None:
    Sandbox.create(tags={"user": "y"}, client=client)
    found = Sandbox.list(tags={"user": "x", "team": "t"}, status="running", client=client)
    request = api.last("GET")
    assert request.url.params.get_list("tag") == ["user=x", "team=t"]
    assert request.url.params["status"] == "running"
    assert found == []
    found = Sandbox.list(tags={"user": "x"}, client=client)
    assert [s.id for s in found] == ["sb-1"]
    assert found[0].last_info.tags == {"user": "x"}


def test_terminate_and_context_manager(client: Client, api: FakeApi) -> None:
    with Sandbox.create(client=client) as sb:
        assert sb.last_info.status == "running"
    assert api.last().method == "DELETE"
    assert sb.last_info.status == "terminated"
    assert sb.terminate().status == "terminated"  # terminating twice is fine


def test_client_or_url_not_both(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="not both"):
        Sandbox.from_id("sb-1", client=client, url="http://127.0.0.1:1")


def test_run_shell_line(sb: Sandbox, api: FakeApi) -> None:
    r = sb.run("echo hi && exit 3")
    assert json.loads(api.last("POST").content) == {
        "argv": ["sh", "-c", "echo hi && exit 3"], "env": {}, "workdir": None, "timeout": None,
    }  # fmt: skip
    assert (r.stdout, r.stderr, r.exit_code, r.oom, r.ok) == ("hi\n", "", 3, False, False)
    assert r.stdout_bytes == b"hi\n"


def test_run_argv_and_stdin(sb: Sandbox, api: FakeApi) -> None:
    r = sb.run(["cat"], stdin="text in", env={"A": "1"}, workdir="/w", timeout=9)
    body = json.loads(api.last("POST").content)
    assert body == {"argv": ["cat"], "env": {"A": "1"}, "workdir": "/w", "timeout": 9,
                    "stdin": "text in"}  # fmt: skip
    assert r.stdout == "text in"
    r = sb.run(["cat"], stdin=b"\xff\x00")
    assert json.loads(api.last("POST").content)["stdin_b64"] == "/wA="
    assert r.stdout_bytes == b"\xff\x00"


def test_run_check(sb: Sandbox) -> None:
    with pytest.raises(CommandError) as info:
        sb.run("err", check=True)
    assert info.value.exit_code == 2
    assert info.value.result.stderr == "oops\n"
    assert "exited with code 2" in str(info.value) and "oops" in str(info.value)
    assert sb.run("ok", check=True).stdout == "ok\n"


def test_run_timeout_carries_partial_output(sb: Sandbox) -> None:
    with pytest.raises(CommandTimeoutError, match=r"ran past timeout=1s") as info:
        sb.run("slow", timeout=1)
    assert info.value.result is not None
    assert info.value.result.stdout == "partial\n"


def test_run_oom(sb: Sandbox) -> None:
    r = sb.run("hog")
    assert (r.exit_code, r.oom) == (137, True)


def test_run_callbacks_get_whole_characters(sb: Sandbox) -> None:
    seen: list[str] = []
    r = sb.run("split-utf8", on_stdout=seen.append)
    assert "".join(seen) == r.stdout == "héllo wörld\n"
    assert all("\ufffd" not in piece for piece in seen)


def test_run_cut_short_by_sandbox_end(sb: Sandbox, api: FakeApi) -> None:
    with pytest.raises(StockadeConnectionError, match="ended before the command exited"):
        sb.run("cut")


def test_run_on_terminated_sandbox(sb: Sandbox, api: FakeApi) -> None:
    api.sandboxes["sb-1"]["status"] = "terminated"
    with pytest.raises(SandboxTerminatedError, match="timed out"):
        sb.run("echo")


def test_logs(sb: Sandbox, api: FakeApi) -> None:
    assert sb.logs() == "booting\nserving on :8000 ✓\n"
    assert api.last().url.params["follow"] == "false"
    assert "".join(sb.stream_logs()) == sb.logs()
    assert [r.url.params["follow"] for r in api.requests[-2:]] == ["true", "false"]


def test_implicit_client_from_environment(
    isolated_env: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKADE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("STOCKADE_TOKEN", "test-token")
    with pytest.raises(StockadeConnectionError, match=r"at http://127\.0\.0\.1:9 "):
        Sandbox.from_id("sb-1")


async def test_async_create_run_files_logs(aclient: AsyncClient, api: FakeApi) -> None:
    async with await AsyncSandbox.create(tags={"k": "v"}, client=aclient) as sb:
        assert sb.id == "sb-2"
        r = await sb.run("echo hi && exit 3")
        assert (r.stdout, r.exit_code) == ("hi\n", 3)
        await sb.files.write("/a.txt", "hey")
        assert await sb.files.read_text("/a.txt") == "hey"
        assert await sb.logs() == "booting\nserving on :8000 ✓\n"
        assert [s.id for s in await AsyncSandbox.list(tags={"k": "v"}, client=aclient)] == ["sb-2"]
    assert sb.last_info.status == "terminated"


async def test_async_run_timeout(asb: AsyncSandbox) -> None:
    with pytest.raises(CommandTimeoutError):
        await asb.run("slow", timeout=1)


def test_transport_errors_are_translated_once(api: FakeApi) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    transport = httpx.MockTransport(refuse)
    with (
        Client("http://127.0.0.1:7423", "t", transport=transport) as c,
        pytest.raises(StockadeConnectionError) as info,
    ):
        Sandbox.create(client=c)
    message = str(info.value)
    assert "POST /v1/sandboxes" in message and "http://127.0.0.1:7423" in message
    assert "stockade serve" in message and "make run" in message
    assert isinstance(info.value.__cause__, httpx.ConnectError)
