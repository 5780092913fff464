"""Warm pools: sandboxes started ahead of time, handed out on create.

A pool keeps ``size`` sandboxes of one image and resource shape running with status
``pooled``. A create that asks for exactly that image and shape, without an entrypoint,
takes one: its record gets the caller's env, tags, workdir and timeout at that moment, so
the caller cannot tell it from a cold start except by the time it took. A pooled sandbox
is used once: nobody has run anything in it before it is handed out, and it is never
returned to the pool. The pool refills in the background, one sandbox at a time so that
refilling never starves the host's two cores of the requests it is serving.

Pooled sandboxes count against the host's capacity like any other: the pool only fills
while the memory committed to live sandboxes stays under :data:`COMMIT_LIMIT` of the
host's memory, and gives its sandboxes back when a create needs the room.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import InvalidArgumentError
from ..state.records import ALIVE, EndReason, SandboxRecord, SandboxStatus
from .sandboxes import CreateRequest, SandboxService
from .spec import SandboxSpec

__all__ = ["COMMIT_LIMIT", "PoolManager", "PoolSpec", "parse_pool_specs"]

log = logging.getLogger(__name__)

# Fraction of host memory that sandboxes' limits may add up to before pools stop filling.
COMMIT_LIMIT = 0.9
MAX_POOL_SIZE = 64


@dataclass
class PoolSpec:
    """One pool: its image, how many sandboxes to keep ready, and their shape."""

    image: str
    size: int
    cpu: float = SandboxSpec.cpu
    memory: int = SandboxSpec.memory
    disk: int = SandboxSpec.disk

    def matches(self, req: CreateRequest) -> bool:
        return (
            req.image == self.image
            and req.entrypoint is None
            and not req.image_entrypoint
            and not req.volumes  # mounts are fixed when a sandbox boots
            and (req.cpu, req.memory, req.disk) == (self.cpu, self.memory, self.disk)
        )


def parse_pool_specs(text: str) -> list[PoolSpec]:
    """``"python=4,debian=2"`` (the --pool flag and STOCKADE_POOLS) into specs."""
    specs: list[PoolSpec] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        image, sep, count = part.partition("=")
        if not sep or not image or not count.isdigit():
            raise InvalidArgumentError(f"pool {part!r} must look like IMAGE=COUNT, e.g. python=4")
        specs.append(PoolSpec(image=image, size=int(count)))
    return specs


def _host_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


class PoolManager:
    """Keeps the pools filled and hands their sandboxes out. Use from the event loop."""

    def __init__(self, sandboxes: SandboxService, specs: list[PoolSpec]) -> None:
        self.sandboxes = sandboxes
        self.specs: dict[str, PoolSpec] = {s.image: s for s in specs}
        self._ready: dict[str, collections.deque[str]] = collections.defaultdict(collections.deque)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.capacity_mib = int(_host_memory_mib() * COMMIT_LIMIT)

    async def start(self) -> None:
        # Sandboxes pooled by an earlier server are still fresh: nobody ever had them.
        for record in await self.sandboxes.store.list_sandboxes(SandboxStatus.POOLED):
            spec = self.specs.get(record.image)
            if spec is not None and _shape(record) == (spec.cpu, spec.memory, spec.disk):
                self._ready[record.image].append(record.id)
            else:
                await self.sandboxes.terminate(record.id, reason=EndReason.TERMINATED)
        self._task = asyncio.create_task(self._fill_loop(), name="pool-fill")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def set_size(self, spec: PoolSpec) -> None:
        if not 0 <= spec.size <= MAX_POOL_SIZE:
            raise InvalidArgumentError(
                f"size={spec.size} is out of range; allowed: 0–{MAX_POOL_SIZE}"
            )
        self.specs[spec.image] = spec
        self._wake.set()

    def status(self) -> list[dict[str, object]]:
        return [
            {"image": s.image, "size": s.size, "ready": len(self._ready[s.image]),
             "cpu": s.cpu, "memory": s.memory, "disk": s.disk}
            for s in sorted(self.specs.values(), key=lambda s: s.image)
        ]  # fmt: skip

    async def take(
        self, req: CreateRequest, *, picked: Callable[[str], object] | None = None
    ) -> SandboxRecord | None:
        """A pooled sandbox handed out for ``req``, or None when no pool fits or none is
        ready. ``picked`` is told the ID of each one before it is handed out (the quotas
        count the create by it from then)."""
        spec = self.specs.get(req.image)
        if spec is None or not spec.matches(req):
            return None
        ready = self._ready[req.image]
        while ready:
            sandbox_id = ready.popleft()
            if picked is not None:
                picked(sandbox_id)
            record = await self.sandboxes.hand_out_pooled(sandbox_id, req)
            self._wake.set()
            if record is not None:
                return record
        return None

    async def make_room(self, memory: int) -> None:
        """Give pooled sandboxes back until ``memory`` MiB more fit under the capacity."""
        if not any(self._ready.values()):
            return  # nothing to give back: no reason to add a query to every cold create
        while await self._committed() + memory > self.capacity_mib:
            victim = next((q.pop() for q in self._ready.values() if q), None)
            if victim is None:
                return
            await self.sandboxes.terminate(victim, reason=EndReason.TERMINATED)

    async def _committed(self) -> int:
        # Per alive status: ended sandboxes pile up in the store and must not cost a scan.
        total = 0
        for status in sorted(ALIVE):
            total += sum(r.memory for r in await self.sandboxes.store.list_sandboxes(status))
        return total

    async def _fill_loop(self) -> None:
        while True:
            self._wake.clear()
            for spec in list(self.specs.values()):
                ready = self._ready[spec.image]
                # Shrink first (a lowered size), then grow one at a time.
                while len(ready) > spec.size:
                    await self.sandboxes.terminate(ready.pop(), reason=EndReason.TERMINATED)
                if len(ready) < spec.size:
                    if await self._committed() + spec.memory > self.capacity_mib:
                        continue  # the host is full: the pool waits for room
                    try:
                        sid = await self.sandboxes.create_pooled(
                            spec.image, spec.cpu, spec.memory, spec.disk
                        )
                    except Exception:
                        log.exception("filling the %s pool", spec.image)
                        await asyncio.sleep(5)
                        continue
                    ready.append(sid)
                    self._wake.set()  # keep going until every pool is full
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands
            # as the event is set, and stop() would then wait on this loop for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._wake.wait()


def _shape(record: SandboxRecord) -> tuple[float, int, int]:
    return (record.cpu, record.memory, record.disk)
