"""Folding a code run's events into an Execution, and the records it is made of."""

from __future__ import annotations

from typing import Any

import pytest

from stockade import (
    CodeContext,
    Execution,
    ExecutionError,
    InvalidArgumentError,
    KernelUnavailableError,
    Logs,
    Result,
    SandboxTerminatedError,
    ServerError,
)
from stockade.execution import ExecutionBuilder, context_body, contexts_path, run_body

END = {"type": "end", "execution_count": 3, "context": "ctx-1", "truncated": False,
       "timed_out": False}  # fmt: skip


def recording_builder() -> tuple[ExecutionBuilder, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []
    builder = ExecutionBuilder(
        on_stdout=lambda t: calls.append(("stdout", t)),
        on_stderr=lambda t: calls.append(("stderr", t)),
        on_result=lambda r: calls.append(("result", r)),
        on_error=lambda e: calls.append(("error", e)),
    )
    return builder, calls


def test_callbacks_fire_in_arrival_order() -> None:
    builder, calls = recording_builder()
    events: list[dict[str, Any]] = [
        {"type": "stdout", "text": "a\n"},
        {"type": "stderr", "text": "warn\n"},
        {"type": "result", "data": {"text/plain": "<Figure>", "image/png": "iVBO"}},
        {"type": "stdout", "text": "b\n"},
        {"type": "result", "data": {"text/plain": "42"}, "is_main_result": True},
    ]
    for event in events:
        assert builder.feed(event) is False
    assert not builder.ended
    assert builder.feed(END) is True
    assert builder.ended
    assert [kind for kind, _ in calls] == ["stdout", "stderr", "result", "stdout", "result"]
    assert calls[0][1] == "a\n" and calls[3][1] == "b\n"
    ex = builder.execution()
    assert ex.logs == Logs(stdout=["a\n", "b\n"], stderr=["warn\n"])
    assert [r.is_main_result for r in ex.results] == [False, True]
    assert calls[2][1] is ex.results[0] and calls[4][1] is ex.results[1]
    assert ex.text == "42"
    assert (ex.execution_count, ex.context_id, ex.error) == (3, "ctx-1", None)
    assert not ex.truncated and not ex.timed_out


def test_without_callbacks() -> None:
    builder = ExecutionBuilder()
    builder.feed({"type": "stdout", "text": "x"})
    builder.feed({"type": "exception", "name": "E", "value": "v", "traceback": "tb"})
    builder.feed(END)
    ex = builder.execution()
    assert ex.logs.stdout == ["x"] and ex.error == ExecutionError("E", "v", "tb")


def test_text_is_the_main_results_only() -> None:
    builder = ExecutionBuilder()
    builder.feed({"type": "result", "data": {"text/plain": "shown"}, "is_main_result": False})
    builder.feed(END)
    ex = builder.execution()
    assert ex.text is None and ex.results[0].text == "shown"
    assert Execution().text is None


def test_exception_is_data_and_the_first_one_is_kept() -> None:
    builder, calls = recording_builder()
    builder.feed({"type": "exception", "name": "ZeroDivisionError", "value": "division by zero",
                  "traceback": "Traceback …\nZeroDivisionError: division by zero"})  # fmt: skip
    builder.feed({"type": "exception", "name": "KernelDied", "value": "exit 1", "traceback": ""})
    builder.feed(END)
    ex = builder.execution()
    assert ex.error is not None
    assert (ex.error.name, ex.error.value) == ("ZeroDivisionError", "division by zero")
    assert ex.error.traceback.endswith("ZeroDivisionError: division by zero")
    assert [e.name for kind, e in calls if kind == "error"] == ["ZeroDivisionError", "KernelDied"]


def test_missing_value_and_traceback_default_to_empty() -> None:
    builder = ExecutionBuilder()
    builder.feed({"type": "exception", "name": "KernelDied"})
    assert builder.execution().error == ExecutionError("KernelDied", "", "")


def test_truncated_and_timed_out_flags() -> None:
    builder = ExecutionBuilder()
    builder.feed({"type": "stderr", "text": "[output truncated]\n"})
    builder.feed({**END, "truncated": True, "timed_out": True})
    ex = builder.execution()
    assert ex.truncated and ex.timed_out
    assert ex.logs.stderr == ["[output truncated]\n"]


def test_end_may_leave_out_optional_fields() -> None:
    builder = ExecutionBuilder()
    builder.feed({"type": "end"})
    ex = builder.execution()
    assert (ex.execution_count, ex.context_id, ex.truncated, ex.timed_out) == (
        None, None, False, False,
    )  # fmt: skip


def test_unknown_event_types_are_skipped() -> None:
    builder, calls = recording_builder()
    assert builder.feed({"type": "progress", "percent": 50}) is False
    assert builder.feed({"type": "stdout", "text": "ok\n"}) is False
    builder.feed(END)
    assert calls == [("stdout", "ok\n")]
    assert builder.execution().logs.stdout == ["ok\n"]


def test_error_event_raises_the_typed_error() -> None:
    builder = ExecutionBuilder()
    builder.feed({"type": "stdout", "text": "partial\n"})
    with pytest.raises(SandboxTerminatedError, match="out of memory") as info:
        builder.feed(
            {
                "type": "error",
                "error": {
                    "code": "sandbox_terminated",
                    "message": "sandbox sb-1 ran out of memory",
                },
            }
        )
    assert info.value.status == 409
    with pytest.raises(KernelUnavailableError):
        builder.feed({"type": "error", "error": {"code": "kernel_unavailable", "message": "x"}})
    with pytest.raises(ServerError):
        builder.feed({"type": "error", "error": "not an object"})


@pytest.mark.parametrize(
    "event",
    [
        {"type": "stdout"},
        {"type": "stderr", "text": 5},
        {"type": "result"},
        {"type": "result", "data": ["text/plain", "x"]},
        {"type": "result", "data": {"text/plain": 42}},
        {"type": "result", "data": {"image/png": b"raw"}},
        {"type": "exception", "value": "no name"},
        {"type": "exception", "name": "E", "traceback": ["line 1", "line 2"]},
        {"type": "end", "execution_count": "3"},
        {"type": "end", "execution_count": True},
        {"type": "end", "context": 7},
    ],
)
def test_malformed_events_raise_server_error(event: dict[str, Any]) -> None:
    builder = ExecutionBuilder()
    with pytest.raises(ServerError, match=f"malformed {event['type']} event"):
        builder.feed(event)


def test_callback_errors_propagate() -> None:
    def boom(text: str) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        ExecutionBuilder(on_stdout=boom).feed({"type": "stdout", "text": "x"})


# -- the records ---------------------------------------------------------------------------

BUNDLE = {
    "text/plain": "t", "text/html": "<b>h</b>", "text/markdown": "**m**", "image/svg+xml": "<svg/>",
    "image/png": "cG5n", "image/jpeg": "anBn", "application/pdf": "cGRm", "text/latex": "$x$",
    "application/json": {"a": [1]}, "application/javascript": "alert(1)",
    "application/vnd.custom+json": {"k": 1},
}  # fmt: skip


def test_result_reads_every_format() -> None:
    r = Result.from_json({"data": BUNDLE, "is_main_result": True})
    assert (r.text, r.html, r.markdown, r.svg) == ("t", "<b>h</b>", "**m**", "<svg/>")
    assert (r.png, r.jpeg, r.pdf, r.latex) == ("cG5n", "anBn", "cGRm", "$x$")
    assert (r.json, r.javascript) == ({"a": [1]}, "alert(1)")
    assert r.data == BUNDLE and r.is_main_result
    assert r.formats() == ["text", "html", "markdown", "svg", "png", "jpeg", "pdf", "latex",
                           "json", "javascript", "application/vnd.custom+json"]  # fmt: skip
    assert r.to_json() == {"data": BUNDLE, "is_main_result": True}


def test_result_absent_formats_are_none() -> None:
    r = Result.from_json({"data": {"text/plain": "x"}})
    assert not r.is_main_result
    assert (r.html, r.png, r.json, r.svg) == (None, None, None, None)
    assert r.formats() == ["text"]
    assert Result().formats() == [] and repr(Result()) == "<Result empty>"


def test_result_displays_in_jupyter() -> None:
    r = Result.from_json({"data": BUNDLE})
    assert r._repr_mimebundle_() == BUNDLE
    assert r._repr_mimebundle_(include={"image/png"}) == {"image/png": "cG5n"}
    assert "image/png" not in r._repr_mimebundle_(exclude={"image/png"})
    assert Result()._repr_mimebundle_() == {}


def test_result_repr_is_short() -> None:
    r = Result.from_json({"data": {"text/plain": "x", "image/png": "A" * 100_000},
                          "is_main_result": True})  # fmt: skip
    assert repr(r) == "<Result main text, png>"
    assert len(repr(Execution(results=[r]))) < 300


def test_execution_to_json() -> None:
    ex = Execution(
        results=[Result({"text/plain": "2"}, True)], logs=Logs(["o"], ["e"]),
        error=ExecutionError("E", "v", "tb"), execution_count=4, context_id="ctx-1",
        truncated=True,
    )  # fmt: skip
    assert ex.to_json() == {
        "results": [{"data": {"text/plain": "2"}, "is_main_result": True}],
        "logs": {"stdout": ["o"], "stderr": ["e"]},
        "error": {"name": "E", "value": "v", "traceback": "tb"},
        "execution_count": 4, "context_id": "ctx-1", "truncated": True, "timed_out": False,
    }  # fmt: skip
    assert Execution().to_json()["error"] is None


def test_code_context_from_json() -> None:
    data = {"id": "ctx-1", "language": "bash", "workdir": "/tmp", "default": False,
            "status": "busy", "newer_field": 1}  # fmt: skip
    ctx = CodeContext.from_json(data)
    assert ctx == CodeContext("ctx-1", "bash", "/tmp", False, "busy")
    assert ctx.to_json() == {k: v for k, v in data.items() if k != "newer_field"}
    # A server older than the rename answers "cwd".
    old = {"id": "ctx-1", "language": "bash", "cwd": "/tmp", "default": False, "status": "busy"}
    assert CodeContext.from_json(old).workdir == "/tmp"
    assert "cwd" not in CodeContext.from_json(old).to_json()
    with pytest.raises(KeyError):
        CodeContext.from_json({"language": "python", "status": "idle"})
    with pytest.raises(TypeError):
        CodeContext.from_json({"id": 1, "language": "python", "status": "idle"})


def test_request_bodies() -> None:
    assert run_body("1+1", language=None, context=None, timeout=None) == {
        "code": "1+1", "language": "python", "context": None, "timeout": None,
    }  # fmt: skip
    ctx = CodeContext("ctx-2", "bash", None)
    assert run_body("ls", language=None, context=ctx, timeout=5) == {
        "code": "ls", "language": None, "context": "ctx-2", "timeout": 5,
    }  # fmt: skip
    assert run_body("ls", language="bash", context="ctx-2", timeout=None)["language"] == "bash"
    assert context_body("bash", "/tmp") == {"language": "bash", "workdir": "/tmp"}
    assert context_body("python", None) == {"language": "python"}  # the sandbox's workdir
    assert contexts_path() == "/code/contexts"
    assert contexts_path("ctx/../x", "/restart") == "/code/contexts/ctx%2F..%2Fx/restart"


@pytest.mark.parametrize(
    "call",
    [
        lambda: run_body(b"1+1", language=None, context=None, timeout=None),  # type: ignore[arg-type]
        lambda: run_body("1", language=None, context="", timeout=None),
        lambda: run_body("1", language=None, context=5, timeout=None),  # type: ignore[arg-type]
        lambda: context_body("", None),
    ],
)
def test_bad_arguments(call: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        call()
