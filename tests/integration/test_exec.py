"""Commands in a running sandbox through the SDK: streaming, stdin, exit codes, ptys, limits."""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from stockade import (
    CommandError,
    CommandTimeoutError,
    Process,
    Sandbox,
    StockadeTimeoutError,
)

from .conftest import LiveServer
from .helpers import wait_for


def _read_until(p: Process, needle: bytes, *, limit: float = 20.0) -> bytes:
    """Read a process's stdout until ``needle`` shows up (the exec's own timeout bounds it)."""
    seen = b""
    started = time.monotonic()
    for chunk in p.stdout.iter_bytes():
        seen += chunk
        if needle in seen:
            return seen
        assert time.monotonic() - started < limit, f"no {needle!r} after {limit}s: {seen!r}"
    raise AssertionError(f"output ended without {needle!r}: {seen!r}")


def test_output_streams_while_the_command_runs(sb: Sandbox) -> None:
    started = time.monotonic()
    with sb.exec("sh", "-c", "echo first; sleep 5; echo second") as p:
        first = p.stdout.readline()
        first_after = time.monotonic() - started
        assert first == "first\n"
        assert first_after < 2.0, f"the first line took {first_after:.2f}s"
        assert p.poll() is None  # still sleeping
        assert p.stdout.readline() == "second\n"
        assert p.stdout.readline() == ""
        assert p.wait() == 0
    assert time.monotonic() - started >= 5.0


def test_stdin_written_while_running_then_closed(sb: Sandbox) -> None:
    with sb.exec("cat") as p:
        p.stdin.write("hello\n")
        # cat echoes it back before stdin is closed: the data flows interactively.
        assert p.stdout.readline() == "hello\n"
        p.stdin.write(b"bytes \x00\xff too\n")
        assert p.poll() is None
        p.stdin.write_eof()
        assert p.stdout.read_bytes() == b"bytes \x00\xff too\n"
        assert p.wait() == 0
        assert p.stdin.closed


def test_exec_returns_the_exit_code(sb: Sandbox) -> None:
    p = sb.exec("sh", "-c", "exit 3")
    assert p.wait() == 3
    assert p.returncode == 3
    assert not p.timed_out and not p.oom
    assert sb.exec("true").wait() == 0
    assert sb.exec("sh", "-c", "kill -9 $$").wait() == 137


def test_run_takes_a_shell_string_or_an_argv_list(sb: Sandbox) -> None:
    r = sb.run("echo hi && exit 3")
    assert r.stdout == "hi\n"
    assert r.exit_code == 3
    assert not r.ok

    # An argv list is not split or expanded by a shell.
    r = sb.run(["printf", "%s|", "a b", "$HOME", "*"])
    assert (r.stdout, r.exit_code) == ("a b|$HOME|*|", 0)
    assert r.ok

    with pytest.raises(CommandError) as err:
        sb.run("echo oops >&2; exit 5", check=True)
    assert err.value.exit_code == 5
    assert "oops" in str(err.value)

    r = sb.run("cat", stdin=b"\x00\x01\xfe\xff binary")
    assert r.stdout_bytes == b"\x00\x01\xfe\xff binary"
    assert sb.run("wc -c", stdin="héllo").stdout.strip() == "6"


def test_env_and_workdir_per_exec(sb: Sandbox) -> None:
    r = sb.run('echo "$FOO"; pwd', env={"FOO": "bar baz"}, workdir="/tmp")
    assert r.stdout == "bar baz\n/tmp\n"
    # Per-exec values do not stick to the sandbox.
    r = sb.run('echo "${FOO-unset}"; pwd')
    assert r.stdout == "unset\n/\n"

    p = sb.exec("sh", "-c", 'echo "$A$B"; pwd', env={"A": "1", "B": "2"}, workdir="/etc")
    assert p.stdout.read() == "12\n/etc\n"
    assert p.wait() == 0
    assert sb.run("echo $PATH").stdout.strip().startswith("/usr/local/sbin")


def test_missing_program_or_workdir_fails_clearly(sb: Sandbox) -> None:
    r = sb.run(["no-such-program", "arg"])
    assert r.exit_code != 0
    assert "no-such-program" in r.stderr
    r = sb.run("pwd", workdir="/no/such/dir")
    assert r.exit_code != 0
    assert "/no/such/dir" in r.stderr
    with sb.exec("no-such-program") as p:
        assert p.wait() != 0
    # A shell reports its own "not found" the usual way.
    assert sb.run("no-such-program").exit_code == 127


def test_exec_timeout_raises(sb: Sandbox) -> None:
    started = time.monotonic()
    with pytest.raises(StockadeTimeoutError) as err:
        sb.run(["sleep", "30"], timeout=1)
    assert isinstance(err.value, CommandTimeoutError)
    assert time.monotonic() - started < 10
    assert "timeout" in str(err.value)

    started = time.monotonic()
    with sb.exec("sleep", "30", timeout=1) as p, pytest.raises(StockadeTimeoutError):
        p.wait()
    assert p.timed_out
    assert time.monotonic() - started < 10
    # The sandbox is fine afterwards.
    assert sb.run("echo ok").stdout == "ok\n"


def test_exec_timeout_also_stops_the_commands_children(sb: Sandbox) -> None:
    # A shell line's children inherit its stdout. When the timeout fires, the command must
    # end for the caller at once, not when its last child happens to exit by itself.
    started = time.monotonic()
    with pytest.raises(StockadeTimeoutError):
        sb.run("sleep 15; echo never", timeout=1)
    elapsed = time.monotonic() - started
    leftovers = [cmd for cmd in _processes(sb) if cmd.startswith("sleep 15")]
    assert elapsed < 6, f"the timed-out command was reported only after {elapsed:.1f}s"
    assert leftovers == [], "the timed-out command's child still runs"


