"""A server that dies (like ``kill -9``) at any step of a pause, resume, snapshot or fork
leaves a state the next server makes whole: a sandbox is paused (and resumes intact) or
running (and not frozen), a snapshot exists whole or not at all, and no fork is left
half-created.

The server dies at a named point when started with ``STOCKADE_FAILPOINTS=<name>``
(src/stockade/server/failpoints.py). These tests run their own server, restarted for each
point, so other modules never see it go away.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stockade import (
    Sandbox,
    ServerError,
    Snapshot,
    StockadeConnectionError,
    StockadeError,
)

from .conftest import LiveServer, own_server
from .helpers import (
    COUNTER,
    count,
    counting_past,
    runsc_binary,
    runsc_processes,
    runsc_state,
    wait_for,
)

pytestmark = [pytest.mark.runsc, pytest.mark.timeout(300)]

MARKER = "written before the crash"


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    os.environ.pop("STOCKADE_FAILPOINTS", None)
    with own_server("stockade-crash-") as server:
        yield server


def _kw(live: LiveServer) -> dict[str, Any]:
    return {"url": live.url, "token": live.token}


# ------------------------------------------------------------------------------ helpers


def prepare(live: LiveServer) -> tuple[Sandbox, int]:
    """A sandbox with a file and a counter loop; returns it and a count it has reached."""
    sb = Sandbox.create(image="debian", memory=256, timeout=900, **_kw(live))
    sb.files.write("/data/f.txt", MARKER)
    sb.run(f"setsid sh -c '{COUNTER}' >/dev/null 2>&1 </dev/null &", check=True)
    return sb, counting_past(sb, 2)


def crash_at(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch, point: str, action: Callable[[], object]
) -> None:
    """Run ``action`` on a server armed to die at ``point``; check it died there, then
    start it again without the failpoint."""
    live.stop()
    monkeypatch.setenv("STOCKADE_FAILPOINTS", point)
    live.start()
    proc = live.proc
    assert proc is not None
    try:
        with pytest.raises((StockadeConnectionError, ServerError)):
            action()
        assert proc.wait(30) == 137, live.log()
        assert f"failpoint {point}: exiting" in live.log()
    finally:
        monkeypatch.delenv("STOCKADE_FAILPOINTS")
        live.stop(signal.SIGKILL)
        live.start()


def sandbox_dir(live: LiveServer, sb: Sandbox) -> Path:
    return live.data_dir / "sandboxes" / sb.id


def check_running(live: LiveServer, sb: Sandbox, reached: int) -> None:
    """Running, not frozen: exec and files work, the counter counts on from where it was."""
    info = sb.info()
    assert (info.status, info.paused_at) == ("running", None), info
    state = runsc_state(live.data_dir, sb.id)
    assert state is not None and state["status"] == "running", state
    assert sb.run("cat /data/f.txt").stdout == MARKER
    now = count(sb)
    assert now >= reached
    counting_past(sb, now)
    sb.files.write("/data/after.txt", "after")
    assert sb.files.read_text("/data/after.txt") == "after"
    assert not (sandbox_dir(live, sb) / "checkpoint.tmp").exists()
    assert not (sandbox_dir(live, sb) / "checkpoint").exists()


def check_paused(live: LiveServer, sb: Sandbox, reached: int) -> None:
    """Paused for good: nothing of it runs, and it resumes whole."""
    info = sb.info()
    assert info.status == "paused", info
    assert runsc_state(live.data_dir, sb.id) is None
    assert runsc_processes(sb.id) == []
    assert not (sandbox_dir(live, sb) / "checkpoint.tmp").exists()
    assert (sandbox_dir(live, sb) / "checkpoint").is_dir()
    assert sb.resume().status == "running"
    check_running(live, sb, reached)


def check_snapshots_dir(live: LiveServer) -> None:
    """Nothing under snapshots/ but the recorded snapshots, each restorable."""
    recorded = {s.id for s in Snapshot.list(**_kw(live))}
    on_disk = {p.name for p in (live.data_dir / "snapshots").iterdir()}
    assert on_disk == recorded


def all_sandboxes(live: LiveServer) -> dict[str, str]:
    return {s.id: s.last_info.status for s in Sandbox.list(**_kw(live))}


def check_no_stray_runsc(live: LiveServer) -> None:
    """Every runsc sandbox of the server belongs to a running sandbox."""
    listed = subprocess.run(
        [runsc_binary(), f"--root={live.data_dir / 'runsc'}", "list", "--format=json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    known = {str(item["id"]) for item in json.loads(listed.stdout or "[]") or []}
    running = {i for i, status in all_sandboxes(live).items() if status == "running"}
    assert known <= running, known - running


def check_still_works(live: LiveServer, sb: Sandbox, reached: int) -> None:
    """After the recovery, a snapshot and a pause of the sandbox work as usual."""
    snap = sb.snapshot()
    restored = snap.restore()
    try:
        assert restored.files.read_text("/data/f.txt") == MARKER
        counting_past(restored, reached)
    finally:
        restored.terminate()
        snap.delete()
    assert sb.pause().status == "paused"
    assert sb.resume().status == "running"
    counting_past(sb, count(sb))


# ------------------------------------------------------------------------------- pause


@pytest.mark.parametrize(
    ("point", "outcome"),
    [
        # Before the rename the pause has not happened: the frozen sandbox thaws.
        ("pause.after-checkpoint", "running"),
        # From the rename on it has: the next server finishes it.
        ("pause.after-rename", "paused"),
        ("pause.after-record", "paused"),
    ],
)
def test_crash_during_pause(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch, point: str, outcome: str
) -> None:
    sb, reached = prepare(live)
    try:
        crash_at(live, monkeypatch, point, sb.pause)
        if outcome == "paused":
            check_paused(live, sb, reached)
        else:
            check_running(live, sb, reached)
        check_still_works(live, sb, reached)
        check_no_stray_runsc(live)
    finally:
        sb.terminate()


def test_crash_during_resume(live: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    sb, reached = prepare(live)
    try:
        assert sb.pause().status == "paused"
        crash_at(live, monkeypatch, "resume.after-restore", sb.resume)
        # runsc already runs it again: it is running, and its checkpoint is gone.
        check_running(live, sb, reached)
        check_still_works(live, sb, reached)
        check_no_stray_runsc(live)
    finally:
        sb.terminate()


# --------------------------------------------------------------------- snapshot and fork


@pytest.mark.parametrize("point", ["checkpoint.frozen", "snapshot.before-record"])
def test_crash_during_snapshot(
    live: LiveServer, monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    sb, reached = prepare(live)
    try:
        crash_at(live, monkeypatch, point, sb.snapshot)
        # Not recorded, so not at all: nothing listed, nothing left on disk.
        assert Snapshot.list(sandbox_id=sb.id, **_kw(live)) == []
        check_snapshots_dir(live)
        # The sandbox was frozen (or just thawed) when the server died: it runs on.
        check_running(live, sb, reached)
        check_still_works(live, sb, reached)
        check_snapshots_dir(live)
        check_no_stray_runsc(live)
    finally:
        sb.terminate()


@pytest.mark.parametrize("point", ["checkpoint.frozen", "fork.after-checkpoint"])
def test_crash_during_fork(live: LiveServer, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    sb, reached = prepare(live)
    try:
        before = all_sandboxes(live)
        crash_at(live, monkeypatch, point, lambda: sb.fork(3))
        # No fork was made, not even half of one.
        assert all_sandboxes(live) == before
        check_snapshots_dir(live)
        check_running(live, sb, reached)
        forks = sb.fork(2)
        try:
            for f in forks:
                assert f.files.read_text("/data/f.txt") == MARKER
                counting_past(f, reached)
        finally:
            for f in forks:
                f.terminate()
        check_no_stray_runsc(live)
    finally:
        sb.terminate()


@pytest.mark.parametrize("moment", ["dir", "pid"])
def test_kill_mid_fork_leaves_no_half_created_sandbox(live: LiveServer, moment: str) -> None:
    """``kill -9`` while the forks boot (as soon as a fork's directory appears, or as soon
    as runsc has restored one: its pid file appears): afterwards each of them has either
    ended or runs as a whole sandbox; none stays starting."""
    sb, reached = prepare(live)
    before = set(all_sandboxes(live))
    sandboxes_dir = live.data_dir / "sandboxes"
    dirs_before = {p.name for p in sandboxes_dir.iterdir()}
    errors: list[BaseException] = []
    new: list[Sandbox] = []

    def fork() -> None:
        try:
            sb.fork(3)
        except StockadeError as exc:
            errors.append(exc)

    worker = threading.Thread(target=fork)
    worker.start()
    try:
        # The moment a fork's directory appears, its boot has begun.
        def booting() -> bool | None:
            new = {p.name for p in sandboxes_dir.iterdir()} - dirs_before
            if moment == "pid":
                new = {n for n in new if (sandboxes_dir / n / "pid").exists()}
            return True if new else None

        wait_for(booting, timeout=30, interval=0.002, what=f"a fork's {moment}")
        live.stop(signal.SIGKILL)
        worker.join(30)
        assert errors and isinstance(errors[0], StockadeConnectionError | ServerError), errors
        live.start()
        assert sb.info().status == "running"
        new = [s for s in Sandbox.list(**_kw(live)) if s.id not in before]
        assert 1 <= len(new) <= 3, new

        def settled() -> dict[str, str] | None:
            statuses = {f.id: f.info().status for f in new}
            return None if "starting" in statuses.values() else statuses

        try:
            statuses = wait_for(settled, timeout=10, interval=0.2, what="the forks to settle")
        except AssertionError:
            stuck = {f.id: (f.info().status, runsc_state(live.data_dir, f.id)) for f in new}
            raise AssertionError(
                f"forks cut short by the crash stay 'starting' after the restart: {stuck}"
            ) from None
        for f in new:
            assert statuses[f.id] in ("running", "failed"), (f.id, statuses[f.id])
            if statuses[f.id] == "running":
                assert f.files.read_text("/data/f.txt") == MARKER
                counting_past(f, reached)
            else:
                assert runsc_processes(f.id) == []
        check_no_stray_runsc(live)
        for f in new:
            f.terminate()
        check_snapshots_dir(live)
        check_running(live, sb, reached)
    finally:
        worker.join(30)
        for f in new:
            with contextlib.suppress(StockadeError):
                f.terminate()
        sb.terminate()


# ---------------------------------------------------------------------------- kill -9


def test_records_survive_kill_9(live: LiveServer) -> None:
    running, reached_running = prepare(live)
    paused, reached_paused = prepare(live)
    try:
        snap = running.snapshot(name="before-kill")
        assert paused.pause().status == "paused"
        live.stop(signal.SIGKILL)
        live.start()

        assert {s.id for s in Snapshot.list(**_kw(live))} >= {snap.id}
        again = Snapshot.from_id(snap.id, **_kw(live))
        assert again.info == snap.info
        check_snapshots_dir(live)
        check_running(live, running, reached_running)
        check_paused(live, paused, reached_paused)

        restored = again.restore()
        try:
            assert restored.info().snapshot == snap.id
            assert restored.files.read_text("/data/f.txt") == MARKER
            counting_past(restored, reached_running)
        finally:
            restored.terminate()
        snap.delete()
        check_snapshots_dir(live)
        check_no_stray_runsc(live)
    finally:
        running.terminate()
        paused.terminate()
