"""The exec wire codec: WebSocket frames, NDJSON events, control messages."""

from __future__ import annotations

import json
import signal

import pytest

from stockade import InvalidArgumentError, SandboxTerminatedError, ServerError
from stockade import _protocol as p


def test_start_message() -> None:
    message = p.ws_start_message(
        ["ls", "-l"], env={"A": "1"}, workdir="/w", timeout=3.0, pty=True, cols=100, rows=30
    )
    assert json.loads(message) == {
        "argv": ["ls", "-l"], "env": {"A": "1"}, "workdir": "/w", "timeout": 3.0,
        "pty": True, "cols": 100, "rows": 30,
    }  # fmt: skip


def test_stdin_frames_are_chunked_with_stream_byte() -> None:
    frames = p.stdin_frames(b"x" * (p.STDIN_CHUNK + 5))
    assert [len(f) for f in frames] == [p.STDIN_CHUNK + 1, 6]
    assert all(f[0] == 0 for f in frames)
    assert p.stdin_frames(b"") == []


def test_control_messages() -> None:
    assert json.loads(p.STDIN_EOF_MESSAGE) == {"type": "stdin_eof"}
    assert json.loads(p.resize_message(120, 40)) == {"type": "resize", "cols": 120, "rows": 40}
    assert json.loads(p.signal_message(signal.SIGINT)) == {"type": "signal", "signal": "SIGINT"}
    with pytest.raises(InvalidArgumentError):
        p.resize_message(0, 10)


@pytest.mark.parametrize(
    ("given", "name"),
    [("SIGTERM", "SIGTERM"), ("term", "SIGTERM"), (9, "SIGKILL"), (signal.SIGHUP, "SIGHUP")],
)
def test_signal_names(given: str | int, name: str) -> None:
    assert p.signal_name(given) == name


def test_unknown_signals() -> None:
    with pytest.raises(InvalidArgumentError):
        p.signal_name("SIGWHAT")
    with pytest.raises(InvalidArgumentError):
        p.signal_name(999)


def test_decode_ws_messages() -> None:
    assert p.decode_ws_message(b"\x01out") == p.Output(1, b"out")
    assert p.decode_ws_message(b"\x02err") == p.Output(2, b"err")
    assert p.decode_ws_message(b"\x07?") is None
    assert p.decode_ws_message(b"") is None
    assert p.decode_ws_message('{"type": "started"}') == p.Started()
    assert p.decode_ws_message(
        '{"type": "exit", "exit_code": 124, "timed_out": true, "oom": false}'
    ) == p.Exited(124, timed_out=True)
    assert p.decode_ws_message('{"type": "exit", "exit_code": 0}') == p.Exited(0)
    assert p.decode_ws_message('{"type": "heartbeat"}') is None  # newer servers


def test_decode_error_event_keeps_class_and_message() -> None:
    event = p.decode_ws_message(
        '{"type": "error", "error": {"code": "sandbox_terminated", "message": "it ended"}}'
    )
    assert isinstance(event, p.Failed)
    assert isinstance(event.error, SandboxTerminatedError)
    assert (event.error.message, event.error.status) == ("it ended", 409)


@pytest.mark.parametrize(
    "bad", ["not json", '["list"]', '{"no": "type"}', '{"type": "exit", "exit_code": "0"}']
)
def test_malformed_messages(bad: str) -> None:
    with pytest.raises(ServerError, match="malformed"):
        p.decode_ws_message(bad)


def test_decode_ndjson() -> None:
    assert p.decode_ndjson_exec({"type": "stdout", "data": "aGk="}) == p.Output(1, b"hi")
    assert p.decode_ndjson_exec({"type": "stderr", "data": ""}) == p.Output(2, b"")
    assert p.decode_ndjson_exec({"type": "started"}) == p.Started()
    with pytest.raises(ServerError):
        p.decode_ndjson_exec({"type": "stdout", "data": "!!"})


def test_request_bodies() -> None:
    assert p.ndjson_exec_body(["cat"], env=None, workdir=None, timeout=None, stdin=None) == {
        "argv": ["cat"], "env": {}, "workdir": None, "timeout": None,
    }  # fmt: skip
    assert p.command_argv("echo hi") == ["sh", "-c", "echo hi"]
    assert p.command_argv(("ls", "-l")) == ["ls", "-l"]
    with pytest.raises(InvalidArgumentError):
        p.command_argv("  ")
    with pytest.raises(InvalidArgumentError):
        p.checked_argv(["ls", 3])  # type: ignore[list-item]
