"""What the bounds on sandbox-fed buffers cost: the exec round trip and a 100 MiB file
transfer on this tree's server and on the server from before the bounds, in one run.

The earlier server runs from a git worktree of ``BEFORE`` (the last commit without the
bounds), with the same virtualenv and cache; each builds its own agent from its own source.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from stockade import Client, Sandbox

from .server import Server

# The last commit of main before the server bounded what sandboxes feed it.
BEFORE = "6b0e2bb"
MiB = 1024 * 1024
_REPO = Path(__file__).resolve().parents[1]

Row = tuple[str, list[float], list[float], str]
Timer = Callable[[Callable[[], object], int], list[float]]


def _measure(server: Server, image: str, runs: int, time: Timer) -> tuple[list[float], ...]:
    payload = os.urandom(100 * MiB)
    with Client(server.url, server.token, timeout=600) as client:
        sb = Sandbox.create(image=image, timeout=900, disk=2048, client=client)
        try:

            def transfer() -> None:
                sb.files.write("/tmp/bench.bin", payload)
                assert len(sb.files.read_bytes("/tmp/bench.bin")) == len(payload)

            exec_times = time(lambda: sb.exec("true").wait(), runs)
            file_times = time(transfer, max(3, runs // 4))
        finally:
            sb.terminate()
    return exec_times, file_times


def bounds_rows(work: Path, image: str, runs: int, time: Timer) -> list[Row]:
    """Rows "after" (this tree) against "before" (``BEFORE``), measured alternately so
    that the machine's noise falls on both alike."""
    tree = work / "before-tree"
    made = subprocess.run(
        ["git", "-C", str(_REPO), "worktree", "add", "--detach", str(tree), BEFORE],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if made.returncode != 0:
        print(f"bounds: no worktree of {BEFORE} ({made.stderr.strip()}); rows left out")
        return []
    (work / "before").mkdir()
    (work / "after").mkdir()
    old_env = {"PYTHONPATH": str(tree / "src")}
    before = Server(work / "before", port_offset=40, env=old_env)
    after = Server(work / "after", port_offset=41)
    try:
        b1, bf1 = _measure(before, image, runs // 2, time)
        a1, af1 = _measure(after, image, runs // 2, time)
        b2, bf2 = _measure(before, image, runs - runs // 2, time)
        a2, af2 = _measure(after, image, runs - runs // 2, time)
    finally:
        before.stop()
        after.stop()
        subprocess.run(["git", "-C", str(_REPO), "worktree", "remove", "--force", str(tree)],
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(tree, ignore_errors=True)
    return [
        ("bounds: exec round trip true", a1 + a2, b1 + b2, "before"),
        ("bounds: 100 MiB write + read", af1 + af2, bf1 + bf2, "before"),
    ]
