"""Process over the WebSocket transport (sync), against a real WebSocket server."""

from __future__ import annotations

import threading

import pytest

from stockade import (
    Client,
    CommandTimeoutError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    SandboxTerminatedError,
    StockadeConnectionError,
    StockadeTimeoutError,
)
from tests.unit.fakes import BIG_STDERR, FakeApi, FakeExecServer


def test_exec_reads_stdout_and_exit_code(sb: Sandbox) -> None:
    p = sb.exec("echo", "hello", "world")
    assert p.stdout.read() == "hello world\n"
    assert p.wait() == 0
    assert p.returncode == 0
    assert p.poll() == 0


def test_exec_sends_the_start_message(sb: Sandbox, exec_server: FakeExecServer) -> None:
    with sb.exec("env", env={"A": "1"}, workdir="/app", timeout=5) as p:
        p.wait()
    assert exec_server.starts[-1] == {
        "argv": ["env"], "env": {"A": "1"}, "workdir": "/app", "timeout": 5,
        "pty": False, "cols": 80, "rows": 24,
    }  # fmt: skip


def test_iterating_yields_lines_with_newlines(sb: Sandbox) -> None:
    p = sb.exec("cat")
    p.stdin.write("one\ntwo\n")
    p.stdin.write(b"three")
    p.stdin.close()
    assert list(p.stdout) == ["one\n", "two\n", "three"]
    assert p.wait() == 0


def test_read_bytes_and_iter_bytes(sb: Sandbox) -> None:
    p = sb.exec("cat")
    payload = bytes(range(256)) * 1000  # not UTF-8, several stdin frames
    p.stdin.write(payload)
    p.stdin.write_eof()
    assert p.stdout.read_bytes() == payload
    p = sb.exec("cat")
    p.stdin.write(b"abc")
    p.stdin.close()
    assert b"".join(p.stdout.iter_bytes()) == b"abc"


def test_readline(sb: Sandbox) -> None:
    p = sb.exec("echo", "a")
    assert p.stdout.readline() == "a\n"
    assert p.stdout.readline() == ""


def test_reading_only_stdout_of_a_stderr_heavy_process_does_not_deadlock(sb: Sandbox) -> None:
    p = sb.exec("noisy")
    assert p.stdout.read() == "begin\ndone\n"
    assert p.wait() == 0
    assert len(p.stderr.read_bytes()) == BIG_STDERR


def test_stdout_and_stderr_from_two_threads(sb: Sandbox) -> None:
    p = sb.exec("noisy")
    got: dict[str, int] = {}

    def read_stderr() -> None:
        got["stderr"] = len(p.stderr.read_bytes())

    thread = threading.Thread(target=read_stderr)
    thread.start()
    assert p.stdout.read() == "begin\ndone\n"
    thread.join(timeout=30)
    assert got == {"stderr": BIG_STDERR}
    assert p.wait() == 0


def test_writer_thread_and_reader_thread(sb: Sandbox) -> None:
    p = sb.exec("cat")
    lines = [f"line {i}\n" for i in range(200)]

    def feed() -> None:
        for line in lines:
            p.stdin.write(line)
        p.stdin.close()

    thread = threading.Thread(target=feed)
    thread.start()
    assert list(p.stdout) == lines
    thread.join(timeout=30)
    assert p.wait() == 0


def test_many_processes_at_once(sb: Sandbox) -> None:
    processes = [sb.exec("cat") for _ in range(8)]
    for i, p in enumerate(processes):
        p.stdin.write(f"p{i}")
        p.stdin.close()
    assert [p.stdout.read() for p in processes] == [f"p{i}" for i in range(8)]
    assert all(p.wait() == 0 for p in processes)


def test_nonzero_exit_is_data(sb: Sandbox) -> None:
    p = sb.exec("exit", "3")
    assert p.wait() == 3
    assert p.stderr.read() == "bye\n"


