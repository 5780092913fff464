"""Where a cold start's time goes, and throughput under load, next to raw runsc.

The breakdown reads the ``Server-Timing`` header of ``POST /v1/sandboxes`` (stages: queue,
image, store, overlay, network, runsc, channel); "HTTP + SDK" is the client's time minus
the server's. Throughputs are whole bursts: creates from a warm pool, 200 concurrent cold
creates, 1000 concurrent execs over 50 sandboxes, each against raw runsc doing the same
work with the same concurrency.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from stockade import AsyncClient, AsyncSandbox, Sandbox

from .baseline import RawRunsc
from .server import Server

# (figure, operations, seconds, raw operations per second)
Rate = tuple[str, int, float, float]

_STAGES = ("queue", "image", "store", "overlay", "network", "runsc", "channel")


def _server_timing(header: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


def cold_start_breakdown(server: Server, raw: RawRunsc, image: str, runs: int) -> list[str]:
    """Median milliseconds per stage of a cold create → first output, and raw runsc's."""
    headers = {"Authorization": f"Bearer {server.token}"}
    spans: dict[str, list[float]] = {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
        for i in range(runs + 2):
            t0 = time.perf_counter()
            resp = http.post("/v1/sandboxes", json={"image": image, "timeout": 120})
            t1 = time.perf_counter()
            resp.raise_for_status()
            sb = Sandbox.from_id(resp.json()["id"])
            p = sb.exec("echo", "hi")
            assert p.stdout.readline() == "hi\n"
            t2 = time.perf_counter()
            p.wait()
            # Gone before the next one, as each raw sandbox below: sandboxes left running
            # keep waking the host, which would slow the later creates.
            sb.terminate()
            if i < 2:
                continue  # warm-up
            timing = _server_timing(resp.headers["server-timing"])
            server_total = timing.pop("total")
            for name, ms in timing.items():
                spans.setdefault(name, []).append(ms)
            spans.setdefault("API (rest of the request)", []).append(
                server_total - sum(timing.values())
            )
            spans.setdefault("HTTP + SDK", []).append((t1 - t0) * 1e3 - server_total)
            spans.setdefault("first exec → output", []).append((t2 - t1) * 1e3)
            spans.setdefault("total", []).append((t2 - t0) * 1e3)

    raw_run, raw_exec = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        sid = raw.start()
        raw_run.append((time.perf_counter() - t0) * 1e3)
        raw_exec.append(raw.first_output(sid, "echo", "hi") * 1e3)
        raw.delete(sid)

    order = [s for s in _STAGES if s in spans] + [s for s in spans if s not in _STAGES]
    lines = [f"\ncold start, stage by stage (median ms over {runs}; image {image!r})"]
    for name in order:
        lines.append(f"  {name:<28} {statistics.median(spans[name]):>8.1f}")
    lines.append(f"  {'raw: runsc run --detach':<28} {statistics.median(raw_run):>8.1f}")
    lines.append(f"  {'raw: runsc exec → output':<28} {statistics.median(raw_exec):>8.1f}")
    lines.append(
        f"  {'raw: total':<28} {statistics.median(raw_run) + statistics.median(raw_exec):>8.1f}"
    )
    return lines


def _burst(n: int, workers: int, fn: Callable[[int], object]) -> float:
    """Seconds for ``n`` calls of ``fn`` spread over ``workers`` threads."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, range(n)))
    return time.perf_counter() - t0


def _raw_create_rate(raw: RawRunsc, n: int, workers: int) -> float:
    ids: list[str] = []

    def one(_: int) -> None:
        sid = raw.start()
        raw.first_output(sid, "echo", "hi")
        ids.append(sid)

    seconds = _burst(n, workers, one)
    for sid in ids:
        raw.delete(sid)
    return n / seconds


def load_rates(server: Server, raw: RawRunsc, image: str) -> list[Rate]:
    rates: list[Rate] = []
    raw_create = _raw_create_rate(raw, 20, 4)

    # Creates from a warm pool: 20 ready, taken 4 at a time, each to its first output.
    server.set_pool(image, 20)
    server.wait_pools_full()
    taken: list[Sandbox] = []

    def pooled(_: int) -> None:
        sb = Sandbox.create(image=image, timeout=120)
        assert sb.exec("echo", "hi").stdout.readline() == "hi\n"
        taken.append(sb)

    seconds = _burst(20, 4, pooled)
    server.set_pool(image, 0)
    for sb in taken:
        sb.terminate()
    rates.append(("creates from a warm pool (20, 4 at once)", 20, seconds, raw_create))

    rates += asyncio.run(_async_rates(server, raw, image, raw_create))
    return rates


async def _async_rates(server: Server, raw: RawRunsc, image: str, raw_create: float) -> list[Rate]:
    rates: list[Rate] = []
    async with AsyncClient(server.url, server.token) as client:
        # 200 cold creates at once: queued by the server, none refused.
        t0 = time.perf_counter()
        sandboxes = await asyncio.gather(
            *(AsyncSandbox.create(image=image, memory=64, timeout=600, client=client)
              for _ in range(200))
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        rates.append(("200 concurrent cold creates", 200, seconds, raw_create))
        for sb in sandboxes[50:]:
            await sb.terminate()
        fifty = sandboxes[:50]

        # 1000 execs at once over 50 sandboxes, each output checked.
        async def one(i: int) -> None:
            r = await fifty[i % 50].run(["echo", str(i)])
            assert r.stdout == f"{i}\n", r

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(1000)))
        seconds = time.perf_counter() - t0
        for sb in fifty:
            await sb.terminate()

    ids = [raw.start() for _ in range(8)]
    try:
        t0 = time.perf_counter()
        await asyncio.to_thread(_burst, 200, 8, lambda i: raw.exec(ids[i % 8], "echo", str(i)))
        raw_exec = 200 / (time.perf_counter() - t0)
    finally:
        for sid in ids:
            raw.delete(sid)
    rates.append(("1000 concurrent execs over 50 sandboxes", 1000, seconds, raw_exec))
    return rates


def rate_lines(rates: list[Rate]) -> list[str]:
    head = f"{'throughput':<42} {'stockade /s':>11} {'raw /s':>8} {'ratio':>7}"
    lines = ["", head, "-" * len(head)]
    for name, n, seconds, raw_rate in rates:
        ours = n / seconds
        lines.append(f"{name:<42} {ours:>11.1f} {raw_rate:>8.1f} {ours / raw_rate:>6.2f}x")
    lines.append(
        "raw: creates are `runsc run --detach` + first exec output, 4 at once; execs are "
        "`runsc exec echo`, 8 at once over 8 sandboxes."
    )
    return lines
