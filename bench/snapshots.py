"""The snapshot figures of ``make bench``: memory snapshots, pause/resume and fork, against
raw ``runsc checkpoint`` / ``runsc restore`` on the same image rootfs.

- ``sb.snapshot()`` against ``runsc checkpoint --leave-running``;
- ``snap.restore()`` until a first exec answers, against ``runsc restore --detach`` + the
  first byte of ``runsc exec echo hi`` (and the issue's target for it: 150 ms at p50);
- ``sb.pause()`` against a checkpoint that stops the sandbox + ``runsc delete``, and
  ``sb.resume()`` until an exec answers against ``runsc restore`` + the first output;
- ``sb.fork(5)`` until each fork answers an exec, against one checkpoint + 5 restores (at
  once, as the server makes them) + their first outputs;
- the checkpoint's size on disk (``snap.info.size_bytes``: memory and files) of an idle sandbox and
  of one whose process holds 200 MB, and the snapshot and restore times of that one.

Every sandbox, snapshot and checkpoint made here is removed, also when a figure fails.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from stockade import Sandbox, Snapshot

from .baseline import RawRunsc
from .server import Server

Row = tuple[str, list[float], list[float], str]
MB = 1024 * 1024
TARGET = 0.150  # the goal for a restore of an idle Python sandbox, at p50
FORKS = 5
WARMUP = 2

# A detached process that allocates and touches 200 MB, then sleeps: nothing of it is
# left to the exec that starts it.
_HOG = (
    'setsid python3 -c "b=bytearray(200*1024*1024); import time; '
    '[b.__setitem__(i,1) for i in range(0,len(b),4096)]; time.sleep(1e9)" '
    ">/dev/null 2>&1 </dev/null &"
)
# The largest resident set of the sandbox's processes, in KiB.
_RSS = "cat /proc/[0-9]*/status 2>/dev/null | awk '/^VmRSS/ {if ($2>m) m=$2} END {print m+0}'"


def _big_runs(runs: int) -> int:
    """Repetitions of the 200 MB figures: each holds four copies of it at once."""
    return min(runs, 5)


def snapshot_legend(runs: int) -> str:
    return (
        "\nsnapshots: raw = raw runsc on the same rootfs (`--overlay2=root:memory`): snapshot is\n"
        "`runsc checkpoint --leave-running --compression=none`; restore is `runsc restore\n"
        "--detach` + `runsc exec echo hi` to its first byte (Stockade: `snap.restore()` + an\n"
        "exec's first line); pause is that checkpoint without --leave-running + `runsc delete`;\n"
        f"resume is restore + first byte; fork({FORKS}) is one checkpoint + {FORKS} restores at "
        "once +\ntheir first bytes (Stockade: `sb.fork(5)` + an exec in each). Sizes are bytes "
        "on disk\n(`snap.info.size_bytes`; raw: the checkpoint directory). 200 MB = a python3 "
        "process holding\n200 MB it has touched. target = the issue's goal: a restore of an "
        "idle Python sandbox\nat 150 ms p50 (ratio ≤ 1.00x meets it). Runs: "
        f"{runs} of each,\n{_big_runs(runs)} of the 200 MB ones, after {WARMUP} warm-ups "
        "each (both sides in turn)."
    )


def _tree_size(root: Path) -> int:
    """Bytes on disk of the files under ``root``, as the server counts a snapshot's."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def _answers(sb: Sandbox) -> None:
    p = sb.exec("echo", "hi")
    assert p.stdout.readline() == "hi\n"
    p.wait()


def _wait_rss(run_sh: Callable[[str], str], kib: int = 200 * 1024) -> None:
    for _ in range(600):
        if int(run_sh(_RSS).strip() or 0) >= kib:
            return
        time.sleep(0.1)
    raise RuntimeError("the 200 MB process never got its memory")


