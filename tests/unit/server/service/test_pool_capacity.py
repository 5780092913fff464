"""Warm pools count against the host's capacity: they stop filling when it is full and
give their sandboxes back when a create needs the room (service/pools.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from stockade.server.service.pools import PoolManager, PoolSpec
from stockade.server.service.sandboxes import CreateRequest, SandboxService
from stockade.server.state.records import SandboxRecord, SandboxStatus


class _Store:
    def __init__(self) -> None:
        self.records: dict[str, SandboxRecord] = {}

    async def list_sandboxes(self, status: str | None = None) -> list[SandboxRecord]:
        return [r for r in self.records.values() if status is None or r.status == status]


class _Sandboxes:
    """Just what PoolManager uses of SandboxService, keeping records in memory."""

    def __init__(self) -> None:
        self.store = _Store()
        self.terminated: list[str] = []
        self._n = 0

    def add(self, status: str, memory: int) -> str:
        self._n += 1
        sid = f"sb-{self._n}"
        self.store.records[sid] = SandboxRecord(
            id=sid, image="debian", cpu=1.0, memory=memory, disk=1024, timeout=0,
            status=SandboxStatus(status),
        )
        return sid

    async def create_pooled(self, image: str, cpu: float, memory: int, disk: int) -> str:
        return self.add("pooled", memory)

    async def terminate(self, sandbox_id: str, *, reason: str = "terminated") -> Any:
        self.terminated.append(sandbox_id)
        self.store.records[sandbox_id].status = SandboxStatus.TERMINATED

    async def hand_out_pooled(self, sandbox_id: str, req: CreateRequest) -> SandboxRecord | None:
        record = self.store.records[sandbox_id]
        record.status = SandboxStatus.RUNNING
        return record


def _request(memory: int) -> CreateRequest:
    return CreateRequest(
        image="debian", cpu=1.0, memory=memory, disk=1024, timeout=60, env={}, workdir=None,
        tags={}, entrypoint=None,
    )  # fmt: skip


async def _settle(pools: PoolManager, sandboxes: _Sandboxes, ready: int) -> None:
    for _ in range(200):
        if len(await sandboxes.store.list_sandboxes("pooled")) == ready:
            await asyncio.sleep(0.02)  # and it stays there
            if len(await sandboxes.store.list_sandboxes("pooled")) == ready:
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the pool never settled at {ready} ready")


async def test_the_pool_fills_only_while_the_host_has_room() -> None:
    sandboxes = _Sandboxes()
    pools = PoolManager(cast(SandboxService, sandboxes), [PoolSpec("debian", 10, memory=100)])
    pools.capacity_mib = 1000
    sandboxes.add("running", 650)  # a user's sandbox: room is left for three pooled ones
    await pools.start()
    try:
        await _settle(pools, sandboxes, 3)
        assert pools.status()[0]["ready"] == 3
    finally:
        await pools.stop()


async def test_a_create_that_needs_the_room_shrinks_the_pool() -> None:
    sandboxes = _Sandboxes()
    pools = PoolManager(cast(SandboxService, sandboxes), [PoolSpec("debian", 4, memory=100)])
    pools.capacity_mib = 1000
    sandboxes.add("running", 500)
    await pools.start()
    try:
        await _settle(pools, sandboxes, 4)  # 900 of 1000 committed
        await pools.make_room(250)  # a cold create of another shape needs 250
        assert len(sandboxes.terminated) == 2  # 700 + 250 fits; 800 + 250 would not
        assert await sandboxes.store.list_sandboxes("pooled") == [
            r for r in sandboxes.store.records.values() if r.status == "pooled"
        ]
        # A create of the pool's own shape takes a ready one instead of starting cold.
        taken = await pools.take(_request(100))
        assert taken is not None and taken.status == "running"
    finally:
        await pools.stop()