def test_eight_concurrent_execs(sb: Sandbox) -> None:
    def one(i: int) -> tuple[int, str, str, int]:
        with sb.exec("sh", "-c", f"sleep 1; echo out-{i}; echo err-{i} >&2; exit {i}") as p:
            out = p.stdout.read()
            err = p.stderr.read()
            return i, out, err, p.wait()

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for i, out, err, code in results:
        assert (out, err, code) == (f"out-{i}\n", f"err-{i}\n", i)
    # They ran side by side, not one after the other.
    assert time.monotonic() - started < 7


async def test_eight_concurrent_async_runs(server: LiveServer, sb: Sandbox) -> None:
    import asyncio

    from stockade import AsyncSandbox

    asb = await AsyncSandbox.from_id(sb.id)
    results = await asyncio.gather(
        *(asb.run(f"sleep 0.5; echo task-{i}; echo e{i} >&2") for i in range(8))
    )
    for i, r in enumerate(results):
        assert (r.stdout, r.stderr, r.exit_code) == (f"task-{i}\n", f"e{i}\n", 0)


def test_stderr_is_separate_from_stdout(sb: Sandbox) -> None:
    script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2"
    p = sb.exec("sh", "-c", script)
    # Reading stderr first must not lose or block stdout.
    assert p.stderr.read() == "err1\nerr2\n"
    assert p.stdout.read() == "out1\nout2\n"
    assert p.wait() == 0

    r = sb.run(script)
    assert (r.stdout, r.stderr) == ("out1\nout2\n", "err1\nerr2\n")


def test_large_output_arrives_intact(sb: Sandbox) -> None:
    size = 20_000_000
    made = sb.run(f"head -c {size} /dev/urandom > /tmp/big.out && sha256sum /tmp/big.out")
    assert made.exit_code == 0, made.stderr
    expected = made.stdout.split()[0]

    with sb.exec("cat", "/tmp/big.out") as p:
        data = p.stdout.read_bytes()
        assert p.wait() == 0
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == expected

    r = sb.run(["cat", "/tmp/big.out"])
    assert len(r.stdout_bytes) == size
    assert hashlib.sha256(r.stdout_bytes).hexdigest() == expected
    sb.files.remove("/tmp/big.out")


def test_pty_size_and_resize(sb: Sandbox) -> None:
    with sb.exec(
        "sh", "-c", "stty size; read x; stty size; test -t 0 && test -t 1 && echo is-a-tty",
        pty=True, cols=100, rows=30, timeout=60,
    ) as p:  # fmt: skip
        seen = _read_until(p, b"30 100")
        p.resize(120, 40)
        p.stdin.write("\n")
        seen += _read_until(p, b"is-a-tty")
        assert p.wait() == 0
    text = seen.decode()
    assert "40 120" in text
    assert text.index("30 100") < text.index("40 120")
    # A terminal merges stderr into stdout and translates newlines.
    assert "\r\n" in text
    assert p.stderr.read() == ""


def test_pty_interactive_shell(sb: Sandbox) -> None:
    with sb.exec("sh", pty=True, timeout=60) as p:
        p.stdin.write("echo $((6*7)); echo oops >&2\n")
        seen = _read_until(p, b"\noops\r\n")
        assert b"42\r\n" in seen, seen  # the echoed input line holds no 42
        p.stdin.write("exit 9\n")
        assert p.wait() == 9


def _processes(sb: Sandbox) -> list[str]:
    """The command lines of every process in the sandbox, as `ps` would show them."""
    out = sb.run("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done").stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_signals_reach_a_running_command(sb: Sandbox) -> None:
    script = "trap 'echo got-term; exit 11' TERM; echo ready; sleep 30 >/dev/null 2>&1 & wait"
    with sb.exec("sh", "-c", script) as p:
        assert p.stdout.readline() == "ready\n"
        p.terminate()
        assert p.stdout.readline() == "got-term\n"
        assert p.wait() == 11

    started = time.monotonic()
    with sb.exec("sleep", "31") as p:
        assert p.poll() is None
        time.sleep(0.5)
        p.kill()
        assert p.wait() == 137
    assert time.monotonic() - started < 10


def test_kill_right_after_exec_returns(sb: Sandbox) -> None:
    # exec() returns once the server says "started"; a kill sent at once must not be lost.
    started = time.monotonic()
    with sb.exec("sleep", "12") as p:
        p.kill()
        code = p.wait()
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"the kill was ignored: the command ran {elapsed:.1f}s and exited {code}"
    assert code == 137


def test_closing_the_process_kills_the_command(sb: Sandbox) -> None:
    # "If the client disconnects, the process is killed" (docs/api.md), however soon.
    later = sb.exec("sleep", "3456")
    wait_for(lambda: "sleep 3456" in _processes(sb) or None, timeout=10, what="sleep 3456 to run")
    later.close()
    at_once = sb.exec("sleep", "4567")
    at_once.close()

    def gone() -> bool | None:
        procs = _processes(sb)
        return not any(cmd.startswith(("sleep 3456", "sleep 4567")) for cmd in procs) or None

    wait_for(gone, timeout=8, interval=0.5, what="both commands to end after their clients left")
