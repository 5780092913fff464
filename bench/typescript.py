"""The TypeScript SDK (sdk/typescript) against the Python SDK, on the same server, in turns.

A node worker (sdk/typescript/bench/worker.mjs) times each operation inside node and
answers one line per request, so node's start-up is never timed and each TypeScript run
alternates with a Python run: drift on a noisy host falls on both alike.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from stockade import Sandbox

from .server import Server

Row = tuple[str, list[float], list[float], str]

SDK = Path(__file__).resolve().parents[1] / "sdk" / "typescript"
WARMUP = 2


class _Worker:
    def __init__(self, server: Server) -> None:
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            raise SystemExit("bench --only typescript needs node >= 20 and npm (scripts/setup.sh)")
        if not (SDK / "node_modules").is_dir():
            subprocess.run([npm, "ci", "--prefer-offline"], cwd=SDK, check=True)
        subprocess.run([npm, "run", "build"], cwd=SDK, check=True, capture_output=True)
        env = {"PATH": "/usr/bin:/bin", "STOCKADE_URL": server.url, "STOCKADE_TOKEN": server.token}
        self.proc = subprocess.Popen(
            [node, "bench/worker.mjs"], cwd=SDK, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip

    def ask(self, request: str) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline() or '{"error": "the worker exited"}')
        if "error" in answer:
            raise RuntimeError(f"TypeScript worker, {request!r}: {answer['error']}")
        return float(answer["seconds"])

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


def _turns(
    ts: Callable[[], float], py: Callable[[], object], runs: int
) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(WARMUP + runs):
        a = ts()
        t0 = time.perf_counter()
        py()
        b = time.perf_counter() - t0
        if i >= WARMUP:
            ours.append(a)
            theirs.append(b)
    return ours, theirs


def typescript_rows(server: Server, image: str, runs: int) -> list[Row]:
    worker = _Worker(server)
    rows: list[Row] = []
    sb = Sandbox.create(image=image, timeout=600)
    try:
        ts, py = _turns(lambda: worker.ask(f"exec {sb.id}"), lambda: sb.exec("true").wait(), runs)
        rows.append(("TS SDK exec round trip (true)", ts, py, "Python SDK"))

        def py_create() -> None:
            new = Sandbox.create(image=image, timeout=120)
            p = new.exec("echo", "hi")
            assert p.stdout.readline() == "hi\n"
            p.wait()
            made.append(new)

        made: list[Sandbox] = []
        ts, py = _turns(lambda: worker.ask(f"create {image}"), py_create, runs)
        for new in made:
            new.terminate()
        rows.append(("TS SDK create → first output", ts, py, "Python SDK"))
    finally:
        sb.terminate()
        worker.close()
    return rows
