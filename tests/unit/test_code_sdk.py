"""Sandbox.run_code and the code-context methods against the fake API (sync and async)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stockade import (
    AsyncSandbox,
    CodeContext,
    InvalidArgumentError,
    KernelUnavailableError,
    NotFoundError,
    Result,
    Sandbox,
    SandboxTerminatedError,
    ServerError,
    StockadeConnectionError,
)
from tests.unit.fake_code import PNG_B64, FakeCodeApi


@pytest.fixture
def api(isolated_env: object) -> FakeCodeApi:
    return FakeCodeApi()


def last_body(api: FakeCodeApi) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(api.last("POST").content)
    return body


def test_run_code_returns_the_execution(sb: Sandbox, api: FakeCodeApi) -> None:
    ex = sb.run_code("print('hi'); 6*7")
    request = api.last("POST")
    assert request.url.path == "/v1/sandboxes/sb-1/code/run"
    assert last_body(api) == {
        "code": "print('hi'); 6*7", "language": "python", "context": None, "timeout": None,
    }  # fmt: skip
    assert (ex.logs.stdout, ex.text, ex.error) == (["hi\n"], "42", None)
    assert (ex.execution_count, ex.context_id) == (1, "ctx-1")
    assert sb.run_code("again").execution_count == 2


def test_run_code_has_no_read_timeout(sb: Sandbox, api: FakeCodeApi) -> None:
    # A cell may print nothing for longer than any fixed read timeout.
    sb.run_code("x")
    timeouts = api.last("POST").extensions["timeout"]
    assert timeouts["read"] is None and timeouts["connect"] is not None


def test_callbacks_fire_while_the_stream_is_read(sb: Sandbox, api: FakeCodeApi) -> None:
    calls: list[str] = []
    seen_before_line: dict[int, list[str]] = {}
    api.on_pull = lambda i: seen_before_line.setdefault(i, list(calls))
    ex = sb.run_code(
        "plot",
        on_stdout=lambda t: calls.append(f"stdout {t}"),
        on_result=lambda r: calls.append(f"result {','.join(r.formats())}"),
    )
    # Each callback ran before the server handed over the next line.
    assert seen_before_line[1] == ["stdout drawing"]
    assert seen_before_line[2] == ["stdout drawing", "result text,png"]
    assert ex.results[0].png == PNG_B64


def test_errors_and_stderr_reach_their_callbacks(sb: Sandbox) -> None:
    errors: list[str] = []
    stderr: list[str] = []
    ex = sb.run_code("1/0", on_error=lambda e: errors.append(e.name), on_stderr=stderr.append)
    assert errors == ["ZeroDivisionError"] and stderr == ["warn\n"]
    assert ex.error is not None and ex.error.value == "division by zero"
    assert ex.text is None


def test_timeout_is_sent_and_timed_out_returned(sb: Sandbox, api: FakeCodeApi) -> None:
    ex = sb.run_code("slow", timeout=2.5)
    assert last_body(api)["timeout"] == 2.5
    assert ex.timed_out and ex.error is not None and ex.error.name == "KeyboardInterrupt"


def test_truncated(sb: Sandbox) -> None:
    ex = sb.run_code("big")
    assert ex.truncated and ex.logs.stderr == ["[output truncated at 16 MiB]\n"]


def test_unknown_events_are_skipped(sb: Sandbox) -> None:
    assert sb.run_code("newer").logs.stdout == ["ok\n"]


def test_context_by_object_or_id(sb: Sandbox, api: FakeCodeApi) -> None:
    ctx = sb.create_code_context("bash", workdir="/tmp")
    assert json.loads(api.last("POST").content) == {"language": "bash", "workdir": "/tmp"}
    assert api.last("POST").url.path == "/v1/sandboxes/sb-1/code/contexts"
    assert ctx == CodeContext("ctx-1", "bash", "/tmp", False, "idle")
    ex = sb.run_code("pwd", context=ctx)
    assert last_body(api) == {"code": "pwd", "language": None, "context": "ctx-1",
                              "timeout": None}  # fmt: skip
    assert ex.context_id == "ctx-1"
    sb.run_code("pwd", context="ctx-1", language="bash")
    assert (last_body(api)["context"], last_body(api)["language"]) == ("ctx-1", "bash")


def test_list_restart_remove(sb: Sandbox, api: FakeCodeApi) -> None:
    sb.run_code("x")  # starts the default python context
    made = sb.create_code_context()
    listed = sb.list_code_contexts()
    assert [(c.id, c.language, c.default) for c in listed] == [
        ("ctx-1", "python", True), ("ctx-2", "python", False),
    ]  # fmt: skip
    assert sb.run_code("x", context=made).execution_count == 1
    restarted = sb.restart_code_context(made)
    assert api.last("POST").url.path == "/v1/sandboxes/sb-1/code/contexts/ctx-2/restart"
    assert restarted.id == made.id
    assert sb.run_code("x", context=made).execution_count == 1
    sb.remove_code_context("ctx-2")
    assert api.last().method == "DELETE"
    assert [c.id for c in sb.list_code_contexts()] == ["ctx-1"]
    with pytest.raises(NotFoundError):
        sb.remove_code_context(made)
    with pytest.raises(NotFoundError):
        sb.restart_code_context("ctx-9")


def test_request_errors_are_typed(client: Any, sb: Sandbox, api: FakeCodeApi) -> None:
    with pytest.raises(NotFoundError, match="ctx-9"):
        sb.run_code("x", context="ctx-9")
    with pytest.raises(InvalidArgumentError, match="bash, python"):
        sb.run_code("x", language="cobol")
    with pytest.raises(InvalidArgumentError, match="bash, python"):
        sb.create_code_context("cobol")
    plain = Sandbox.create(image="python", client=client)
    with pytest.raises(KernelUnavailableError, match="code-interpreter") as info:
        plain.run_code("1")
    assert info.value.status == 409
    with pytest.raises(KernelUnavailableError):
        plain.create_code_context()


def test_stream_without_end(sb: Sandbox, api: FakeCodeApi) -> None:
    with pytest.raises(StockadeConnectionError, match="before the code finished"):
        sb.run_code("cut")
    # When the sandbox ended meanwhile, that is the error, with its cause.
    api.on_pull = lambda i: api.sandboxes["sb-1"].update(
        status="terminated", reason="oom", message="out of memory"
    )
    with pytest.raises(SandboxTerminatedError, match="cut short"):
        sb.run_code("cut")


def test_error_line_raises(sb: Sandbox) -> None:
    seen: list[str] = []
    with pytest.raises(SandboxTerminatedError, match="ran out of memory"):
        sb.run_code("gone", on_stdout=seen.append)
    assert seen == ["partial\n"]


def test_malformed_answers_are_server_errors(sb: Sandbox, api: FakeCodeApi) -> None:
    api.errors[("GET", "/v1/sandboxes/sb-1/code/contexts")] = (200, {"contexts": [{"id": 1}]})
    with pytest.raises(ServerError, match="malformed code context"):
        sb.list_code_contexts()
    api.errors[("GET", "/v1/sandboxes/sb-1/code/contexts")] = (200, {"nope": []})
    with pytest.raises(ServerError, match="code context list"):
        sb.list_code_contexts()
    api.errors[("POST", "/v1/sandboxes/sb-1/code/run")] = (200, b"not json\n")
    with pytest.raises(ServerError, match="malformed"):
        sb.run_code("x")


async def test_async_run_code(asb: AsyncSandbox, api: FakeCodeApi) -> None:
    calls: list[str] = []
    seen_before_line: dict[int, list[str]] = {}
    api.on_pull = lambda i: seen_before_line.setdefault(i, list(calls))
    ex = await asb.run_code("plot", on_stdout=calls.append)
    assert seen_before_line[1] == ["drawing"]
    assert isinstance(ex.results[0], Result) and ex.results[0].png == PNG_B64
    ctx = await asb.create_code_context("bash", workdir="/tmp")
    assert json.loads(api.last("POST").content) == {"language": "bash", "workdir": "/tmp"}
    assert ctx.workdir == "/tmp"
    assert (await asb.run_code("ls", context=ctx)).context_id == ctx.id
    assert [c.id for c in await asb.list_code_contexts()] == ["ctx-1", "ctx-2"]
    assert (await asb.restart_code_context(ctx.id)).id == ctx.id
    await asb.remove_code_context(ctx)
    assert [c.id for c in await asb.list_code_contexts()] == ["ctx-1"]
    with pytest.raises(StockadeConnectionError):
        await asb.run_code("cut")
    with pytest.raises(SandboxTerminatedError):
        await asb.run_code("gone")
