"""Pause and resume: a running sandbox's memory saved to disk and brought back, and
checkpoints of a running one (snapshots, forks) taken while it is held still."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from ....errors import SandboxTerminatedError, ServerError, StockadeError
from ...failpoints import failpoint
from ...network.policy import NetworkPolicy
from ...runtime import cgroups
from ...runtime.rootfs import RootFS
from ...runtime.runsc import Runsc, RunscError
from ...state.records import SandboxRecord, SandboxStatus
from ...state.store import Store
from .exits import ExitWatcher
from .launch import Launcher
from .lifetimes import Lifetimes, resume_clock
from .live import LiveSandboxes
from .lookup import get, get_running

__all__ = ["Pauser"]

log = logging.getLogger(__name__)

Hook = Callable[[str], Awaitable[None]]


class Pauser:
    """Pauses, resumes and checkpoints sandboxes. Crash-safe: :func:`.reconcile.reconcile`
    finishes or undoes any of these that a crash cut short."""

    def __init__(
        self,
        store: Store,
        runtime: Runsc,
        launcher: Launcher,
        exits: ExitWatcher,
        lifetimes: Lifetimes,
        live: LiveSandboxes,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.launcher = launcher
        self.exits = exits
        self.lifetimes = lifetimes
        self.live = live
        # Called with a sandbox's ID before it pauses, while it still runs, and after
        # the pause (done or failed): the code service lets go of its kernels, so that
        # they live through the pause, and then cleans up.
        self.before_pause: list[Hook] = []
        self.after_pause: list[Hook] = []

    def checkpoint_dir(self, sandbox_id: str) -> Path:
        """A paused sandbox's saved memory (beside its disk, which keeps its files)."""
        return self.launcher.sandbox_dir(sandbox_id) / "checkpoint"

    @contextlib.asynccontextmanager
    async def frozen(self, sandbox_id: str) -> AsyncIterator[tuple[SandboxRecord, RootFS]]:
        """Hold a running sandbox still: every task frozen (so its memory and files agree)
        under its lock, thawed on the way out whatever happens."""
        await get(self.store, sandbox_id)
        async with self.live[sandbox_id].lock:
            record = await get_running(self.store, sandbox_id)
            await self.runtime.pause(sandbox_id)
            try:
                yield record, self.launcher.rootfs(sandbox_id)
            finally:
                try:
                    await self.runtime.resume(sandbox_id)
                except Exception:
                    log.exception("thawing sandbox %s", sandbox_id)

    async def pause(self, sandbox_id: str) -> SandboxRecord:
        """Save a running sandbox's memory to disk and stop it (status ``paused``).

        Crash-safe order: freeze, checkpoint into a temporary directory, rename it into
        place (from here the pause has happened), record ``paused``, then remove the runsc
        sandbox. A restarted server finishes or undoes a pause cut short at any step.
        """
        if (await get(self.store, sandbox_id)).status != SandboxStatus.RUNNING:
            return await self._pause(sandbox_id)
        await _run_hooks(self.before_pause, sandbox_id)
        try:
            return await self._pause(sandbox_id)
        finally:
            await _run_hooks(self.after_pause, sandbox_id)

    async def _pause(self, sandbox_id: str) -> SandboxRecord:
        async with self.live[sandbox_id].lock:
            record = await get(self.store, sandbox_id)
            if record.status == SandboxStatus.PAUSED:
                return record
            record = await get_running(self.store, sandbox_id)
            final = self.checkpoint_dir(sandbox_id)
            tmp = final.with_name("checkpoint.tmp")
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            await self.runtime.pause(sandbox_id)
            try:
                tmp.mkdir()
                await self.runtime.checkpoint(sandbox_id, tmp)
                failpoint("pause.after-checkpoint")
                await asyncio.to_thread(os.rename, tmp, final)
                failpoint("pause.after-rename")
            except RunscError as exc:
                await asyncio.to_thread(shutil.rmtree, tmp, True)
                with contextlib.suppress(Exception):
                    await self.runtime.resume(sandbox_id)
                raise await self.checkpoint_failed(record, exc) from None
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, tmp, True)
                with contextlib.suppress(Exception):
                    await self.runtime.resume(sandbox_id)
                raise
            self.exits.unwatch(sandbox_id)
            # The clock stops while paused: expires_at - paused_at is what resume grants.
            record.status, record.paused_at, record.pid = SandboxStatus.PAUSED, time.time(), None
            await self.store.put_sandbox(record)
            failpoint("pause.after-record")
            await self.stop_paused(record)
            log.info("sandbox %s paused", sandbox_id)
        self.lifetimes.changed()
        return record

    async def checkpoint_failed(self, record: SandboxRecord, exc: RunscError) -> StockadeError:
        """Why a checkpoint failed: most often the sandbox died under it (its code ran out
        of memory while frozen pages were saved), which is the caller's to know, not a
        fault of the server's. Its exit watcher records the end a moment later."""
        sandbox_id = record.id
        state = await self.runtime.state(sandbox_id)
        if cgroups.oom_kills(sandbox_id) > 0:
            return SandboxTerminatedError(
                f"sandbox {sandbox_id} ran out of memory (memory={record.memory} MiB) while "
                "being checkpointed and was killed; create it with a larger `memory=`"
            )
        if state is None or state.status not in ("running", "paused"):
            return SandboxTerminatedError(
                f"sandbox {sandbox_id} ended while being checkpointed; `stockade logs "
                f"{sandbox_id}` shows its last output"
            )
        return ServerError(f"checkpointing sandbox {sandbox_id} failed: {exc}")

    async def stop_paused(self, record: SandboxRecord) -> None:
        """Remove a paused sandbox's runsc sandbox, overlay and network; its disk and
        checkpoint stay for the resume (which gets a network again, maybe a new address)."""
        # A paused sandbox is not billed; its checkpoint's CPU is, read before the runsc
        # sandbox (and its cgroup) goes.
        self.launcher.meter.end(record.id)
        self.launcher.drop_link(record.id, f"sandbox {record.id} was paused")
        await self.runtime.delete(record.id)
        await self.launcher.rootfs(record.id).unmount_overlay()
        await self.launcher.release_network(record)
        await self.store.put_sandbox(record)

    async def resume(self, sandbox_id: str) -> SandboxRecord:
        """Bring a paused sandbox back: same ID, files, processes and network address.

        The checkpoint is removed only once the sandbox is recorded as running again, so
        a crash mid-resume leaves it paused (or, if runsc already runs it, running).
        """
        await get(self.store, sandbox_id)
        async with self.launcher.booting(sandbox_id):
            record = await get(self.store, sandbox_id)
            if record.status != SandboxStatus.PAUSED:
                return await get_running(self.store, sandbox_id)
            rootfs = self.launcher.rootfs(sandbox_id)
            await rootfs.mount(await self.launcher.lowerdirs(record))
            policy = NetworkPolicy.from_dict(record.network.policy if record.network else {})
            try:
                # A fresh namespace: gVisor takes its address from it again on restore.
                netns, etc_files, prefix = await self.launcher.attach_network(record, policy)
                await self.launcher.launch(
                    record, rootfs, netns, etc_files, prefix, self.checkpoint_dir(sandbox_id)
                )
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await self.runtime.delete(sandbox_id)
                await self.launcher.release_network(record)
                await rootfs.unmount_overlay()
                raise ServerError(f"resuming sandbox {sandbox_id} failed: {exc}") from exc
            failpoint("resume.after-restore")
            resume_clock(record, time.time())
            record.status, record.paused_at = SandboxStatus.RUNNING, None
            await self.store.put_sandbox(record)
            self.launcher.meter.begin(record, record.started_at)
            await asyncio.to_thread(shutil.rmtree, self.checkpoint_dir(sandbox_id), True)
            self.lifetimes.touch(sandbox_id)
            log.info("sandbox %s resumed", sandbox_id)
        self.exits.watch(record)
        self.lifetimes.changed()
        return record

    async def checkpoint_to(self, sandbox_id: str, dest: Path) -> SandboxRecord:
        """Save a running sandbox's memory (``dest/checkpoint``) and files (``dest/upper``)
        while it keeps running; returns its record as of the capture."""
        async with self.frozen(sandbox_id) as (record, rootfs):
            await rootfs.copy_upper(dest / "upper")
            (dest / "checkpoint").mkdir()
            try:
                await self.runtime.checkpoint(sandbox_id, dest / "checkpoint")
            except RunscError as exc:
                raise await self.checkpoint_failed(record, exc) from None
            failpoint("checkpoint.frozen")
        return record


async def _run_hooks(hooks: Sequence[Hook], sandbox_id: str) -> None:
    for hook in hooks:
        try:
            await hook(sandbox_id)
        except Exception:
            log.exception("pause hook for sandbox %s", sandbox_id)
