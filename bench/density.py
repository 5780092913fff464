"""``make bench-density``: how many idle sandboxes one host holds, and what they cost.

Starts its own server, creates ``--count`` idle sandboxes (8 at a time), then reports the
host memory and CPU per idle sandbox, the API's latency while they all run, and the exec
round trip into a sample of them. Everything it made is removed at the end, even on
failure. ``--doze-after 0`` measures the sandboxes without dozing (service/doze.py).

    python -m bench.density [--count 300] [--memory 128] [--doze-after 10]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from stockade import AsyncClient, AsyncSandbox

from .server import Server


def _available_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _cpu_seconds(ids: list[str]) -> float:
    """Host CPU time the sandboxes' cgroups have used so far (sentry, gofer, stubs)."""
    total = 0
    for sid in ids:
        try:
            total += int(Path(f"/sys/fs/cgroup/cpuacct/stockade/{sid}/cpuacct.usage").read_text())
        except (OSError, ValueError):
            continue
    return total / 1e9


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def _run(count: int, memory: int, doze_after: float, server: Server) -> None:
    gate = asyncio.Semaphore(8)
    sandboxes: list[AsyncSandbox] = []
    failures: list[BaseException] = []
    async with AsyncClient(server.url, server.token, timeout=300) as client:

        async def make() -> None:
            async with gate:
                try:
                    sandboxes.append(
                        await AsyncSandbox.create(
                            image="debian", memory=memory, timeout=7200, client=client
                        )
                    )
                    if len(sandboxes) % 50 == 0:
                        print(f"  {len(sandboxes)} running after {time.perf_counter() - t0:.0f} s")
                except Exception as exc:
                    failures.append(exc)

        before = _available_mib()
        t0 = time.perf_counter()
        try:
            await asyncio.gather(*(make() for _ in range(count)))
            took = time.perf_counter() - t0
            # Let the sandboxes settle into idling, and doze if the server lets them.
            await asyncio.sleep(5 + (doze_after + 2 if doze_after > 0 else 0))
            per_sandbox = (before - _available_mib()) / max(1, len(sandboxes))
            ids = [sb.id for sb in sandboxes]
            cpu0, w0 = _cpu_seconds(ids), time.perf_counter()
            await asyncio.sleep(10)
            idle_cpu = (_cpu_seconds(ids) - cpu0) / (time.perf_counter() - w0)
            api: list[float] = []
            headers = {"Authorization": f"Bearer {server.token}"}
            async with httpx.AsyncClient(base_url=server.url, headers=headers) as http:
                for _ in range(200):
                    sb = random.choice(sandboxes)
                    t = time.perf_counter()
                    (await http.get(f"/v1/sandboxes/{sb.id}")).raise_for_status()
                    api.append(time.perf_counter() - t)
            execs: list[float] = []
            wrong = 0
            for sb in random.sample(sandboxes, min(30, len(sandboxes))):
                t = time.perf_counter()
                r = await sb.run(["echo", sb.id])
                execs.append(time.perf_counter() - t)
                wrong += r.stdout != f"{sb.id}\n"
        finally:
            await asyncio.gather(*(sb.terminate() for sb in sandboxes), return_exceptions=True)
    print(
        f"\nStockade density — {len(sandboxes)} of {count} idle sandboxes (memory={memory} MiB)\n"
    )
    first_failure = f": {failures[0]!r}" if failures else ""
    print(f"created in {took:.1f} s ({len(failures)} failed{first_failure})")
    print(f"host memory per idle sandbox: {per_sandbox:.1f} MiB")
    dozing = f"dozing after {doze_after:g} s" if doze_after > 0 else "never dozing"
    print(
        f"host CPU of all {len(sandboxes)} idle ({dozing}): {idle_cpu * 100:.1f}% of one core, "
        f"{idle_cpu * 100 / max(1, len(sandboxes)):.3f}% per sandbox"
    )
    print(
        f"API GET /v1/sandboxes/ID while all run: p50 {statistics.median(api) * 1e3:.1f} ms, "
        f"p99 {_pct(api, 0.99) * 1e3:.1f} ms"
    )
    print(
        f"exec `echo` into 30 of them: p50 {statistics.median(execs) * 1e3:.1f} ms, "
        f"p95 {_pct(execs, 0.95) * 1e3:.1f} ms, wrong outputs: {wrong}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--doze-after", type=float, default=10.0)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stockade-density-"))
    server = Server(work, extra_args=("--doze-after", str(args.doze_after)))
    try:
        asyncio.run(_run(args.count, args.memory, args.doze_after, server))
    finally:
        server.stop()
        runsc = [server.runsc(), f"--root={server.data / 'runsc'}"]
        listed = subprocess.run([*runsc, "list", "--quiet"], capture_output=True, text=True)
        for sid in listed.stdout.split():
            subprocess.run([*runsc, "delete", "--force", sid], capture_output=True)
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if line.split()[1].startswith(str(work))]
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
