"""``make bench``: Stockade's core figures next to raw runsc, measured in one run.

Starts its own server (temporary data directory, the machine's image cache), then for each
figure prints the median and p95 over ``--runs`` repetitions and the ratio Stockade/raw.
``--only code`` measures the code-interpreter figures alone (bench/code.py), ``--only
snapshots`` the snapshot, pause/resume and fork figures alone (bench/snapshots.py),
``--only load`` the cold-start breakdown and the throughputs under load (bench/load.py),
``--only bounds`` what the bounds on sandbox-fed buffers cost (bench/bounds.py), ``--only
access`` what a tenant's API key costs against the admin token, and the audit log against
none (bench/access.py), ``--only typescript`` the TypeScript SDK against the Python SDK
(bench/typescript.py), ``--only mcp`` an MCP run_code tool call (HTTP and stdio) against the
SDK's run_code (bench/mcp.py), ``--only files`` the watch event latency against raw inotify
and a signed-URL download against the API's (bench/files.py).

    python -m bench.run [--runs 20] [--only code|snapshots|load|bounds|access|typescript|mcp|files]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from stockade import Sandbox

from .access import access_rows, audit_rows
from .baseline import RawRunsc
from .bounds import bounds_rows
from .code import code_legend, code_rows
from .files import file_legend, file_rows
from .images import image_rows
from .load import Rate, cold_start_breakdown, load_rates, rate_lines
from .mcp import mcp_rows
from .network import network_rows
from .server import Server
from .snapshots import snapshot_legend, snapshot_rows
from .typescript import typescript_rows

MiB = 1024 * 1024
Row = tuple[str, list[float], list[float], str]


def _p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def _time(fn: Callable[[], object], runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _core_rows(server: Server, raw: RawRunsc, image: str, runs: int) -> list[Row]:
    """Create, exec and file figures of ``image`` against raw runsc on its rootfs."""
    rows: list[Row] = []
    payload = os.urandom(MiB)

    # 1. create → first output of `echo`, end to end through the SDK.
    def stockade_create() -> None:
        sb = Sandbox.create(image=image, timeout=120)
        p = sb.exec("echo", "hi")
        assert p.stdout.readline() == "hi\n"
        p.wait()
        created.append(sb)

    created: list[Sandbox] = []
    create_times = _time(stockade_create, runs)
    for sb in created:
        sb.terminate()
    created.clear()

    raw_ids: list[str] = []

    def raw_create() -> None:
        sid = raw.start()
        raw.first_output(sid, "echo", "hi")
        raw_ids.append(sid)

    raw_create_times = _time(raw_create, runs)
    for sid in raw_ids:
        raw.delete(sid)
    rows.append(("create → first output (echo)", create_times, raw_create_times, "raw"))

    # 1b. the same from a warm pool (refills happen between runs, outside the timing).
    server.set_pool(image, 2)
    warm: list[float] = []
    for i in range(runs + 2):
        server.wait_pools_full()
        t0 = time.perf_counter()
        stockade_create()
        if i >= 2:
            warm.append(time.perf_counter() - t0)
    for sb in created:
        sb.terminate()
    server.set_pool(image, 0)
    rows.append(("create → first output, warm pool", warm, raw_create_times, "raw"))

    # 2. exec round trip of `true`, and 3. a 1 MiB write + read.
    sb = Sandbox.create(image=image, timeout=600)
    sid = raw.start()
    try:
        ws_true = _time(lambda: sb.exec("true").wait(), runs)
        rows.append(
            (
                "exec round trip: true (WebSocket)",
                ws_true,
                _time(lambda: raw.exec(sid, "true"), runs),
                "raw",
            )
        )
        rows.append(
            (
                "exec round trip: true (HTTP NDJSON)",
                _time(lambda: sb.run(["true"]), runs),
                _time(lambda: raw.exec(sid, "true"), runs),
                "raw",
            )
        )
        floor = [raw.spawn_floor(sid) for _ in range(runs)]
        rows.append(("exec round trip: true vs gVisor spawn", ws_true, floor, "spawn floor"))

        def sdk_file() -> None:
            sb.files.write("/tmp/bench.bin", payload)
            assert len(sb.files.read_bytes("/tmp/bench.bin")) == MiB

        def raw_file() -> None:
            raw.exec(sid, "sh", "-c", "cat > /tmp/bench.bin", stdin=payload)
            assert len(raw.exec(sid, "cat", "/tmp/bench.bin")) == MiB

        rows.append(
            ("1 MiB file write + read", _time(sdk_file, runs), _time(raw_file, runs), "raw")
        )
    finally:
        sb.terminate()
        raw.delete(sid)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--image", default="debian")
    ap.add_argument(
        "--only",
        choices=["code", "snapshots", "load", "bounds", "access", "typescript", "mcp", "files"],
        help="measure this group of figures alone",
    )
    args = ap.parse_args()
    runs: int = args.runs
    work = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    server = Server(work)
    cache = Path(os.environ.get("STOCKADE_CACHE_DIR") or "/var/cache/stockade")
    raw = RawRunsc(server.runsc(), cache / "images" / args.image / "rootfs", work / "raw")
    rows: list[Row] = []
    breakdown: list[str] = []
    rates: list[Rate] = []
    try:
        if args.only in (None, "load"):
            breakdown = cold_start_breakdown(server, raw, args.image, runs)
            rates = load_rates(server, raw, args.image)
        if args.only is None:
            rows += _core_rows(server, raw, args.image, runs)
            rows += network_rows(work, runs, _time)
            rows += image_rows(runs, _time)
        if args.only in (None, "snapshots"):
            snap_raw = RawRunsc(
                server.runsc(), cache / "images" / "python" / "rootfs", work / "raw-snapshots"
            )
            rows += snapshot_rows(server, snap_raw, "python", runs)
        if args.only in (None, "code"):
            rows += code_rows(work, server.runsc(), cache, runs, _time)
        if args.only in (None, "bounds"):
            rows += bounds_rows(work, args.image, runs, _time)
        if args.only in (None, "access"):
            rows += access_rows(server, args.image, runs, _time)
            rows += audit_rows(work, server, args.image, runs, _time)
        if args.only in (None, "typescript"):
            rows += typescript_rows(server, args.image, runs)
        if args.only in (None, "mcp"):
            rows += mcp_rows(server, runs, _time)
        if args.only in (None, "files"):
            rows += file_rows(args.image, runs, _time)
    finally:
        server.stop()
        subprocess.run(["umount", "-R", "-l", str(work)], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)

    groups = {
        "code": "code interpreter",
        "snapshots": "snapshots, image 'python'",
        "load": f"load, image {args.image!r}",
        "bounds": f"the cost of the bounds, image {args.image!r}",
        "access": f"the cost of tenants, keys and the audit log, image {args.image!r}",
        "typescript": f"the TypeScript SDK against the Python SDK, image {args.image!r}",
        "mcp": "MCP tool calls against the SDK, image 'code-interpreter'",
        "files": f"file watch latency and signed-URL downloads, image {args.image!r}",
    }
    what = groups.get(args.only or "", f"{runs} runs each, image {args.image!r}")
    print(f"\nStockade vs raw runsc — {what} (times in ms, sizes in MB)\n")
    head = (
        f"{'figure':<38} {'stockade p50':>12} {'p95':>8} {'vs':>13} {'p50':>9} {'p95':>8} "
        f"{'ratio':>7}"
    )
    if rows:  # --only load has no rows of this table
        print(head)
        print("-" * len(head))
    for name, ours, theirs, against in rows:
        m, r = statistics.median(ours), statistics.median(theirs)
        unit = 1 if name.endswith("(MB)") else 1e3  # sizes come in MB, times in seconds
        print(
            f"{name:<38} {m * unit:>12.1f} {_p95(ours) * unit:>8.1f} {against:>13} "
            f"{r * unit:>9.1f} {_p95(theirs) * unit:>8.1f} {m / r:>6.2f}x"
        )
        if "100 MB" in name:
            print(f"{'':<38} {100 / m:>9.0f} MB/s {'':>22} {100 / r:>6.0f} MB/s")
    if args.only is None:
        print("\nraw = raw runsc: create is `runsc run --detach` + `runsc exec echo hi` to first")
        print("byte; exec is `runsc exec true`; file is `runsc exec` of cat with stdin / stdout.")
        print("spawn floor = fork + exec + wait of /bin/true inside a raw sandbox, timed in there:")
        print("every exec pays for making a process in gVisor, whatever carries it.")
        print("--no-network = the same create on a server whose sandboxes have no network;")
        print("direct = the same request from the host straight to the sandbox's address.")
        print("last changed = the same build with its last step changed (that step rebuilt);")
        print("base image = the same create from the 1 GB image's base, `debian`.")
    if args.only in (None, "bounds"):
        print("before = the same figure on the server of the last commit without bounds on")
        print("what sandboxes feed it (bench/bounds.py), measured in turns with this one.")
    if breakdown or rates:
        print("\n".join(breakdown + rate_lines(rates)))
    if args.only in (None, "snapshots"):
        print(snapshot_legend(runs))
    if args.only in (None, "code"):
        print(code_legend(runs))
    if args.only in (None, "files"):
        print(file_legend())


if __name__ == "__main__":
    main()
