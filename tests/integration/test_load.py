"""Bursts of work: every request succeeds, queued if need be, never failed for load."""

from __future__ import annotations

import asyncio

from stockade import AsyncClient, AsyncSandbox

from .conftest import LiveServer


async def test_a_burst_of_creates_and_execs_all_succeed(server: LiveServer) -> None:
    async with AsyncClient(server.url, server.token) as client:
        created = await asyncio.gather(
            *(AsyncSandbox.create(image="debian", memory=128, client=client) for _ in range(30)),
            return_exceptions=True,
        )
        sandboxes = [sb for sb in created if isinstance(sb, AsyncSandbox)]
        try:
            assert len(sandboxes) == 30, [e for e in created if not isinstance(e, AsyncSandbox)]
            results = await asyncio.gather(
                *(sb.run(["echo", f"{sb.id}-{i}"]) for sb in sandboxes for i in range(4))
            )
            expected = sorted(f"{sb.id}-{i}\n" for sb in sandboxes for i in range(4))
            assert sorted(r.stdout for r in results) == expected
        finally:
            await asyncio.gather(*(sb.terminate() for sb in sandboxes))


async def test_200_concurrent_cold_creates_all_succeed(server: LiveServer) -> None:
    """More creates than the host boots at once (no pool): queued, none refused or lost."""
    async with AsyncClient(server.url, server.token) as client:
        async with asyncio.timeout(300):  # ~35 s on 2 cores; a stall fails, never hangs
            created = await asyncio.gather(
                *(AsyncSandbox.create(image="debian", memory=64, timeout=600, client=client)
                  for _ in range(200)),
                return_exceptions=True,
            )  # fmt: skip
        sandboxes = [sb for sb in created if isinstance(sb, AsyncSandbox)]
        try:
            assert len(sandboxes) == 200, [e for e in created if not isinstance(e, AsyncSandbox)]
            assert len({sb.id for sb in sandboxes}) == 200
            # They run: a sample spread over the burst answers, each with its own name.
            sample = sandboxes[::10]
            results = await asyncio.gather(*(sb.run(["hostname"]) for sb in sample))
            assert [r.stdout for r in results] == [f"{sb.id}\n" for sb in sample]
        finally:
            await asyncio.gather(*(sb.terminate() for sb in sandboxes), return_exceptions=True)


async def test_1000_concurrent_execs_over_50_sandboxes_all_complete(server: LiveServer) -> None:
    async with AsyncClient(server.url, server.token) as client:
        sandboxes = list(
            await asyncio.gather(
                *(AsyncSandbox.create(image="debian", memory=64, timeout=600, client=client)
                  for _ in range(50))
            )
        )  # fmt: skip
        try:

            async def one(i: int) -> tuple[int, str, str, int]:
                sb = sandboxes[i % len(sandboxes)]
                script = (
                    f'echo "out {i} $(cat /proc/sys/kernel/hostname)"; echo "err {i}" >&2; '
                    f"exit {i % 7}"
                )
                if i % 2:  # half over the WebSocket, half over HTTP
                    proc = await sb.exec("sh", "-c", script)
                    code = await proc.wait()
                    return code, await proc.stdout.read(), await proc.stderr.read(), i
                r = await sb.run(["sh", "-c", script])
                return r.exit_code, r.stdout, r.stderr, i

            results = await asyncio.gather(*(one(i) for i in range(1000)))
            for code, out, err, i in results:
                sb = sandboxes[i % len(sandboxes)]
                assert (code, out, err) == (i % 7, f"out {i} {sb.id}\n", f"err {i}\n"), i
        finally:
            await asyncio.gather(*(sb.terminate() for sb in sandboxes), return_exceptions=True)
