"""Sandboxes outlive the server process; a restarted server finds them, or says they are gone.

These tests restart their own server (not the session one), so other modules never see it
go away.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stockade import Sandbox, SandboxInfo, SandboxTerminatedError

from .conftest import LiveServer, own_server
from .helpers import pid_alive, runsc_state, unique, wait_for


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with own_server("stockade-restart-") as server:
        yield server


def _kw(live: LiveServer) -> dict[str, Any]:
    return {"url": live.url, "token": live.token}


def _prepare(sb: Sandbox, marker: str) -> None:
    """State that only the very same sandbox can still have after the restart."""
    sb.files.write("/data/marker.txt", marker)
    sb.run(f"echo {marker} > /dev/shm/in-memory").check()
    sb.run("nohup sleep 7777 >/dev/null 2>&1 &").check()


def _check_same_sandbox(live: LiveServer, sandbox_id: str, marker: str) -> None:
    running = {s.id for s in Sandbox.list(status="running", **_kw(live))}
    assert sandbox_id in running
    sb = Sandbox.from_id(sandbox_id, **_kw(live))
    assert sb.info().status == "running"
    assert sb.files.read_text("/data/marker.txt") == marker
    assert sb.run("cat /dev/shm/in-memory").stdout == marker + "\n"
    procs = sb.run("cat /proc/[0-9]*/cmdline | tr '\\0' ' '").stdout
    assert "sleep 7777" in procs
    # Exec (both transports) and files work as before.
    with sb.exec("sh", "-c", "read x; echo got $x") as p:
        p.stdin.write("line\n")
        assert p.stdout.read() == "got line\n"
        assert p.wait() == 0
    sb.files.write("/data/after.txt", "after")
    assert [e.name for e in sb.files.list("/data")] == ["after.txt", "marker.txt"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_sandboxes_survive_a_server_restart(live: LiveServer, sig: signal.Signals) -> None:
    marker = unique("marker")
    sb = Sandbox.create(image="debian", tags={"restart": marker}, **_kw(live))
    try:
        _prepare(sb, marker)
        old_pid = runsc_state(live.data_dir, sb.id)
        assert old_pid is not None and old_pid["status"] == "running"
        live.restart(sig)
        _check_same_sandbox(live, sb.id, marker)
        tagged = Sandbox.list(tags={"restart": marker}, **_kw(live))
        assert [s.id for s in tagged] == [sb.id]
        assert runsc_state(live.data_dir, sb.id) == old_pid
        # The restarted server still creates and ends sandboxes.
        with Sandbox.create(image="debian", **_kw(live)) as fresh:
            assert fresh.run("echo new").stdout == "new\n"
    finally:
        sb.terminate()
    assert Sandbox.from_id(sb.id, **_kw(live)).info().status == "terminated"


def test_sandbox_killed_while_the_server_was_down_is_failed(live: LiveServer) -> None:
    sb = Sandbox.create(image="debian", **_kw(live))
    survivor = Sandbox.create(image="debian", **_kw(live))
    try:
        state = runsc_state(live.data_dir, sb.id)
        assert state is not None
        pid = state["pid"]
        assert isinstance(pid, int) and pid > 1
        live.stop()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: True if not pid_alive(pid) else None, timeout=10, what="runsc to die")
        # Dead, but maybe not reaped yet: PID 1 inherited it when the server stopped.
        zombie = Path(f"/proc/{pid}").exists()
        live.start()

        # Watch it from the moment the server answers: it must never look alive.
        handle = Sandbox.from_id(sb.id, **_kw(live))
        seen: list[tuple[float, str]] = []
        started = time.monotonic()

        def ended() -> SandboxInfo | None:
            info = handle.info() if seen else handle.last_info
            seen.append((round(time.monotonic() - started, 2), info.status))
            return info if info.status != "running" else None

        try:
            info = wait_for(ended, timeout=5, what="the dead sandbox to be seen ended")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {seen}") from None
        assert info.status == "failed", seen
        assert info.reason == "error"
        assert info.message, info
        assert info.ended_at is not None
        running_for = [t for t, status in seen if status == "running"]
        assert not running_for, (
            f"the dead sandbox was reported running after the restart: {seen} (its runsc "
            f"process had exited and was {'an unreaped zombie' if zombie else 'reaped'})"
        )
        assert sb.id not in {s.id for s in Sandbox.list(status="running", **_kw(live))}
        with pytest.raises(SandboxTerminatedError, match="failed"):
            sb.run("true")
        # The other sandbox was not affected.
        assert survivor.run("echo fine").stdout == "fine\n"
        assert survivor.info().status == "running"
    finally:
        sb.terminate()
        survivor.terminate()


def test_timeout_that_passed_while_the_server_was_down(live: LiveServer) -> None:
    sb = Sandbox.create(image="debian", timeout=3, **_kw(live))
    try:
        assert sb.last_info.expires_at is not None
        expires_at = sb.last_info.expires_at.timestamp()
        live.stop(signal.SIGKILL)
        # Down until its deadline has passed, by the clock the server keeps deadlines on.
        wait_for(lambda: time.time() > expires_at or None, timeout=10, what="its deadline")
        live.start()

        def ended() -> SandboxInfo | None:
            info = sb.info()
            return info if info.status != "running" else None

        info = wait_for(ended, timeout=5, what="the overdue sandbox to end")
        assert (info.status, info.reason) == ("terminated", "timeout")
        assert runsc_state(live.data_dir, sb.id) is None
    finally:
        sb.terminate()


def _runsc_waiters(sandbox_id: str) -> int:
    """How many `runsc … wait ID` processes run on the host for this sandbox."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wait" in argv and sandbox_id.encode() in argv:
            count += 1
    return count


def _entrypoint_exit_across_restart(live: LiveServer, sig: signal.Signals) -> None:
    script = "echo before; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo after; exit 6"
    sb = Sandbox.create(image="debian", entrypoint=["sh", "-c", script], **_kw(live))

    def ended() -> SandboxInfo | None:
        info = sb.info()
        return info if info.status != "running" else None

    try:
        wait_for(lambda: True if "before" in sb.logs() else None, timeout=10, what="output")
        live.restart(sig)
        waiters = _runsc_waiters(sb.id)
        # The file exists as soon as the write opens it, so the entrypoint may end the
        # sandbox before the write's own answer comes back: either way it went through.
        with contextlib.suppress(SandboxTerminatedError):
            sb.files.write("/tmp/go", "")
        info = wait_for(ended, timeout=15, what="the entrypoint to exit")
        assert (info.status, info.reason) == ("terminated", "exited"), info
        assert info.exit_code == 6, (
            f"exit code {info.exit_code} after a restart by {sig.name}; "
            f"{waiters} `runsc wait` processes were waiting on the sandbox"
        )
        assert sb.logs() == "before\nafter\n"
    finally:
        sb.terminate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_entrypoint_exit_code_after_a_restart(live: LiveServer, sig: signal.Signals) -> None:
    # The entrypoint exits just after the restart; its code must not be lost. Several
    # rounds: the moment it exits relative to the new server's start varies.
    for _ in range(4):
        _entrypoint_exit_across_restart(live, sig)
