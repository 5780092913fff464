"""Snapshots: memory snapshots (``sn-…``), forks, and filesystem snapshots as images.

A memory snapshot is a directory ``<data>/snapshots/<sn-id>/`` holding runsc's checkpoint
(``checkpoint/``) and a copy of the sandbox's writes (``upper/``), plus a record in the
store. Both are taken while the sandbox is frozen, so memory and files agree, and the
sandbox then runs on. The directory is filled under a temporary name and renamed into
place before the record is written: a record always means a whole snapshot, and
:meth:`SnapshotService.start` removes whatever a crash left half-written.

A filesystem snapshot is the sandbox's writes turned into an image layer on top of its
image's layers: a built image like any other, named ``<sandbox id>:fs-<ms>`` unless the
caller names it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from ...errors import ConflictError, InvalidArgumentError, NotFoundError
from ..config import ServerConfig
from ..failpoints import failpoint
from ..images.built import BuiltImage, tree_size, write_json_atomic
from ..images.catalog import ImageCatalog
from ..images.tags import parse_tag
from ..network.policy import NetworkPolicy
from ..state.ids import new_id
from ..state.records import SandboxRecord, SandboxStatus, SnapshotRecord
from ..state.store import Store
from .quotas import Quotas
from .sandboxes import Checkpoint, CreateRequest, SandboxService

__all__ = ["MAX_FORKS", "SnapshotService", "check_fork_count"]

log = logging.getLogger(__name__)

MAX_FORKS = 32
_MIB = 1024 * 1024


def check_fork_count(count: int) -> None:
    if not 1 <= count <= MAX_FORKS:
        raise InvalidArgumentError(f"count must be between 1 and {MAX_FORKS}, got {count}")


class KernelContexts(Protocol):
    """The code service as snapshots see it (CodeService, wired in by the app): the
    sandbox's code contexts that a snapshot keeps, and how a restored sandbox takes them
    back. Reached through this seam, not an import: the code service sits beside
    snapshots in the service layer, and neither needs the other's module."""

    def saved(self, sandbox_id: str) -> list[dict[str, Any]]: ...

    async def take_contexts(self, sandbox_id: str, saved: list[dict[str, Any]]) -> None: ...