class _Raw:
    """Raw sandboxes and checkpoint directories, all removed by :meth:`close`."""

    def __init__(self, raw: RawRunsc) -> None:
        self.raw = raw
        self.sids: set[str] = set()
        self.images: set[Path] = set()

    def start(self) -> str:
        sid = self.raw.start()
        self.sids.add(sid)
        return sid

    def image(self) -> Path:
        path = self.raw.work / ("ck-" + uuid.uuid4().hex[:10])
        self.images.add(path)
        return path

    def checkpoint(self, sid: str, *, leave_running: bool = True) -> Path:
        path = self.image()
        self.raw.checkpoint(sid, path, leave_running=leave_running)
        return path

    def restore(self, image: Path) -> tuple[str, float]:
        """A sandbox restored from ``image``, and seconds until its first output."""
        t0 = time.perf_counter()
        sid = self.raw.restore(image)
        self.sids.add(sid)
        started = time.perf_counter() - t0
        return sid, started + self.raw.first_output(sid, "echo", "hi")

    def delete(self, sid: str) -> None:
        self.raw.delete(sid)
        self.sids.discard(sid)

    def drop(self, image: Path) -> None:
        shutil.rmtree(image, ignore_errors=True)
        self.images.discard(image)

    def close(self) -> None:
        for sid in list(self.sids):
            self.delete(sid)
        for image in list(self.images):
            self.drop(image)


