"""The sandbox state machine: create, hand out, terminate; the face of the sandbox service.

    starting → running → terminated | failed
    starting → pooled → running (a warm-pool sandbox handed to a caller)
    running ⇄ paused (pausing.py)

Every transition is persisted before it is announced, so a server killed at any point
comes back knowing what exists (reconcile.py). One lock per sandbox (its LiveSandbox's)
serialises its transitions; reads need no lock. The steps live beside this module, by
role: launch.py starts and removes sandboxes, exits.py watches for their end,
lifetimes.py applies timeouts and retention, pausing.py pauses and resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

from ....errors import InvalidArgumentError, ServerError
from ...config import ServerConfig
from ...images.catalog import ImageCatalog
from ...network.manager import NetworkManager
from ...network.policy import NetworkPolicy
from ...runtime import proc
from ...runtime.agent_link import AgentLost
from ...runtime.output_log import read_log
from ...runtime.reaper import Reaper
from ...runtime.rootfs import RootFS, makedirs_in_root
from ...runtime.runsc import Runsc
from ...state.ids import new_id
from ...state.records import EndReason, SandboxRecord, SandboxStatus
from ...state.store import Store
from ..doze import Dozer
from ..ports import PortTarget
from ..spec import Checkpoint, CreateRequest, new_record
from ..stages import stage
from ..usage import Meter
from ..users import resolve_user
from .exits import ExitWatcher
from .launch import Launcher
from .lifetimes import Lifetimes, start_clock
from .live import Background, LiveSandboxes
from .lookup import get, get_owned, get_running, not_found, not_running
from .network import SandboxPorts
from .pausing import Pauser
from .reconcile import reconcile

__all__ = ["Checkpoint", "CreateRequest", "SandboxService"]

log = logging.getLogger(__name__)


class SandboxService:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        images: ImageCatalog,
        reaper: Reaper | None = None,
        network: NetworkManager | None = None,
        *,
        runtime: Runsc | None = None,
        meter: Meter | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.images = images
        self.network = network or NetworkManager(config.data_dir, config.cache_dir, enabled=False)
        # The runtime is a seam: tests drive this state machine against a fake one.
        self.runtime = runtime or Runsc(config.runsc, config.runsc_root)
        # Bills a sandbox while it runs for a tenant: begun where its clock starts (create,
        # hand-out, resume, a restart), ended before its cgroup goes (launch.py, pausing.py).
        self.meter = meter or Meter(store)
        self.live = LiveSandboxes()
        self.background = Background()
        self.launcher = Launcher(config, self.runtime, self.network, self.live, self.meter)
        self.launcher.on_protocol_error = self._agent_broke_protocol
        self.reserve = self.launcher.reserve
        self.exits = ExitWatcher(
            store, self.runtime, self.launcher, self.live, self.background, reaper, self._ended
        )
        self.lifetimes = Lifetimes(
            store, self.live, self.background, self,
            retention=config.retention, sandbox_dir=self.launcher.sandbox_dir,
        )  # fmt: skip
        self.ports = SandboxPorts(store, self.live, self.launcher)
        self.pauser = Pauser(
            store, self.runtime, self.launcher, self.exits, self.lifetimes, self.live
        )
        self.before_pause = self.pauser.before_pause
        self.after_pause = self.pauser.after_pause
        # Called with a sandbox's ID once it ended: what others kept for it (the code
        # service's contexts, say) can go.
        self.on_end: list[Callable[[str], Coroutine[Any, Any, None]]] = []
        self.dozer = Dozer(
            config.doze_after,
            running=self.live.watched,
            last_active=self.lifetimes.last_active,
            busy=lambda sid: self.lifetimes.sessions(sid) > 0,
        )
        self._dozing_task: asyncio.Task[None] | None = None
        # The steps other services take part in, as this service's own.
        self.link = self.launcher.link
        self.process_env = self.launcher.process_env
        self.oom_kills = self.launcher.oom_kills
        self.sandbox_dir = self.launcher.sandbox_dir
        self.touch = self.lifetimes.touch
        self.busy = self.lifetimes.busy
        self.idle_again = self.lifetimes.idle_again
        self.set_timeout = self.lifetimes.set_timeout
        self.purge = self.lifetimes.purge
        self.resume = self.pauser.resume
        self.checkpoint_to = self.pauser.checkpoint_to
        self.frozen = self.pauser.frozen
        self.checkpoint_dir = self.pauser.checkpoint_dir

    # ----------------------------------------------------------------- lookups

    def log_path(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "output.log"

    async def get(self, sandbox_id: str) -> SandboxRecord:
        """A sandbox's record as callers may see it (pooled ones belong to nobody yet)."""
        return await get(self.store, sandbox_id)

    async def get_owned(self, sandbox_id: str, tenant: str) -> SandboxRecord:
        """The record of a sandbox of ``tenant`` (another's answers as a missing one)."""
        return await get_owned(self.store, sandbox_id, tenant)

    async def check_owner(self, sandbox_id: str, tenant: str) -> None:
        """Raise NotFoundError, as for a missing sandbox, unless ``tenant`` owns it; a
        running one's owner is known here without reading its record."""
        live = self.live.get(sandbox_id)
        if live is None or live.tenant is None:
            await self.get_owned(sandbox_id, tenant)
        elif live.tenant != tenant:
            raise not_found(sandbox_id)

    async def get_running(self, sandbox_id: str) -> SandboxRecord:
        """The record of a running sandbox, or an error saying why it is not running."""
        return await get_running(self.store, sandbox_id)

    async def logs(self, sandbox_id: str, *, follow: bool) -> AsyncIterator[bytes]:
        """The entrypoint's output (at most ``max_log_bytes``, its end), a chunk at a
        time; with ``follow`` until the sandbox ends."""
        await self.get(sandbox_id)

        async def alive() -> bool:
            return (await self.get(sandbox_id)).alive

        async for chunk in read_log(self.sandbox_dir(sandbox_id), follow=follow, alive=alive):
            yield chunk

    async def ready_for_use(self, sandbox_id: str) -> SandboxRecord:
        """The record of a running sandbox that a caller is about to use (an exec, a files
        call, a code run, a port request): a paused one created with ``auto_resume`` is
        woken first, and the call counts as activity for ``idle_timeout``."""
        record = await self.get(sandbox_id)
        if record.status == SandboxStatus.PAUSED and record.auto_resume:
            await self.resume(sandbox_id)
        record = await self.get_running(sandbox_id)
        self.touch(sandbox_id)  # first: the dozer must not pick it again while it wakes
        await self.dozer.wake(sandbox_id)
        return record

    async def settled(self, sandbox_id: str, *, ending: bool = False) -> SandboxRecord:
        """The record once any transition in progress is done.

        Used when an operation failed in a way that suggests the sandbox is dying: its
        watcher may not have recorded the end yet. With ``ending=True`` (the agent, its
        init, is gone) the sandbox is known to be on its way out, so wait for that too.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while True:
            await self.get(sandbox_id)
            async with self.live[sandbox_id].lock:
                record = await self.get(sandbox_id)
            alive_pid = record.pid is not None and proc.pid_alive(record.pid)
            dying = record.alive and (ending or not alive_pid)
            if not dying or loop.time() > deadline:
                return record
            await asyncio.sleep(0.05)

    async def save_contexts(self, sandbox_id: str, contexts: list[dict[str, Any]]) -> None:
        """Record the sandbox's code contexts (CodeService.saved), for the next server."""
        if await self.store.get_sandbox(sandbox_id) is None:
            return
        async with self.live[sandbox_id].lock:
            record = await self.store.get_sandbox(sandbox_id)
            if record is not None and record.contexts != contexts:
                record.contexts = contexts
                await self.store.put_sandbox(record)

    async def list(
        self, *, status: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[SandboxRecord]:
        records = await self.store.list_sandboxes(status)
        # Pooled sandboxes belong to nobody yet: they are not part of any listing.
        records = [r for r in records if r.status != SandboxStatus.POOLED]
        if tags:
            records = [r for r in records if all(r.tags.get(k) == v for k, v in tags.items())]
        return records

    async def set_tags(self, sandbox_id: str, tags: Mapping[str, str]) -> SandboxRecord:
        """Replace a sandbox's tags with ``tags`` (as Modal's set_tags does)."""
        await self.get(sandbox_id)  # NotFoundError for a missing or pooled one
        async with self.live[sandbox_id].lock:
            record = await self.get(sandbox_id)
            record.tags = dict(tags)
            await self.store.put_sandbox(record)
        return record

    # ----------------------------------------------------------------------- create

    async def create(self, req: CreateRequest) -> SandboxRecord:
        with stage("image"):
            image = await self.images.resolve(req.image, req.tenant)
        entrypoint = req.entrypoint
        if req.image_entrypoint:
            if not image.command:
                raise InvalidArgumentError(
                    f"image {req.image!r} has no Entrypoint or Cmd to run; pass entrypoint= "
                    "instead of image_entrypoint=True"
                )
            entrypoint = image.command
        record = new_record(
            req, image=req.image, env={**image.env, **req.env},
            # The image's WorkingDir is a default; the caller's wins.
            workdir=req.workdir or image.workdir,
            entrypoint=list(entrypoint) if entrypoint else None,
        )  # fmt: skip
        record = await self._boot(record, image.lowerdirs, pooled=False, policy=req.policy)
        if record.status == SandboxStatus.RUNNING:
            # Connected now, so that the sandbox is ready when create returns and its
            # first exec pays no handshake (the agent would have to come up either way).
            with stage("channel"), contextlib.suppress(AgentLost):
                await self.link(record.id)
        return await self._take_user(record, req.user or image.user)

    async def create_over(
        self,
        req: CreateRequest,
        lowerdirs: Sequence[Path],
        *,
        tags: Mapping[str, str],
        user: str | None = None,
    ) -> SandboxRecord:
        """A sandbox over explicit layers (an image being built): ``req.image`` only names it."""
        record = new_record(req, image=req.image, env=dict(req.env), tags=tags)
        record = await self._boot(record, lowerdirs, pooled=False, policy=req.policy)
        return await self._take_user(record, user)

    async def restore(
        self, source: SandboxRecord, saved: Checkpoint, req: CreateRequest
    ) -> SandboxRecord:
        """A new sandbox restored from ``saved``: ``source``'s image, limits, env, user and
        volumes, with ``req``'s tags, lifetimes and ports."""
        record = new_record(
            req, image=source.image, env=dict(source.env), entrypoint=source.entrypoint,
            cpu=source.cpu, memory=source.memory, disk=source.disk, volumes=source.volumes,
        )  # fmt: skip
        record.workdir = source.workdir
        record.user, record.uid, record.gid = source.user, source.uid, source.gid
        # The restored servers still listen: their ports stay exposed unless the caller
        # names others.
        record.ports = record.ports or list(source.ports)
        policy = NetworkPolicy.from_dict(source.network.policy if source.network else {})
        layers = [Path(p) for p in source.layers]
        return await self._boot(record, layers, pooled=False, policy=policy, restore=saved)

    async def create_pooled(self, image_name: str, cpu: float, memory: int, disk: int) -> str:
        """Start a sandbox for a warm pool: running, but nobody's yet (status ``pooled``).

        It has no lifetime until :meth:`hand_out_pooled` gives it to a caller; nothing
        lists it.
        """
        image = await self.images.ensure(image_name)
        record = SandboxRecord(
            id=new_id("sb"), image=image_name, cpu=cpu, memory=memory, disk=disk,
            timeout=0.0, status=SandboxStatus.STARTING, created_at=time.time(),
        )  # fmt: skip
        # Pooled sandboxes boot with the default policy; hand_out_pooled() applies the
        # caller's.
        await self._boot(record, image.layers, pooled=True, policy=NetworkPolicy())
        # Connected ahead too: the first exec of its user then pays no handshake.
        with contextlib.suppress(AgentLost):
            await self.link(record.id)
        return record.id

    async def hand_out_pooled(self, sandbox_id: str, req: CreateRequest) -> SandboxRecord | None:
        """Hand a pooled sandbox to a caller, as if created now with ``req``.

        Returns None when it is no longer usable (it died while waiting).
        """
        async with self.live[sandbox_id].lock:
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or record.status != SandboxStatus.POOLED:
                return None
            if record.pid is None or not proc.pid_alive(record.pid):
                return None
            await self.launcher.apply_policy(record, req.policy, strict=False)
            fresh = new_record(req, image=record.image, env=dict(req.env))
            record.ports, record.access_token = fresh.ports, fresh.access_token
            record.env, record.tags, record.name = fresh.env, fresh.tags, fresh.name
            record.workdir, record.timeout = req.workdir, req.timeout
            record.idle_timeout, record.on_timeout = req.idle_timeout, req.on_timeout
            record.auto_resume = req.auto_resume
            record.tenant = self.live[sandbox_id].tenant = req.tenant
            record.status = SandboxStatus.RUNNING
            record.created_at = time.time()
            start_clock(record, record.created_at)
            await self.store.put_sandbox(record)
            # Billed from here: a pooled sandbox is nobody's, whatever it ran before.
            self.meter.begin(record, record.created_at)
        if req.workdir:
            await self.launcher.agent_mkdir(sandbox_id, req.workdir)
        self.lifetimes.changed()
        return record

    async def _boot(
        self,
        record: SandboxRecord,
        layers: Sequence[Path],
        *,
        pooled: bool,
        policy: NetworkPolicy,
        restore: Checkpoint | None = None,
    ) -> SandboxRecord:
        """Start ``record``'s sandbox over ``layers``; with ``restore``, from a checkpoint
        (its processes carry on) over a copy of the checkpointed writes."""
        launcher = self.launcher
        async with launcher.booting(record.id):
            with stage("store"):
                await self.store.put_sandbox(record)
            rootfs = launcher.rootfs(record.id)
            try:
                record.layers = [str(p) for p in layers]
                upper = restore.upper if restore is not None else None
                with stage("overlay"):
                    lowerdirs = await launcher.lowerdirs(record)
                    spare = self.reserve.take_disk(record.disk) if upper is None else None
                    await rootfs.create(lowerdirs, record.disk, upper_from=upper, spare=spare)
                with stage("network"):
                    netns, etc_files, prefix = await launcher.attach_network(record, policy)
                    self.reserve.network_taken()
                if record.workdir and restore is None:
                    # The working directory must exist before the init starts in it. The
                    # image's symlinks are resolved inside its root, never on the host.
                    try:
                        await asyncio.to_thread(makedirs_in_root, rootfs.merged, record.workdir)
                    except ValueError as exc:
                        raise InvalidArgumentError(f"workdir {exc}") from None
                checkpoint = restore.checkpoint if restore is not None else None
                running = await launcher.launch(
                    record, rootfs, netns, etc_files, prefix, checkpoint
                )
            except Exception as exc:
                await launcher.cleanup(record.id)
                record.status, record.reason = SandboxStatus.FAILED, EndReason.ERROR
                record.message = f"starting the sandbox failed: {exc}"
                record.ended_at = time.time()
                await self.store.put_sandbox(record)
                if isinstance(exc, InvalidArgumentError):
                    raise
                raise ServerError(f"starting sandbox {record.id} failed: {exc}") from exc
            if pooled:
                record.status, record.started_at = SandboxStatus.POOLED, time.time()
            else:
                record.status = SandboxStatus.RUNNING
                start_clock(record, time.time())
            with stage("store"):
                await self.store.put_sandbox(record)
            if not pooled:
                self.meter.begin(record, record.started_at)
        if not running:
            # The entrypoint finished before we looked: record its end right away.
            await self.exits.on_exit(record.id)
            return await self.get(record.id)
        self.exits.watch(record)
        self.lifetimes.changed()
        return record

    async def user_ids(self, sandbox_id: str, user: str) -> tuple[int, int]:
        """``(uid, gid)`` of ``user`` (a name, ``uid``, with ``:group`` or ``:gid``) in a
        running sandbox, looked up in the image's own /etc/passwd and /etc/group (read
        inside the sandbox, so a symlink in the image cannot point the lookup at the
        host's files). The one resolver of the image's USER, ``user=`` on create, and a
        call's ``user=`` (callers check a caller's with users.check_user first)."""
        if user in ("root", "0", "0:0"):
            return 0, 0
        passwd = await self.launcher.agent_read(sandbox_id, "/etc/passwd")
        group = await self.launcher.agent_read(sandbox_id, "/etc/group") if ":" in user else ""
        return resolve_user(user, passwd, group)

    async def take_user(self, record: SandboxRecord, user: str | None) -> SandboxRecord:
        """Run the sandbox's commands as ``user`` from now on (create's ``user=``, the
        image's USER); a bad one ends the sandbox and raises why."""
        return await self._take_user(record, user)

    async def _take_user(self, record: SandboxRecord, user: str | None) -> SandboxRecord:
        if not user or record.status != SandboxStatus.RUNNING:
            return record
        try:
            uid, gid = await self.user_ids(record.id, user)
        except Exception:
            bad = f"bad user {user!r}"
            await self.terminate(record.id, reason=EndReason.ERROR, message=bad)
            raise
        async with self.live[record.id].lock:
            record.user, record.uid, record.gid = user, uid, gid
            await self.store.put_sandbox(record)
        return record

    # ------------------------------------------------------------ network and ports

    async def set_network(self, sandbox_id: str, policy: NetworkPolicy) -> SandboxRecord:
        return await self.ports.set_network(sandbox_id, policy)

    async def expose(self, sandbox_id: str, port: int, public: bool) -> SandboxRecord:
        return await self.ports.expose(sandbox_id, port, public)

    async def unexpose(self, sandbox_id: str, port: int) -> SandboxRecord:
        return await self.ports.unexpose(sandbox_id, port)

    async def resolve(self, sandbox_id: str, port: int) -> PortTarget:
        """Where the port proxy sends traffic for ``port`` of a sandbox (PortTargets)."""
        return await self.ports.resolve(await self.ready_for_use(sandbox_id), port)

    async def fs_layers(self, sandbox_id: str) -> tuple[Path, tuple[Path, ...]]:
        """A running or paused sandbox's writes (its upper directory) and its image layers,
        top-first, without the agent's."""
        record = await self.get(sandbox_id)
        if record.status not in (SandboxStatus.RUNNING, SandboxStatus.PAUSED):
            await self.get_running(sandbox_id)  # raises, saying why
        return RootFS(self.sandbox_dir(sandbox_id)).upper, tuple(Path(p) for p in record.layers)

    # ------------------------------------------------------------- pause and end

    async def pause(self, sandbox_id: str) -> SandboxRecord:
        """Save a running sandbox's memory to disk and stop it (status ``paused``)."""
        return await self.pauser.pause(sandbox_id)

    async def terminate(
        self,
        sandbox_id: str,
        *,
        reason: EndReason = EndReason.TERMINATED,
        message: str | None = None,
        capture: Path | None = None,
    ) -> SandboxRecord:
        """End a sandbox (idempotent: an ended one is returned as it is).

        ``capture``: copy the sandbox's writes there first, as an image layer (builds).
        """
        if await self.store.get_sandbox(sandbox_id) is None:
            await self.get(sandbox_id)  # raises NotFoundError
        async with self.live[sandbox_id].lock:
            found = await self.store.get_sandbox(sandbox_id)
            record = found if found is not None else await self.get(sandbox_id)
            if not record.alive and record.status != SandboxStatus.PAUSED:
                if capture is not None:
                    raise not_running(sandbox_id, record)
                return record
            self.exits.unwatch(sandbox_id)
            await self.launcher.cleanup(sandbox_id, capture=capture)
            record.status = SandboxStatus.TERMINATED
            record.reason = reason
            record.message = message
            record.ended_at = time.time()
            await self.store.put_sandbox(record)
            log.info("sandbox %s ended: %s", sandbox_id, reason)
        self._ended(sandbox_id)
        return record

    def _agent_broke_protocol(self, sandbox_id: str, why: str) -> None:
        """The sandbox's agent (or what took its place) broke the channel protocol; its
        link is cut already. Nothing it sends can be trusted from now on: stop it."""
        self.background.spawn(self._fail_agent_protocol(sandbox_id, why))

    async def _fail_agent_protocol(self, sandbox_id: str, why: str) -> None:
        async with self.live[sandbox_id].lock:
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or not record.alive:
                return
            self.exits.unwatch(sandbox_id)
            await self.launcher.cleanup(sandbox_id)
            record.status, record.reason = SandboxStatus.FAILED, EndReason.AGENT_PROTOCOL
            record.message = (
                f"its agent broke the channel protocol ({why}), so the sandbox was stopped"
            )
            record.ended_at = time.time()
            await self.store.put_sandbox(record)
            log.warning("sandbox %s ended: agent_protocol: %s", sandbox_id, why)
        self._ended(sandbox_id)

    def _ended(self, sandbox_id: str) -> None:
        """After a sandbox ended: its deadline is gone, and what others kept for it (the
        code service's contexts, say) can go, in the background."""
        self.lifetimes.changed()
        for hook in self.on_end:
            self.background.spawn(hook(sandbox_id))

    # ------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Reconcile records with runsc and the network, then start the timeout loop."""
        await self.network.start()
        await reconcile(self.store, self.launcher, self.exits, self.pauser)
        self.lifetimes.start()
        self._dozing_task = asyncio.create_task(self.dozer.run(), name="doze-loop")
        await self.reserve.start()

    async def stop(self) -> None:
        """Stop watching; the sandboxes themselves keep running for the next server."""
        tasks = [
            *self.lifetimes.tasks(), *([self._dozing_task] if self._dozing_task else []),
            *self.exits.tasks(), *self.background.tasks(),
        ]  # fmt: skip
        self.exits.stop()
        self.launcher.stop()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.reserve.stop()
        await self.network.stop()
