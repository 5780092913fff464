"""Sandbox lifetimes against real runsc: timeout, idle_timeout, what counts as activity,
set_timeout, on_timeout="pause" and the retention of ended records.

Every limit must be honoured within a second: each test notes when the sandbox's last
activity or deadline was, and polls until the sandbox is no longer running.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stockade import InvalidArgumentError, Sandbox, SandboxInfo, SandboxTerminatedError

from .conftest import LiveServer, private_cache
from .helpers import force_cleanup, wait_for

STOCKADE = Path(sys.executable).parent / "stockade"
SLACK = 1.0  # each limit is honoured within this


def _until_not_running(sb: Sandbox, timeout: float = 15) -> tuple[float, SandboxInfo]:
    """When the sandbox was first seen not running (time.time()), and its record then."""

    def probe() -> tuple[float, SandboxInfo] | None:
        info = sb.info()
        return (time.time(), info) if info.status != "running" else None

    return wait_for(probe, timeout=timeout, interval=0.05, what=f"{sb.id} to stop running")


def _assert_on_time(seen: float, deadline: float) -> None:
    assert seen >= deadline - 0.1, f"stopped {deadline - seen:.2f}s before its deadline"
    assert seen - deadline < SLACK, f"stopped {seen - deadline:.2f}s after its deadline"


def _timeout_loop_passes(witness: Sandbox) -> None:
    """Return once the server's timeout loop has made a pass at least 1 s from now:
    ``witness``, given a timeout of 1 s now, ends in one. Whatever else was due by then was
    due in that pass or an earlier one, so what has not happened by then is not going to."""
    witness.set_timeout(1)
    _, info = _until_not_running(witness)
    assert info.reason == "timeout", info


def test_timeout_is_honoured(server: LiveServer) -> None:
    with Sandbox.create(image="debian", timeout=2) as sb:
        assert sb.last_info.expires_at is not None
        deadline = sb.last_info.expires_at.timestamp()
        seen, info = _until_not_running(sb)
        assert (info.status, info.reason) == ("terminated", "timeout")
        assert info.message and "timeout of 2s" in info.message and "set_timeout" in info.message
        _assert_on_time(seen, deadline)
        with pytest.raises(SandboxTerminatedError, match="timeout"):
            sb.run("true")


def test_idle_timeout_counts_from_the_last_activity(server: LiveServer) -> None:
    with Sandbox.create(image="debian", idle_timeout=2, timeout=60) as sb:
        assert sb.last_info.idle_timeout == 2
        time.sleep(1)
        assert sb.run("echo hi").stdout == "hi\n"
        last = time.time()  # the server saw the exec end a moment before this
        seen, info = _until_not_running(sb)
        assert (info.status, info.reason) == ("terminated", "idle")
        assert info.message and "idle_timeout of 2s" in info.message
        assert "`idle_timeout=`" in info.message
        _assert_on_time(seen, last + 2)
        with pytest.raises(SandboxTerminatedError, match="idle"):
            sb.files.read_text("/etc/hostname")


def test_activity_keeps_it_alive(server: LiveServer) -> None:
    with Sandbox.create(image="debian", idle_timeout=2, timeout=60) as sb:
        started = time.time()
        while time.time() - started < 5:  # two and a half idle_timeouts
            time.sleep(0.5)
            # Execs and file calls alike count.
            if int(time.time() * 2) % 2:
                assert sb.run("true").exit_code == 0
            else:
                sb.files.write("/tmp/beat", b"x")
            last = time.time()
        assert sb.info().status == "running"
        seen, info = _until_not_running(sb)
        assert info.reason == "idle"
        _assert_on_time(seen, last + 2)


def test_a_long_exec_keeps_it_alive(server: LiveServer) -> None:
    with Sandbox.create(image="debian", idle_timeout=2, timeout=60) as sb:
        r = sb.run("sleep 4; echo done")  # twice the idle_timeout, without a byte of output
        last = time.time()
        assert (r.exit_code, r.stdout) == (0, "done\n")
        assert sb.info().status == "running"
        seen, info = _until_not_running(sb)
        assert info.reason == "idle"
        _assert_on_time(seen, last + 2)


def test_set_timeout_extends(server: LiveServer) -> None:
    with Sandbox.create(image="debian", timeout=2) as sb:
        before = time.time()
        info = sb.set_timeout(4)
        assert info.timeout == 4 and info.status == "running"
        assert info.expires_at is not None
        new_deadline = info.expires_at.timestamp()
        assert before + 4 - 0.1 <= new_deadline <= time.time() + 4 + 0.1
        # Watched from before the old deadline: first seen stopped at the new one, it ran
        # on through the old one (2 s sooner, far more than the SLACK).
        seen, ended = _until_not_running(sb)
        assert ended.reason == "timeout" and ended.message and "timeout of 4s" in ended.message
        _assert_on_time(seen, new_deadline)


def test_set_timeout_shortens(server: LiveServer) -> None:
    with Sandbox.create(image="debian", timeout=300) as sb:
        info = sb.set_timeout(2)
        assert info.expires_at is not None
        seen, ended = _until_not_running(sb)
        assert ended.reason == "timeout"
        _assert_on_time(seen, info.expires_at.timestamp())


def test_set_timeout_refuses_ended_sandboxes_and_bad_values(server: LiveServer) -> None:
    with Sandbox.create(image="debian", timeout=60) as sb:
        for bad in (0, -1, 0.5, 86401):
            with pytest.raises(InvalidArgumentError, match="timeout"):
                sb.set_timeout(bad)
        assert sb.info().status == "running"
        sb.terminate()
        with pytest.raises(SandboxTerminatedError, match="terminated"):
            sb.set_timeout(60)


def test_set_timeout_from_the_cli(server: LiveServer) -> None:
    with Sandbox.create(image="debian", timeout=60) as sb:
        out = subprocess.run(
            [str(STOCKADE), "set-timeout", sb.id, "600"],
            capture_output=True, text=True, timeout=60, env=os.environ.copy(), check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        info = sb.info()
        assert info.timeout == 600 and info.expires_at is not None
        assert out.stdout.strip() == info.expires_at.isoformat()
        bad = subprocess.run(
            [str(STOCKADE), "set-timeout", sb.id, "0"],
            capture_output=True, text=True, timeout=60, env=os.environ.copy(), check=False,
        )  # fmt: skip
        assert bad.returncode == 1 and "timeout=0 is out of range" in bad.stderr


def test_on_timeout_pause_pauses_and_resume_brings_it_back(server: LiveServer) -> None:
    with (
        Sandbox.create(image="debian", timeout=60) as witness,
        Sandbox.create(image="debian", timeout=60) as second_witness,
        Sandbox.create(image="debian", idle_timeout=2, timeout=60, on_timeout="pause") as sb,
    ):
        assert sb.last_info.on_timeout == "pause"
        sb.files.write("/root/kept.txt", b"still here")
        last = time.time()
        seen, info = _until_not_running(sb)
        assert info.status == "paused", info
        assert info.reason is None
        _assert_on_time(seen, last + 2)
        # A paused sandbox has no clocks: nothing else happens to it.
        _timeout_loop_passes(witness)
        paused = sb.info()
        assert paused.status == "paused"
        assert paused.expires_at is not None and paused.paused_at is not None
        left = paused.expires_at.timestamp() - paused.paused_at.timestamp()

        resumed = sb.resume()
        assert resumed.status == "running"
        # Its time left was kept (60 s, less the few it ran), not reset nor used up.
        assert resumed.expires_at is not None and resumed.started_at is not None
        assert 50 < resumed.expires_at.timestamp() - time.time() <= 60
        assert abs(resumed.expires_at.timestamp() - resumed.started_at.timestamp() - left) < 0.01
        assert sb.files.read_text("/root/kept.txt") == "still here"
        # Its idle clock restarted at the resume (it would be overdue at once otherwise).
        _timeout_loop_passes(second_witness)
        assert sb.info().status == "running"
        assert sb.run("cat /root/kept.txt").stdout == "still here"
        # ... and runs again: idle once more, it pauses once more.
        last = time.time()
        seen, info = _until_not_running(sb)
        assert info.status == "paused"
        _assert_on_time(seen, last + 2)


def test_on_timeout_pause_at_the_timeout(server: LiveServer) -> None:
    with Sandbox.create(image="debian", timeout=2, on_timeout="pause") as sb:
        assert sb.last_info.expires_at is not None
        deadline = sb.last_info.expires_at.timestamp()
        seen, info = _until_not_running(sb)
        assert info.status == "paused"
        _assert_on_time(seen, deadline)
        resumed = sb.resume()
        # Paused at its timeout, it gets the whole timeout again (less the moment the pause
        # took), not the least a resume grants (1 s).
        assert 1.5 < resumed.timeout <= 2 and resumed.expires_at is not None
        assert sb.run("true").exit_code == 0


# -- retention, on a server of its own --------------------------------------------------


@pytest.fixture
def short_retention() -> Iterator[LiveServer]:
    tmp = Path(tempfile.mkdtemp(prefix="stockade-retention-"))
    live = LiveServer(data_dir=tmp / "data", token="sk_test_" + secrets.token_hex(8))
    live.extra_args = ["--cache-dir", str(private_cache(tmp)), "--retention", "2"]
    try:
        live.start()
        yield live
    finally:
        live.terminate_all()
        live.stop()
        force_cleanup(tmp, live.data_dir)


def test_ended_records_and_logs_go_after_the_retention(short_retention: LiveServer) -> None:
    live = short_retention
    url, token = live.url, live.token
    ended = Sandbox.create(
        image="debian", entrypoint=["sh", "-c", "echo bye"], url=url, token=token
    )
    running = Sandbox.create(image="debian", timeout=60, url=url, token=token)
    try:
        directory = live.data_dir / "sandboxes" / ended.id
        info = wait_for(
            lambda: i if (i := ended.info()).ended else None, timeout=30, what="the end"
        )
        assert info.ended_at is not None
        assert ended.logs() == "bye\n"
        assert (directory / "output.log").exists()

        def gone() -> float | None:
            r = httpx.get(f"{live.url}/v1/sandboxes/{ended.id}", headers=live.headers)
            return time.time() if r.status_code == 404 else None

        seen = wait_for(gone, timeout=15, interval=0.05, what="the record to be purged")
        # Retention 2 s, looked at every 0.2 s.
        assert 2 - 0.1 <= seen - info.ended_at.timestamp() < 2 + SLACK
        assert not directory.exists()
        assert ended.id not in {s.id for s in Sandbox.list(url=url, token=token)}
        # Running sandboxes are not touched, however old.
        assert running.info().status == "running"
        assert (live.data_dir / "sandboxes" / running.id).exists()
    finally:
        running.terminate()