class _Ours:
    """Stockade sandboxes and snapshots, all removed by :meth:`close`."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.sandboxes: dict[str, Sandbox] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.made: set[str] = set()  # every sandbox and snapshot ID, for the final check

    def create(self) -> Sandbox:
        sb = Sandbox.create(image=self.image, timeout=1800)
        self.keep(sb)
        _answers(sb)
        return sb

    def keep(self, *sbs: Sandbox) -> None:
        for sb in sbs:
            self.sandboxes[sb.id] = sb
            self.made.add(sb.id)

    def snapshot(self, sb: Sandbox) -> Snapshot:
        snap = sb.snapshot()
        self.snapshots[snap.id] = snap
        self.made.add(snap.id)
        return snap

    def terminate(self, *sbs: Sandbox) -> None:
        for sb in sbs:
            sb.terminate()
            self.sandboxes.pop(sb.id, None)

    def drop(self, snap: Snapshot) -> None:
        snap.delete()
        self.snapshots.pop(snap.id, None)

    def close(self) -> None:
        errors: list[Exception] = []
        for sb in list(self.sandboxes.values()):
            try:
                self.terminate(sb)
            except Exception as exc:  # clean up the rest, then report
                errors.append(exc)
        for snap in list(self.snapshots.values()):
            try:
                self.drop(snap)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@contextmanager
def _owned(server: Server, raw: RawRunsc, image: str) -> Iterator[tuple[_Ours, _Raw]]:
    ours, theirs = _Ours(image), _Raw(raw)
    try:
        yield ours, theirs
    finally:
        try:
            theirs.close()
        finally:
            ours.close()
    _check_clean(server, ours.made)


def snapshot_rows(server: Server, raw: RawRunsc, image: str, runs: int) -> list[Row]:
    rows: list[Row] = []
    with _owned(server, raw, image) as (ours, theirs):
        rows += _idle_rows(ours, theirs, runs)
        rows += _pause_rows(ours, theirs, runs)
        rows += _fork_rows(ours, theirs, runs)
        rows += _memory_rows(ours, theirs, _big_runs(runs))
    return rows


def _check_clean(server: Server, made: set[str]) -> None:
    """No snapshot or live sandbox of those made here is left on the server."""
    left = [s.id for s in Snapshot.list(url=server.url, token=server.token) if s.id in made]
    alive = [
        sb.id for sb in Sandbox.list(url=server.url, token=server.token)
        if sb.id in made and sb.last_info.status in ("starting", "running", "paused")
    ]  # fmt: skip
    if left or alive:
        raise RuntimeError(f"left behind: snapshots {left}, sandboxes {alive}")


def _snapshot_restore(
    ours: _Ours, theirs: _Raw, sb: Sandbox, sid: str, n: int
) -> tuple[list[float], ...]:
    """``n`` (after warm-ups) snapshot and restore → first output of ``sb`` and of the raw
    ``sid``, and their sizes in MB."""
    snap_t: list[float] = []
    restore_t: list[float] = []
    size: list[float] = []
    raw_snap_t: list[float] = []
    raw_restore_t: list[float] = []
    raw_size: list[float] = []
    for i in range(WARMUP + n):
        t0 = time.perf_counter()
        snap = ours.snapshot(sb)
        t1 = time.perf_counter()
        copy = snap.restore(timeout=600)
        ours.keep(copy)
        _answers(copy)
        t2 = time.perf_counter()
        ours.terminate(copy)
        ours.drop(snap)

        t3 = time.perf_counter()
        ck = theirs.checkpoint(sid)
        t4 = time.perf_counter()
        copy_sid, took = theirs.restore(ck)
        theirs.delete(copy_sid)
        if i >= WARMUP:
            snap_t.append(t1 - t0)
            restore_t.append(t2 - t1)
            size.append(snap.info.size_bytes / MB)
            raw_snap_t.append(t4 - t3)
            raw_restore_t.append(took)
            raw_size.append(_tree_size(ck) / MB)
        theirs.drop(ck)
    return snap_t, restore_t, size, raw_snap_t, raw_restore_t, raw_size


def _idle_rows(ours: _Ours, theirs: _Raw, n: int) -> list[Row]:
    sb = ours.create()
    sid = theirs.start()
    snap, restore, size, raw_snap, raw_restore, raw_size = _snapshot_restore(
        ours, theirs, sb, sid, n
    )
    ours.terminate(sb)
    theirs.delete(sid)
    return [
        ("snapshot, idle", snap, raw_snap, "raw"),
        ("restore → first output, idle", restore, raw_restore, "raw"),
        ("restore, idle python: target 150 ms", restore, [TARGET], "target"),
        ("checkpoint size, idle (MB)", size, raw_size, "raw"),
    ]


def _pause_rows(ours: _Ours, theirs: _Raw, n: int) -> list[Row]:
    sb = ours.create()
    sid = theirs.start()
    pause: list[float] = []
    resume: list[float] = []
    raw_pause: list[float] = []
    raw_resume: list[float] = []
    for i in range(WARMUP + n):
        t0 = time.perf_counter()
        sb.pause()
        t1 = time.perf_counter()
        sb.resume()
        _answers(sb)
        t2 = time.perf_counter()

        t3 = time.perf_counter()
        ck = theirs.checkpoint(sid, leave_running=False)
        theirs.delete(sid)
        t4 = time.perf_counter()
        sid, took = theirs.restore(ck)
        theirs.drop(ck)
        if i >= WARMUP:
            pause.append(t1 - t0)
            resume.append(t2 - t1)
            raw_pause.append(t4 - t3)
            raw_resume.append(took)
    ours.terminate(sb)
    theirs.delete(sid)
    return [
        ("pause", pause, raw_pause, "raw"),
        ("resume → first output", resume, raw_resume, "raw"),
    ]


def _fork_rows(ours: _Ours, theirs: _Raw, n: int) -> list[Row]:
    sb = ours.create()
    sid = theirs.start()
    fork: list[float] = []
    raw_fork: list[float] = []
    with ThreadPoolExecutor(FORKS) as pool:
        for i in range(WARMUP + n):
            t0 = time.perf_counter()
            copies = sb.fork(FORKS)
            ours.keep(*copies)
            assert len(copies) == FORKS, copies
            for copy in copies:
                _answers(copy)
            t1 = time.perf_counter()
            ours.terminate(*copies)

            t2 = time.perf_counter()
            ck = theirs.checkpoint(sid)
            restored = list(pool.map(theirs.restore, [ck] * FORKS))
            t3 = time.perf_counter()
            for copy_sid, _took in restored:
                theirs.delete(copy_sid)
            theirs.drop(ck)
            if i >= WARMUP:
                fork.append(t1 - t0)
                raw_fork.append(t3 - t2)
    ours.terminate(sb)
    theirs.delete(sid)
    return [(f"fork({FORKS}) → each answers", fork, raw_fork, "raw")]


def _memory_rows(ours: _Ours, theirs: _Raw, n: int) -> list[Row]:
    sb = ours.create()
    sid = theirs.start()
    assert sb.exec("sh", "-c", _HOG).wait() == 0
    theirs.raw.exec(sid, "sh", "-c", _HOG)
    _wait_rss(lambda cmd: sb.run(cmd, check=True).stdout)
    _wait_rss(lambda cmd: theirs.raw.exec(sid, "sh", "-c", cmd).decode())
    snap, restore, size, raw_snap, raw_restore, raw_size = _snapshot_restore(
        ours, theirs, sb, sid, n
    )
    ours.terminate(sb)
    theirs.delete(sid)
    return [
        ("snapshot, 200 MB in memory", snap, raw_snap, "raw"),
        ("restore → first output, 200 MB", restore, raw_restore, "raw"),
        ("checkpoint size, 200 MB (MB)", size, raw_size, "raw"),
    ]
