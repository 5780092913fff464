"""How a new sandbox comes to be: restored from a memory snapshot, handed out by a warm
pool, booted cold, or forked from a running one; let in by the tenant's quotas first,
with room made in the pools for whatever must start anew, and a code kernel started
ahead in what did not come from a snapshot."""

from __future__ import annotations

from ..state.records import SandboxRecord
from .code.service import CodeService
from .names import Names
from .pools import PoolManager
from .quotas import Quotas
from .sandboxes import CreateRequest, SandboxService
from .snapshots import SnapshotService, check_fork_count
from .stages import stage

__all__ = ["Creator"]


class Creator:
    """Makes the sandbox a create call asks for, the fastest way that gives the same one.

    Every way counts against the tenant's quotas alike, checked before anything starts:
    a pooled sandbox handed out is a create as a cold one is.
    """

    def __init__(
        self,
        sandboxes: SandboxService,
        pools: PoolManager,
        snapshots: SnapshotService,
        code: CodeService,
        quotas: Quotas | None = None,
    ) -> None:
        self.sandboxes = sandboxes
        self.pools = pools
        self.snapshots = snapshots
        self.code = code
        self.quotas = quotas or Quotas()
        self.names = Names(lambda: sandboxes.store)

    async def create(self, req: CreateRequest, *, snapshot: str | None = None) -> SandboxRecord:
        """A new sandbox for ``req`` (checked and resolved by the caller), or restored from
        ``snapshot`` with ``req``'s settings."""
        # A named create holds its name until its record is stored (names.py).
        async with self.names.claim(req.tenant, req.name):
            if snapshot is not None:
                return await self._restore(req, snapshot)
            admit = self.quotas.admit(
                req.tenant, cpu=req.cpu, memory=req.memory, timeout=req.timeout
            )
            async with admit as admitted:
                req = admitted.request(req)
                with stage("pool"):
                    record = await self.pools.take(req, picked=admitted.claim)
                if record is not None and req.user is not None:
                    # A pooled sandbox started as root: the caller's user applies now.
                    record = await self.sandboxes.take_user(record, req.user)
                elif record is None:
                    await self.pools.make_room(req.memory)
                    record = await self.sandboxes.create(req)
        self.code.prewarm(record.id, record.image, record.tenant)
        return record

    async def _restore(self, req: CreateRequest, snapshot: str) -> SandboxRecord:
        # A restore keeps its source's limits: those are what it counts.
        source = (await self.snapshots.get(snapshot)).source()
        admit = self.quotas.admit(
            req.tenant, cpu=source.cpu, memory=source.memory, timeout=req.timeout
        )
        async with admit as admitted:
            # Restored processes carry on: no kernel to prewarm, no pool to take from.
            await self.pools.make_room(source.memory)
            return await self.snapshots.restore(snapshot, admitted.request(req))

    async def fork(self, sandbox_id: str, count: int) -> list[SandboxRecord]:
        """``count`` forks of a running sandbox (SnapshotService.fork), its tenant's."""
        check_fork_count(count)
        source = await self.sandboxes.get(sandbox_id)
        admit = self.quotas.admit(
            source.tenant, count=count, cpu=source.cpu, memory=source.memory,
            timeout=source.timeout,
        )  # fmt: skip
        async with admit as admitted:
            # Forks are new sandboxes: warm-pool ones give way to them as to any create.
            await self.pools.make_room(source.memory * count)
            return await self.snapshots.fork(sandbox_id, count, ids=admitted.ids)