def test_timeout_raises_and_names_the_fix(sb: Sandbox) -> None:
    p = sb.exec("slow", timeout=5)
    with pytest.raises(CommandTimeoutError) as info:
        p.wait()
    assert isinstance(info.value, StockadeTimeoutError)
    assert "ran past timeout=5s" in str(info.value)
    assert "pass a larger `timeout=`" in str(info.value)
    assert p.returncode == 124 and p.timed_out
    assert p.stdout.read() == "partial\n"  # the output so far stays readable


def test_oom_is_reported(sb: Sandbox) -> None:
    p = sb.exec("hog")
    assert p.wait() == 137
    assert p.oom


def test_signal_and_kill(sb: Sandbox, exec_server: FakeExecServer) -> None:
    p = sb.exec("sleep")
    assert p.poll() is None
    p.signal("TERM")
    assert p.wait() == 143
    assert exec_server.signals == ["SIGTERM"]
    p = sb.exec("sleep")
    p.kill()
    assert p.wait() == 137
    p.kill()  # a finished process ignores signals, like Popen


def test_invalid_signal(sb: Sandbox) -> None:
    with sb.exec("sleep") as p, pytest.raises(InvalidArgumentError, match="unknown signal"):
        p.signal("SIGNOPE")


def test_pty_and_resize(sb: Sandbox, exec_server: FakeExecServer) -> None:
    p = sb.exec("tty", pty=True, cols=100, rows=30)
    assert p.stdout.readline() == "pty=True 100x30\r\n"
    p.resize(120, 40)
    assert p.stdout.readline() == "resized 120x40\r\n"
    p.stdin.close()
    assert p.wait() == 0


def test_exec_error_event_raises_at_exec(sb: Sandbox) -> None:
    with pytest.raises(InvalidArgumentError, match="no such program"):
        sb.exec("nostart")


def test_exec_refused_handshake_maps_the_error(client: Client, api: FakeApi) -> None:
    api.sandboxes["sb-gone"] = dict(api.sandboxes["sb-1"], id="sb-gone")
    gone = Sandbox.from_id("sb-gone", client=client)
    with pytest.raises(SandboxTerminatedError, match="timed out"):
        gone.exec("echo")
    api.sandboxes["sb-missing"] = dict(api.sandboxes["sb-1"], id="sb-missing")
    with pytest.raises(NotFoundError):
        Sandbox.from_id("sb-missing", client=client).exec("echo")


def test_stream_cut_while_sandbox_runs(sb: Sandbox) -> None:
    p = sb.exec("drop")
    assert p.stdout.read() == "partial\n"
    with pytest.raises(StockadeConnectionError, match="sandbox gone"):
        p.wait()


def test_stream_cut_because_sandbox_ended(sb: Sandbox, api: FakeApi) -> None:
    p = sb.exec("drop")
    api.sandboxes["sb-1"].update(status="terminated", reason="timeout", message="ran 300s")
    with pytest.raises(SandboxTerminatedError) as info:
        p.wait()
    assert "reason: timeout" in str(info.value)
    assert "larger `timeout=` to Sandbox.create()" in str(info.value)


def test_write_after_exit(sb: Sandbox) -> None:
    p = sb.exec("echo", "x")
    p.wait()
    with pytest.raises(ConflictError, match="has exited"):
        p.stdin.write("late")
    p.stdin.close()  # closing a finished process's stdin is fine


def test_write_after_close(sb: Sandbox) -> None:
    with sb.exec("cat") as p:
        p.stdin.close()
        with pytest.raises(ConflictError, match="is closed"):
            p.stdin.write("x")


def test_empty_command_is_rejected(sb: Sandbox) -> None:
    with pytest.raises(InvalidArgumentError, match="empty"):
        sb.exec()


def test_poll_drains_without_blocking(sb: Sandbox) -> None:
    p = sb.exec("exit", "4")
    for _ in range(1000):
        if p.poll() is not None:
            break
        threading.Event().wait(0.01)
    assert p.returncode == 4
