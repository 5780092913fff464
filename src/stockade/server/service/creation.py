"""How a new sandbox comes to be: restored from a memory snapshot, handed out by a warm
pool, or booted cold; with room made in the pools for whatever must start anew, and a
code kernel started ahead in what did not come from a snapshot."""

from __future__ import annotations

from ..state.records import SandboxRecord
from .code.service import CodeService
from .pools import PoolManager
from .sandboxes import CreateRequest, SandboxService
from .snapshots import SnapshotService
from .stages import stage

__all__ = ["Creator"]


class Creator:
    """Makes the sandbox a create call asks for, the fastest way that gives the same one."""

    def __init__(
        self,
        sandboxes: SandboxService,
        pools: PoolManager,
        snapshots: SnapshotService,
        code: CodeService,
    ) -> None:
        self.sandboxes = sandboxes
        self.pools = pools
        self.snapshots = snapshots
        self.code = code

    async def create(self, req: CreateRequest, *, snapshot: str | None = None) -> SandboxRecord:
        """A new sandbox for ``req`` (checked and resolved by the caller), or restored from
        ``snapshot`` with ``req``'s settings."""
        if snapshot is not None:
            # Restored processes carry on: no kernel to prewarm, no pool to take from.
            await self.pools.make_room(req.memory)
            return await self.snapshots.restore(snapshot, req)
        with stage("pool"):
            record = await self.pools.take(req)
        if record is None:
            await self.pools.make_room(req.memory)
            record = await self.sandboxes.create(req)
        self.code.prewarm(record.id, record.image, record.tenant)
        return record