class SnapshotService:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        sandboxes: SandboxService,
        images: ImageCatalog,
        code: KernelContexts | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        self.config = config
        self.code = code
        self.quotas = quotas or Quotas(store)
        self.store = store
        self.sandboxes = sandboxes
        self.images = images
        self.root = config.snapshots_dir
        self.root.mkdir(parents=True, exist_ok=True)
        # A snapshot being restored from is not deleted under the restore's feet.
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, snapshot_id: str) -> asyncio.Lock:
        return self._locks.setdefault(snapshot_id, asyncio.Lock())

    async def start(self) -> None:
        """Remove what a crash mid-snapshot left: temporary and unrecorded directories."""
        recorded = {s.id for s in await self.store.list_snapshots()}
        for entry in await asyncio.to_thread(lambda: list(self.root.iterdir())):
            if entry.name not in recorded:
                log.warning("removing incomplete snapshot directory %s", entry.name)
                await asyncio.to_thread(shutil.rmtree, entry, True)

    # ---------------------------------------------------------------- lookups

    async def get(self, snapshot_id: str) -> SnapshotRecord:
        record = await self.store.get_snapshot(snapshot_id)
        if record is None:
            raise NotFoundError(
                f"snapshot {snapshot_id} does not exist; `stockade snapshot ls` lists them"
            )
        return record

    async def get_owned(self, snapshot_id: str, tenant: str) -> SnapshotRecord:
        """The snapshot if ``tenant`` owns it; another tenant's answers as a missing one."""
        record = await self.store.get_snapshot(snapshot_id)
        if record is None or record.tenant != tenant:
            raise NotFoundError(
                f"snapshot {snapshot_id} does not exist; `stockade snapshot ls` lists them"
            )
        return record

    async def list(self, sandbox_id: str | None = None) -> list[SnapshotRecord]:
        records = await self.store.list_snapshots()
        return [r for r in records if sandbox_id is None or r.sandbox_id == sandbox_id]

    async def files_dir(self, snapshot_id: str) -> Path:
        """The sandbox's writes as the snapshot saw them (for "what changed since")."""
        await self.get(snapshot_id)
        return self.root / snapshot_id / "upper"

    async def layers_in_use(self) -> set[Path]:
        """The image layers that snapshots and paused sandboxes will mount again."""
        records = [s.source() for s in await self.store.list_snapshots()]
        records += await self.store.list_sandboxes(SandboxStatus.PAUSED)
        return {Path(p) for r in records for p in r.layers}

    # ----------------------------------------------------------- memory snapshots

    async def create(self, sandbox_id: str, name: str | None = None) -> SnapshotRecord:
        """Capture a running sandbox's memory and files; it runs on. Counted against its
        tenant's ``max_disk``: refused before when the tenant is at it, deleted after when
        it takes the tenant past it."""
        what = f"a snapshot of {sandbox_id}"
        await self.quotas.disk_room((await self.sandboxes.get(sandbox_id)).tenant, what)
        snapshot_id = new_id("sn")
        tmp = self.root / f".tmp-{snapshot_id}"
        tmp.mkdir()
        contexts = self._contexts(sandbox_id)
        try:
            source = await self.sandboxes.checkpoint_to(sandbox_id, tmp)
            size = await asyncio.to_thread(tree_size, [tmp])
            await asyncio.to_thread(os.rename, tmp, self.root / snapshot_id)
            failpoint("snapshot.before-record")
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise
        record = SnapshotRecord(
            id=snapshot_id, sandbox_id=sandbox_id, created_at=time.time(), size=size,
            sandbox=json.loads(source.to_json()), name=name, contexts=contexts,
            tenant=source.tenant,
        )  # fmt: skip
        try:
            async with self.quotas.storing(source.tenant, size / _MIB, what):
                await self.store.put_snapshot(record)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, self.root / snapshot_id, True)
            raise
        log.info("snapshot %s of %s: %d bytes", snapshot_id, sandbox_id, size)
        return record

    async def delete(self, snapshot_id: str) -> None:
        async with self._lock(snapshot_id):
            await self.get(snapshot_id)
            # The record goes first: a crash between the two leaves an unrecorded directory,
            # which start() removes, never a record without its files.
            await self.store.delete_snapshot(snapshot_id)
            await asyncio.to_thread(shutil.rmtree, self.root / snapshot_id, True)
        self._locks.pop(snapshot_id, None)

    async def restore(self, snapshot_id: str, req: CreateRequest) -> SandboxRecord:
        """A new sandbox from a snapshot; its processes carry on where they were."""
        async with self._lock(snapshot_id):
            snap = await self.get(snapshot_id)
            source = snap.source()
            for path, volume_id in source.volumes.items():
                if not await asyncio.to_thread(self.config.volume_mount(volume_id).is_dir):
                    raise ConflictError(
                        f"snapshot {snapshot_id} mounts volume {volume_id} at {path}, which "
                        "was deleted since; it cannot be restored"
                    )
            saved = self.root / snapshot_id
            restored = await self.sandboxes.restore(
                source, Checkpoint(saved / "checkpoint", saved / "upper"), req
            )
        return await self._mark_origin(restored, snapshot_id)

    async def _mark_origin(self, record: SandboxRecord, snapshot_id: str) -> SandboxRecord:
        record.snapshot = snapshot_id
        await self.store.put_sandbox(record)
        snap = await self.store.get_snapshot(snapshot_id)
        if self.code is not None and snap is not None:
            await self.code.take_contexts(record.id, snap.contexts)
        return record

    def _contexts(self, sandbox_id: str) -> builtins.list[dict[str, Any]]:
        return self.code.saved(sandbox_id) if self.code is not None else []

    async def fork(
        self, sandbox_id: str, count: int, *, ids: Sequence[str] | None = None
    ) -> builtins.list[SandboxRecord]:
        """``count`` independent sandboxes from one capture of a running sandbox, each with
        the source's tags, limits and lifetimes; the source runs on. ``ids``: theirs,
        chosen ahead (Creator.fork, for the quotas); None: new ones."""
        check_fork_count(count)
        if ids is not None and len(ids) != count:
            raise ValueError(f"{len(ids)} IDs for {count} forks")
        tmp = self.root / f".tmp-{new_id('fork')}"
        tmp.mkdir()
        contexts = self._contexts(sandbox_id)
        try:
            source = await self.sandboxes.checkpoint_to(sandbox_id, tmp)
            req = _request_like(source)
            saved = Checkpoint(tmp / "checkpoint", tmp / "upper")
            failpoint("fork.after-checkpoint")
            requests = [req] * count if ids is None else [replace(req, sandbox_id=i) for i in ids]
            results = await asyncio.gather(
                *(self.sandboxes.restore(source, saved, r) for r in requests),
                return_exceptions=True,
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
        forks = [r for r in results if isinstance(r, SandboxRecord)]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # All or nothing: a caller asking for n forks gets n, or an error and none.
            for r in forks:
                with contextlib.suppress(Exception):
                    await self.sandboxes.terminate(r.id)
            raise failed[0]
        for r in forks:
            if self.code is not None:
                await self.code.take_contexts(r.id, contexts)
        return forks

    # ------------------------------------------------------- filesystem snapshots

    async def filesystem(self, sandbox_id: str, name: str | None = None) -> tuple[BuiltImage, str]:
        """The sandbox's files as a new image (its writes as a layer on its image's
        layers), tagged ``name`` or ``<sandbox id>:fs-<ms>``; returns the image and name."""
        if name is not None:
            parse_tag(name)  # a bad name fails before any work
        key = hashlib.sha256(f"fs-snapshot:{sandbox_id}:{time.time_ns()}".encode()).hexdigest()
        layer = self.images.layers.root / f"build-{key}"
        tmp = self.images.layers.root / ".tmp" / f"build-{key}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            async with self.sandboxes.frozen(sandbox_id) as (record, rootfs):
                await rootfs.copy_upper(tmp)
            await asyncio.to_thread(os.rename, tmp, layer)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
        image = await self._image_over(record, key, layer)
        builds = self.images.builds
        builds.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(write_json_atomic, builds / f"{key}.json", image.to_json())
        tagged = name or f"{sandbox_id}:fs-{int(time.time() * 1000)}"
        self.images.tags.set(tagged, image.id, record.tenant)
        return image, tagged

    async def _image_over(self, record: SandboxRecord, key: str, layer: Path) -> BuiltImage:
        """The new image's config is its source image's (the sandbox's env as the default
        when that image is gone)."""
        lowerdirs = [layer, *(Path(p) for p in record.layers)]
        image = BuiltImage(
            key, lowerdirs, dict(record.env), record.workdir, user=record.user,
            tenant=record.tenant,
        )  # fmt: skip
        built = self.images.built(record.image, record.tenant)
        if built is not None:
            image.entrypoint, image.cmd = built.entrypoint, built.cmd
        image.created_at = time.time()
        image.size = await asyncio.to_thread(tree_size, lowerdirs)
        return image


def _request_like(source: SandboxRecord) -> CreateRequest:
    """A create request with the source's own settings (a fork's)."""
    return CreateRequest(
        image=source.image, cpu=source.cpu, memory=source.memory, disk=source.disk,
        timeout=source.timeout, env=source.env, workdir=source.workdir, tags=source.tags,
        entrypoint=source.entrypoint,
        policy=NetworkPolicy.from_dict(source.network.policy if source.network else {}),
        ports=[(p.port, p.public) for p in source.ports],
        volumes=source.volumes, idle_timeout=source.idle_timeout,
        on_timeout=source.on_timeout, auto_resume=source.auto_resume, tenant=source.tenant,
    )  # fmt: skip
