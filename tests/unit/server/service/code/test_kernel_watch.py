"""The kernel's watcher programs (service/code/kernel.py), run on the host: they are plain Python.

The launcher forks the kernel into a session of its own and prints its PID; the watcher
passes SIGINT on and exits when the kernel does, with its log on stderr. A re-watcher
does the same for a kernel that is not its child (one attached again after a pause)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stockade.server.service.code.kernel import _LAUNCHER, _REWATCH, KernelHandle, saved_workdir
from tests.waiting import wait_for


def _wait_exit(p: subprocess.Popen[bytes], timeout: float = 10) -> int:
    return p.wait(timeout=timeout)


def test_the_launcher_starts_the_kernel_in_its_own_session_and_reports_its_end(
    tmp_path: Path,
) -> None:
    # A stand-in "kernel" module: records SIGINT in its log, exits 3 when asked to.
    module = tmp_path / "fake_kernel.py"
    module.write_text(
        "import signal, sys, time, pathlib\n"
        "conn = sys.argv[sys.argv.index('-f') + 1]\n"
        "signal.signal(signal.SIGINT, lambda *_: print('got SIGINT', flush=True))\n"
        "print('kernel up with', open(conn).read(), flush=True)\n"
        "while not pathlib.Path(conn + '.stop').exists():\n"
        "    time.sleep(0.05)\n"
        "sys.exit(3)\n"
    )
    conn = tmp_path / "conn.json"
    info = json.dumps({"key": "k"})
    with subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, "fake_kernel", str(conn), info],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)}, start_new_session=True,
    ) as p:  # fmt: skip
        _launch_and_check(p, conn)


def _launch_and_check(p: subprocess.Popen[bytes], conn: Path) -> None:
    try:
        assert p.stdout is not None
        pid = int(p.stdout.readline())
        # The child calls setsid() right after the fork.
        wait_for(lambda: os.getsid(pid) == pid or None, timeout=10, interval=0.01,
                 what="the kernel to start a session")  # fmt: skip
        assert os.getsid(p.pid) != pid  # a session of its own, not the watcher's
        log = Path(str(conn) + ".log")

        def logged(line: str) -> bool | None:
            return line in (log.read_text() if log.exists() else "") or None

        wait_for(lambda: logged("kernel up"), timeout=10, interval=0.05, what="the kernel's start")
        os.killpg(p.pid, signal.SIGINT)  # what an exec's SIGINT does: the watcher's group
        wait_for(lambda: logged("got SIGINT"), timeout=10, interval=0.05, what="SIGINT to arrive")
        Path(str(conn) + ".stop").touch()
        assert _wait_exit(p) == 3
        assert p.stderr is not None
        assert b'kernel up with {"key": "k"}' in p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()


def test_the_rewatcher_follows_a_process_that_is_not_its_child(tmp_path: Path) -> None:
    log = tmp_path / "k.log"
    log.write_text("last words\n")
    with (
        subprocess.Popen(["sleep", "60"]) as target,
        subprocess.Popen(
            [sys.executable, "-c", _REWATCH, str(target.pid), str(log)], stderr=subprocess.PIPE
        ) as watcher,
    ):
        _follow(target, watcher)


def _follow(target: subprocess.Popen[bytes], watcher: subprocess.Popen[bytes]) -> None:
    try:
        time.sleep(0.3)
        assert watcher.poll() is None  # still watching
        target.kill()
        target.wait()
        assert _wait_exit(watcher) == 1
        assert watcher.stderr is not None
        assert watcher.stderr.read() == b"last words\n"
    finally:
        for proc in (target, watcher):
            if proc.poll() is None:
                proc.kill()


def test_the_rewatcher_of_a_missing_process_ends_at_once(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    watcher = subprocess.run(
        [sys.executable, "-c", _REWATCH, str(gone.pid), str(tmp_path / "none.log")],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    assert watcher.returncode == 1


def test_a_kernel_handle_survives_json() -> None:
    handle = KernelHandle("python", "/work", 42, {"shell": 20001, "iopub": 20002}, "k" * 64,
                          "/tmp/.stockade-kernel-x.json")  # fmt: skip
    assert KernelHandle.from_json(json.loads(json.dumps(handle.to_json()))) == handle
    assert handle.to_json()["workdir"] == "/work" and "cwd" not in handle.to_json()


def test_a_kernel_handle_saved_by_an_older_server_loads() -> None:
    """Servers before the rename saved the working directory as "cwd"."""
    saved = {"language": "bash", "cwd": "/srv", "pid": 7, "ports": {"shell": 1},
             "key": "k", "conn_path": "/tmp/c.json"}  # fmt: skip
    assert KernelHandle.from_json(saved).workdir == "/srv"
    assert KernelHandle.from_json({**saved, "cwd": None}).workdir is None
    assert saved_workdir({"workdir": "/new", "cwd": "/old"}) == "/new"
    assert saved_workdir({}) is None
