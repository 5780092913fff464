"""After a restart: match the stored records against what runsc and the network report.

runsc sandboxes outlive the server (they run detached). A record whose sandbox still runs
is watched again; one whose sandbox vanished is marked ``failed``; a pause, snapshot or
resume that a crash cut short is finished or undone; runsc sandboxes no record claims are
removed.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

from ...network.policy import NetworkPolicy
from ...runtime import proc
from ...runtime.runsc import SandboxState
from ...state.records import EndReason, SandboxRecord, SandboxStatus
from ...state.store import Store
from .exits import ExitWatcher
from .launch import Launcher
from .lifetimes import resume_clock
from .pausing import Pauser

__all__ = ["reconcile"]

log = logging.getLogger(__name__)


async def reconcile(store: Store, launcher: Launcher, exits: ExitWatcher, pauser: Pauser) -> None:
    """Bring the records, runsc and the network into agreement, before any request."""
    runtime = launcher.runtime
    known = {s.id: s for s in await runtime.list()}
    for record in await store.list_sandboxes():
        slot = record.network.slot if record.network else None
        if slot is not None and (record.alive or record.status == SandboxStatus.PAUSED):
            # (A paused one holds a slot only if a crash cut its pause short.)
            launcher.live[record.id].slot = slot
        state = known.get(record.id)
        if record.status == SandboxStatus.PAUSED or (
            record.status == SandboxStatus.RUNNING
            and state is not None
            and state.status == "paused"
        ):
            await _recover_pause(store, launcher, exits, pauser, record, state)
            continue
        if not record.alive:
            continue
        if state is not None and state.status == "running" and not proc.pid_alive(state.pid):
            # runsc keeps saying "running" while a gofer lingers; the sandbox is gone.
            state = None
        mounted = launcher.rootfs(record.id).is_mounted()
        usable = state is not None and state.status == "running" and mounted
        if usable and record.status != SandboxStatus.STARTING:
            assert state is not None
            record.pid = state.pid
            await store.put_sandbox(record)
            exits.watch(record)
            if record.status == SandboxStatus.RUNNING:  # a pooled one is nobody's yet
                # Billed again from now: the time this server was down is not.
                launcher.meter.begin(record)
            continue
        await launcher.cleanup(record.id)
        was_starting = record.status == SandboxStatus.STARTING
        record.status, record.reason = SandboxStatus.FAILED, EndReason.ERROR
        if state is None:
            record.message = "the sandbox's runsc sandbox vanished while the server was down"
        elif was_starting:
            # Its create (or restore, or fork) never answered: nobody holds its ID.
            record.message = "the server stopped while the sandbox was starting"
        else:
            record.message = f"the sandbox was {state.status} when the server restarted"
        record.ended_at = time.time()
        await store.put_sandbox(record)
        log.warning("sandbox %s: %s", record.id, record.message)
    # runsc sandboxes that have no live record (e.g. the server died mid-create).
    records = await store.list_sandboxes()
    alive_ids = {r.id for r in records if r.alive or r.status == SandboxStatus.PAUSED}
    for sid in known:
        if sid not in alive_ids:
            await launcher.cleanup(sid)
    attached = [r.network for r in records if r.network and r.network.slot is not None]
    await launcher.network.install(
        (
            (net.slot, NetworkPolicy.from_dict(net.policy))
            for r in records
            if r.alive and (net := r.network) is not None and net.slot is not None
        ),
        last_slot=max((net.slot or 0 for net in attached), default=0),
    )


async def _recover_pause(
    store: Store,
    launcher: Launcher,
    exits: ExitWatcher,
    pauser: Pauser,
    record: SandboxRecord,
    state: SandboxState | None,
) -> None:
    """Finish or undo a pause, snapshot or resume that a crash cut short.

    A frozen runsc sandbox (status ``paused``) was being checkpointed: if its
    checkpoint made it into place, the pause happened; otherwise it thaws and runs on.
    A paused record whose runsc sandbox runs was being resumed: it is running.
    """
    sid = record.id
    checkpoint = pauser.checkpoint_dir(sid)
    complete = await asyncio.to_thread(checkpoint.is_dir)
    await asyncio.to_thread(shutil.rmtree, checkpoint.with_name("checkpoint.tmp"), True)
    live = state is not None and proc.pid_alive(state.pid)
    if record.status == SandboxStatus.PAUSED and live and state and state.status == "running":
        resume_clock(record, time.time())
        record.status, record.paused_at, record.pid = SandboxStatus.RUNNING, None, state.pid
        await store.put_sandbox(record)
        await asyncio.to_thread(shutil.rmtree, checkpoint, True)
        exits.watch(record)
        launcher.meter.begin(record, record.started_at)
        log.warning("sandbox %s: a resume was cut short; it is running", sid)
        return
    if record.status == SandboxStatus.RUNNING and not complete and live:
        await launcher.runtime.resume(sid)
        record.pid = state.pid if state is not None else None
        await store.put_sandbox(record)
        exits.watch(record)
        launcher.meter.begin(record)
        log.warning("sandbox %s: a pause or snapshot was cut short; it runs on", sid)
        return
    if complete:
        if record.status != SandboxStatus.PAUSED:
            record.status, record.paused_at, record.pid = SandboxStatus.PAUSED, time.time(), None
            await store.put_sandbox(record)
            log.warning("sandbox %s: a pause was cut short after its checkpoint", sid)
        try:
            await pauser.stop_paused(record)
        except Exception:
            log.debug("sandbox %s: its paused remains were partly gone already", sid)
        return
    # Neither running nor saved: nothing to come back to.
    await launcher.cleanup(sid)
    record.status, record.reason = SandboxStatus.FAILED, EndReason.ERROR
    record.message = "the sandbox was lost while paused: its checkpoint is missing"
    record.ended_at = time.time()
    await store.put_sandbox(record)
    log.warning("sandbox %s: %s", sid, record.message)
