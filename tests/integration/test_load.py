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
