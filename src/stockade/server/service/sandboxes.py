"""Sandbox lifecycle: create, watch, time out, terminate, and reconcile after a restart.

Every state transition is persisted before it is announced, so a server killed at any
point comes back knowing what exists. runsc sandboxes outlive the server (they run
detached); on start, :meth:`SandboxService.start` matches the records against what runsc
reports and marks the ones that vanished as ``failed``.

Concurrency: one asyncio.Lock per sandbox serialises its transitions (create, terminate,
exit handling); reads need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import re
import secrets
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    SandboxPausedError,
    SandboxTerminatedError,
    ServerError,
    StockadeError,
)
from ..agent.protocol import FrameType
from ..config import ServerConfig
from ..failpoints import failpoint
from ..images.catalog import ImageCatalog
from ..network.manager import NetworkManager
from ..network.policy import NetworkPolicy
from ..runtime import bundle, cgroups, proc
from ..runtime.agent_layer import AGENT_PATH, ensure_agent_layer
from ..runtime.agent_link import AgentLink, AgentLost
from ..runtime.output_log import OutputLog, read_log, read_tail
from ..runtime.reaper import Reaper
from ..runtime.rootfs import RootFS, makedirs_in_root
from ..runtime.runsc import Runsc, RunscError, SandboxState
from ..state.ids import new_id
from ..state.records import SandboxRecord
from ..state.store import Store
from . import lifetimes
from .doze import Dozer
from .ports import PortTarget
from .spares import Spares
from .stages import stage
from .users import resolve_user

__all__ = ["CreateRequest", "SandboxService", "describe_end"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreateRequest:
    image: str
    cpu: float
    memory: int
    disk: int
    timeout: float
    env: Mapping[str, str]
    workdir: str | None
    tags: Mapping[str, str]
    entrypoint: Sequence[str] | None
    policy: NetworkPolicy = field(default_factory=NetworkPolicy)
    ports: Sequence[tuple[int, bool]] = ()  # (port, public)
    # Run the image's ENTRYPOINT + CMD as the main process (as `docker run` does).
    image_entrypoint: bool = False
    # Mount path → volume ID (checked and resolved by the caller: VolumeService).
    volumes: Mapping[str, str] = field(default_factory=dict)
    idle_timeout: float = 0.0
    on_timeout: str = "terminate"
    auto_resume: bool = False


@dataclass(frozen=True)
class Checkpoint:
    """What a restore starts from: runsc's checkpoint image and the writes beside it."""

    checkpoint: Path
    upper: Path


_SANDBOX_ID = re.compile(r"sb-[A-Za-z0-9_-]{1,64}")  # no "/" nor "..": one name


class SandboxService:
    def __init__(
        self,
        config: ServerConfig,
        store: Store,
        images: ImageCatalog,
        reaper: Reaper | None = None,
        network: NetworkManager | None = None,
    ) -> None:
        self.config = config
        self.network = network or NetworkManager(config.data_dir, config.cache_dir, enabled=False)
        # Network slot of each sandbox that has one (live or being cleaned up).
        self._slots: dict[str, int] = {}
        self.reaper = reaper
        self.store = store
        self.images = images
        self.runsc = Runsc(config.runsc, config.runsc_root)
        self._locks: dict[str, asyncio.Lock] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._exit_codes: dict[str, asyncio.Future[int | None]] = {}
        self._final_ooms: dict[str, int] = {}
        self._links: dict[str, AgentLink] = {}
        # Entrypoint exit codes as the agent reported them over its channel.
        self._entry_codes: dict[str, int] = {}
        # The copiers of the sandboxes' output into their capped output.log.
        self._outputs: dict[str, OutputLog] = {}
        self._agent_layer: Path | None = None
        self._boot_slots = asyncio.Semaphore(2 * (os.cpu_count() or 1))
        self._boots = 0  # boots holding or waiting for a slot
        self._no_boots = asyncio.Event()  # set while _boots is 0
        self._no_boots.set()
        self.spares = Spares(config.spares_dir, self.network, idle=self._no_boots)
        # Sandboxes whose FIFOs only this process has used: no stale bytes to clear.
        self._fresh: set[str] = set()
        self._link_locks: dict[str, asyncio.Lock] = {}
        self._deadline_changed = asyncio.Event()
        # Called with a sandbox's ID before it pauses, while it still runs, and after
        # the pause (done or failed): the code service lets go of its kernels, so that
        # they live through the pause, and then cleans up.
        self.before_pause: list[Callable[[str], Awaitable[None]]] = []
        self.after_pause: list[Callable[[str], Awaitable[None]]] = []
        self.on_end: list[Callable[[str], Coroutine[Any, Any, None]]] = []
        # Last exec, file or API activity per sandbox (time.time()), for idle_timeout. In
        # memory only: after a restart every sandbox counts as active from the start.
        self._active: dict[str, float] = {}
        # Live exec sessions per sandbox: one keeps it from idling (busy / idle_again).
        self._busy: dict[str, int] = {}
        # For the timeout loop: the idle_timeout of each running sandbox that has one, when
        # the loop wakes next, and the sandboxes whose deadline it is applying now.
        self._idle_limits: dict[str, float] = {}
        self._wake_at = math.inf
        self._expiring: set[str] = set()
        self._timer: asyncio.Task[None] | None = None
        self._purger: asyncio.Task[None] | None = None
        self.dozer = Dozer(
            config.doze_after,
            running=lambda: list(self._watchers),
            last_active=self._active,
            busy=lambda sid: self._busy.get(sid, 0) > 0,
        )
        self._dozing_task: asyncio.Task[None] | None = None
        # Strong references to fire-and-forget tasks, so they are not garbage-collected.
        self._background: set[asyncio.Task[None]] = set()
        config.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        config.runsc_root.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- paths & lookups

    def sandbox_dir(self, sandbox_id: str) -> Path:
        # IDs reach here from URLs: only one of our own shape may become a host path.
        if not _SANDBOX_ID.fullmatch(sandbox_id):
            raise NotFoundError(f"sandbox {sandbox_id[:80]!r} does not exist")
        return self.config.sandboxes_dir / sandbox_id

    def log_path(self, sandbox_id: str) -> Path:
        return self.sandbox_dir(sandbox_id) / "output.log"

    def _output(self, sandbox_id: str) -> OutputLog:
        out = self._outputs.get(sandbox_id)
        if out is None:
            out = OutputLog(self.sandbox_dir(sandbox_id), self.config.max_log_bytes)
            self._outputs[sandbox_id] = out
        return out

    def _log_tail(self, sandbox_id: str, limit: int = 1500) -> str:
        """The end of the sandbox's output, with what its FIFO still holds copied first."""
        out = self._outputs.get(sandbox_id)
        if out is not None:
            out.drain()
        return _tail(self.sandbox_dir(sandbox_id), limit)

    async def logs(self, sandbox_id: str, *, follow: bool) -> AsyncIterator[bytes]:
        """The entrypoint's output (at most ``max_log_bytes``, its end), a chunk at a
        time; with ``follow`` until the sandbox ends."""
        await self.get(sandbox_id)

        async def alive() -> bool:
            return (await self.get(sandbox_id)).alive

        async for chunk in read_log(self.sandbox_dir(sandbox_id), follow=follow, alive=alive):
            yield chunk

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _booting(self, sandbox_id: str) -> AsyncIterator[None]:
        """Hold a boot slot and the sandbox's lock. Starting a sandbox is CPU-heavy (mkfs,
        mounts, runsc): a burst of creates waits here in order instead of making every one
        of them slow enough to time out."""
        self._boots += 1
        self._no_boots.clear()
        try:
            with stage("queue"):
                await self._boot_slots.acquire()
            try:
                async with self._lock(sandbox_id):
                    yield
            finally:
                self._boot_slots.release()
        finally:
            self._boots -= 1
            if not self._boots:
                self._no_boots.set()

    async def get(self, sandbox_id: str) -> SandboxRecord:
        """A sandbox's record as callers may see it (pooled ones belong to nobody yet)."""
        record = await self.store.get_sandbox(sandbox_id)
        if record is None or record.status == "pooled":
            raise NotFoundError(
                f"sandbox {sandbox_id} does not exist; `stockade ls` lists the sandboxes"
            )
        return record

    async def get_running(self, sandbox_id: str) -> SandboxRecord:
        """The record of a running sandbox, or SandboxTerminatedError saying how it ended."""
        record = await self.get(sandbox_id)
        if record.status != "running":
            if record.status == "starting":
                raise SandboxTerminatedError(f"sandbox {sandbox_id} is still starting")
            if record.status == "paused":
                raise SandboxPausedError(
                    f"sandbox {sandbox_id} is paused; resume it first (sb.resume() or "
                    f"`stockade resume {sandbox_id}`), or create it with auto_resume=True"
                )
            raise SandboxTerminatedError(describe_end(record))
        return record

    async def use(self, sandbox_id: str) -> SandboxRecord:
        """The record of a running sandbox that a caller is about to use (an exec, a files
        call, a code run, a port request): a paused one created with ``auto_resume`` is
        woken first, and the call counts as activity for ``idle_timeout``."""
        record = await self.get(sandbox_id)
        if record.status == "paused" and record.auto_resume:
            await self.resume(sandbox_id)
        record = await self.get_running(sandbox_id)
        self.touch(sandbox_id)  # first: the dozer must not pick it again while it wakes
        await self.dozer.wake(sandbox_id)
        return record

    async def save_contexts(self, sandbox_id: str, contexts: list[dict[str, Any]]) -> None:
        """Record the sandbox's code contexts (CodeService.saved), for the next server."""
        async with self._lock(sandbox_id):
            record = await self.store.get_sandbox(sandbox_id)
            if record is not None and record.contexts != contexts:
                record.contexts = contexts
                await self.store.put_sandbox(record)

    def touch(self, sandbox_id: str) -> None:
        """Note activity now (for ``idle_timeout``)."""
        self._active[sandbox_id] = time.time()

    async def settle(self, sandbox_id: str, *, ending: bool = False) -> SandboxRecord:
        """The record once any transition in progress is done.

        Used when an operation failed in a way that suggests the sandbox is dying: its
        watcher may not have recorded the end yet. With ``ending=True`` (the agent, its
        init, is gone) the sandbox is known to be on its way out, so wait for that too.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while True:
            async with self._lock(sandbox_id):
                record = await self.get(sandbox_id)
            alive_pid = record.pid is not None and proc.pid_alive(record.pid)
            dying = record.alive and (ending or not alive_pid)
            if not dying or loop.time() > deadline:
                return record
            await asyncio.sleep(0.05)

    async def list(
        self, *, status: str | None = None, tags: Mapping[str, str] | None = None
    ) -> list[SandboxRecord]:
        records = await self.store.list_sandboxes(status)
        # Pooled sandboxes belong to nobody yet: they are not part of any listing.
        records = [r for r in records if r.status != "pooled"]
        if tags:
            records = [r for r in records if all(r.tags.get(k) == v for k, v in tags.items())]
        return records

    # ----------------------------------------------------------------------- create

    async def create(self, req: CreateRequest) -> SandboxRecord:
        with stage("image"):
            image = await self.images.resolve(req.image)
        entrypoint = req.entrypoint
        if req.image_entrypoint:
            if not image.command:
                raise InvalidArgumentError(
                    f"image {req.image!r} has no Entrypoint or Cmd to run; pass entrypoint= "
                    "instead of image_entrypoint=True"
                )
            entrypoint = image.command
        record = SandboxRecord(
            id=new_id("sb"),
            image=req.image,
            cpu=req.cpu,
            memory=req.memory,
            disk=req.disk,
            timeout=req.timeout,
            # The image's Env and WorkingDir are defaults; the caller's values win.
            env={**image.env, **req.env},
            workdir=req.workdir or image.workdir,
            tags=dict(req.tags),
            entrypoint=list(entrypoint) if entrypoint else None,
            created_at=time.time(),
            ports=[{"port": port, "public": public} for port, public in req.ports],
            access_token=_access_token(),
            volumes=dict(req.volumes),
            idle_timeout=req.idle_timeout,
            on_timeout=req.on_timeout,
            auto_resume=req.auto_resume,
        )
        record = await self._boot(record, image.lowerdirs, pooled=False, policy=req.policy)
        if record.status == "running":
            # Connected now, so that the sandbox is ready when create returns and its
            # first exec pays no handshake (the agent would have to come up either way).
            with stage("channel"), contextlib.suppress(AgentLost):
                await self.link(record.id)
        return await self._take_user(record, image.user)

    async def create_over(
        self,
        req: CreateRequest,
        lowerdirs: Sequence[Path],
        *,
        tags: Mapping[str, str],
        user: str | None = None,
    ) -> SandboxRecord:
        """A sandbox over explicit layers (an image being built): ``req.image`` only names it."""
        record = SandboxRecord(
            id=new_id("sb"), image=req.image, cpu=req.cpu, memory=req.memory, disk=req.disk,
            timeout=req.timeout, env=dict(req.env), workdir=req.workdir, tags=dict(tags),
            created_at=time.time(), access_token=_access_token(),
        )  # fmt: skip
        record = await self._boot(record, lowerdirs, pooled=False, policy=req.policy)
        return await self._take_user(record, user)

    async def _take_user(self, record: SandboxRecord, user: str | None) -> SandboxRecord:
        """Run the sandbox's commands as the image's USER, looked up in the image's own
        /etc/passwd and /etc/group (read inside the sandbox, so a symlink in the image
        cannot point the lookup at the host's files)."""
        if not user or user in ("root", "0", "0:0") or record.status != "running":
            return record
        try:
            passwd = await self._agent_read(record.id, "/etc/passwd")
            group = await self._agent_read(record.id, "/etc/group")
            uid, gid = resolve_user(user, passwd, group)
        except Exception:
            await self.terminate(record.id, reason="error", message=f"bad image user {user!r}")
            raise
        async with self._lock(record.id):
            record.user, record.uid, record.gid = user, uid, gid
            await self.store.put_sandbox(record)
        return record

    async def _agent_read(self, sandbox_id: str, path: str, limit: int = 1 << 20) -> str:
        """A small text file of the sandbox, read through its agent ("" if missing)."""
        link = await self.link(sandbox_id)
        ch = link.open()
        data = b""
        try:
            await ch.send_json(FrameType.FILE_READ, {"path": path})
            frame = await ch.recv()
            while frame.type == FrameType.DATA and len(data) < limit:
                data += frame.payload
                ch.grant(len(frame.payload))
                frame = await ch.recv()
        finally:
            ch.close()
        return data.decode(errors="replace")

    async def create_pooled(self, image_name: str, cpu: float, memory: int, disk: int) -> str:
        """Start a sandbox for a warm pool: running, but nobody's yet (status ``pooled``).

        It has no lifetime until :meth:`adopt` hands it to a caller; nothing lists it.
        """
        image = await self.images.ensure(image_name)
        record = SandboxRecord(
            id=new_id("sb"), image=image_name, cpu=cpu, memory=memory, disk=disk,
            timeout=0.0, status="starting", created_at=time.time(),
        )  # fmt: skip
        # Pooled sandboxes boot with the default policy; adopt() applies the caller's.
        await self._boot(record, image.layers, pooled=True, policy=NetworkPolicy())
        # Connected ahead too: the first exec of its user then pays no handshake.
        with contextlib.suppress(AgentLost):
            await self.link(record.id)
        return record.id

    async def adopt(self, sandbox_id: str, req: CreateRequest) -> SandboxRecord | None:
        """Hand a pooled sandbox to a caller, as if created now with ``req``.

        Returns None when it is no longer usable (it died while waiting).
        """
        async with self._lock(sandbox_id):
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or record.status != "pooled":
                return None
            if record.pid is None or not proc.pid_alive(record.pid):
                return None
            await self._apply_policy(record, req.policy, strict=False)
            record.ports = [{"port": port, "public": public} for port, public in req.ports]
            record.access_token = _access_token()
            now = time.time()
            record.env, record.tags = dict(req.env), dict(req.tags)
            record.workdir, record.timeout = req.workdir, req.timeout
            record.idle_timeout, record.on_timeout = req.idle_timeout, req.on_timeout
            record.auto_resume = req.auto_resume
            record.status = "running"
            record.created_at = record.started_at = now
            record.expires_at = now + req.timeout
            await self.store.put_sandbox(record)
        if req.workdir:
            await self._agent_mkdir(sandbox_id, req.workdir)
        self._deadline_changed.set()
        return record

    async def _agent_mkdir(self, sandbox_id: str, path: str) -> None:
        """mkdir -p inside the sandbox, through its agent (not through the host's view)."""
        link = await self.link(sandbox_id)
        ch = link.open()
        try:
            await ch.send_json(FrameType.FILE_MKDIR, {"path": path, "parents": True})
            frame = await ch.recv()
        finally:
            ch.close()
        if frame.type == FrameType.ERROR:
            raise InvalidArgumentError(f"cannot create workdir {path}: {frame.payload[:200]!r}")

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
        async with self._booting(record.id):
            with stage("store"):
                await self.store.put_sandbox(record)
            rootfs = RootFS(self.sandbox_dir(record.id))
            try:
                record.layers = [str(p) for p in layers]
                upper = restore.upper if restore is not None else None
                with stage("overlay"):
                    lowerdirs = await self._lowerdirs(record)
                    spare = self.spares.take_disk(record.disk) if upper is None else None
                    await rootfs.create(lowerdirs, record.disk, upper_from=upper, spare=spare)
                with stage("network"):
                    netns, etc_files, launcher = await self._attach_network(record, policy)
                    self.spares.network_taken()
                if record.workdir and restore is None:
                    # The working directory must exist before the init starts in it. The
                    # image's symlinks are resolved inside its root, never on the host.
                    try:
                        await asyncio.to_thread(makedirs_in_root, rootfs.merged, record.workdir)
                    except ValueError as exc:
                        raise InvalidArgumentError(f"workdir {exc}") from None
                checkpoint = restore.checkpoint if restore is not None else None
                running = await self._launch(record, rootfs, netns, etc_files, launcher, checkpoint)
            except Exception as exc:
                await self._cleanup(record.id)
                record.status, record.reason = "failed", "error"
                record.message = f"starting the sandbox failed: {exc}"
                record.ended_at = time.time()
                await self.store.put_sandbox(record)
                if isinstance(exc, InvalidArgumentError):
                    raise
                raise ServerError(f"starting sandbox {record.id} failed: {exc}") from exc
            record.started_at = time.time()
            if pooled:
                record.status = "pooled"
            else:
                record.status = "running"
                record.expires_at = record.started_at + record.timeout
            with stage("store"):
                await self.store.put_sandbox(record)
        if not running:
            # The entrypoint finished before we looked: record its end right away.
            await self._on_exit(record.id)
            return await self.get(record.id)
        self._watch(record)
        self._deadline_changed.set()
        return record

    async def _lowerdirs(self, record: SandboxRecord) -> tuple[Path, ...]:
        if self._agent_layer is None:
            self._agent_layer = await ensure_agent_layer(self.config.cache_dir)
        # The agent's layer goes on top, so /.stockade/agent exists in any image.
        return (self._agent_layer, *(Path(p) for p in record.layers))

    async def _launch(
        self,
        record: SandboxRecord,
        rootfs: RootFS,
        netns: Path | None,
        etc_files: Mapping[str, Path],
        launcher: Sequence[str],
        checkpoint: Path | None,
    ) -> bool:
        """Write the bundle and start (or restore) the runsc sandbox; whether it runs."""
        spec = bundle.container_spec(
            root=rootfs.merged,
            process=bundle.ProcessSpec(
                [AGENT_PATH, *(["--", *record.entrypoint] if record.entrypoint else [])],
                env=self.process_env(record),
                cwd=record.workdir or "/",
                max_processes=bundle.max_processes(record.memory),
            ),
            hostname=record.id,
            cpu=record.cpu,
            memory_mib=record.memory,
            cgroups_path=cgroups.cgroup_path(record.id),
            netns=netns,
            etc_files=etc_files,
            volumes={path: self.config.volume_mount(vid) for path, vid in record.volumes.items()},
        )
        bundle.write_json(rootfs.dir / "config.json", spec)
        with stage("runsc"):
            await self._start_runsc(record.id, rootfs.dir, launcher, checkpoint)
        record.pid = _read_pid(rootfs.dir / "pid")
        # The pid file saves a `runsc state` (a whole runsc process) per create.
        running = record.pid is not None and proc.pid_alive(record.pid)
        if not running and not record.entrypoint:
            tail = self._log_tail(record.id)
            raise ServerError(f"sandbox {record.id} stopped right after starting: {tail}")
        return running

    def oom_kills(self, sandbox_id: str) -> int:
        """OOM kills in the sandbox so far, also readable shortly after it died."""
        return cgroups.oom_kills(sandbox_id) or self._final_ooms.get(sandbox_id, 0)

    async def _attach_network(
        self, record: SandboxRecord, policy: NetworkPolicy
    ) -> tuple[Path | None, dict[str, Path], Sequence[str]]:
        """Give the sandbox its namespace, veth and rules; returns (netns, /etc files,
        runsc launcher). Without host networking the sandbox gets loopback only, and its
        record says why."""
        directory = self.sandbox_dir(record.id)
        hosts = directory / "hosts"
        hosts.write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\t{record.id}\n"
        )
        if not self.network.available:
            record.network = {
                "slot": None,
                "ip": None,
                "policy": NetworkPolicy(block_network=True).to_dict(),
                "reason": self.network.reason,
            }
            return None, {"/etc/hosts": hosts}, []
        slot = self.network.reserve()
        self._slots[record.id] = slot
        net = await self.network.attach(slot, policy)
        resolv = directory / "resolv.conf"
        resolv.write_text(f"nameserver {net.nameserver}\noptions timeout:2 attempts:2\n")
        record.network = {"slot": slot, "ip": net.ip, "policy": policy.to_dict(), "reason": None}
        files = {"/etc/hosts": hosts, "/etc/resolv.conf": resolv}
        return net.netns, files, self.network.runsc_prefix(directory / "netexec-scratch")

    async def _apply_policy(
        self, record: SandboxRecord, policy: NetworkPolicy, *, strict: bool = True
    ) -> None:
        """Make ``policy`` the sandbox's (the caller holds its lock and stores the record).

        A sandbox without a network stays blocked: an error when asked explicitly
        (``strict``), as on create otherwise (the record carries the reason).
        """
        net = record.network or {}
        slot = net.get("slot")
        if slot is None:
            if strict and policy.mode != "blocked":
                raise ConflictError(
                    f"sandbox {record.id} has no network: {net.get('reason')}; "
                    "it can only run with block_network=True"
                )
            return
        await self.network.set_policy(int(slot), policy)
        record.network = {**net, "policy": policy.to_dict()}

    async def set_network(self, sandbox_id: str, policy: NetworkPolicy) -> SandboxRecord:
        async with self._lock(sandbox_id):
            record = await self.get_running(sandbox_id)
            await self._apply_policy(record, policy)
            await self.store.put_sandbox(record)
        return record

    async def expose(self, sandbox_id: str, port: int, public: bool) -> SandboxRecord:
        async with self._lock(sandbox_id):
            record = await self.get_running(sandbox_id)
            record.ports = [p for p in record.ports if p["port"] != port]
            record.ports.append({"port": port, "public": public})
            record.ports.sort(key=lambda p: int(p["port"]))
            await self.store.put_sandbox(record)
        return record

    async def unexpose(self, sandbox_id: str, port: int) -> SandboxRecord:
        async with self._lock(sandbox_id):
            record = await self.get_running(sandbox_id)
            if not any(p["port"] == port for p in record.ports):
                raise NotFoundError(f"port {port} of sandbox {sandbox_id} is not exposed")
            record.ports = [p for p in record.ports if p["port"] != port]
            await self.store.put_sandbox(record)
        return record

    async def resolve(self, sandbox_id: str, port: int) -> PortTarget:
        """Where the port proxy sends traffic for ``port`` of a sandbox (PortTargets)."""
        record = await self.use(sandbox_id)
        exposed = next((p for p in record.ports if p["port"] == port), None)
        if exposed is None:
            listed = ", ".join(str(p["port"]) for p in record.ports) or "none"
            raise NotFoundError(
                f"port {port} of sandbox {sandbox_id} is not exposed (exposed: {listed}); "
                "create the sandbox with ports=[...] or call sb.expose(port)"
            )
        ip = (record.network or {}).get("ip")
        if NetworkPolicy.from_dict((record.network or {}).get("policy") or {}).block_network:
            raise ConflictError(
                f"sandbox {sandbox_id} runs with block_network=True, so nothing reaches it, "
                "not even its exposed ports; open it with set_network() first"
            )
        if not ip:
            raise ConflictError(
                f"sandbox {sandbox_id} has no network: {(record.network or {}).get('reason')}"
            )
        return PortTarget(
            host=str(ip), port=port, public=bool(exposed["public"]),
            access_token=record.access_token or "",
        )  # fmt: skip

    async def _start_runsc(
        self,
        sandbox_id: str,
        directory: Path,
        launcher: Sequence[str] = (),
        checkpoint: Path | None = None,
    ) -> None:
        """``runsc run`` with the agent's channel: two FIFOs the sandbox holds read-write.

        Holding both ends itself, the sandbox never sees EOF or EPIPE on them when a server
        goes away, and any later server can open them again (docs/agent-protocol.md).
        A restored agent may have been cut mid-frame, so its link resynchronises.
        """
        if checkpoint is None:
            self._fresh.add(sandbox_id)
        else:
            self._fresh.discard(sandbox_id)
        fifos = [directory / "agent.in", directory / "agent.out"]
        for fifo in fifos:
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
            os.mkfifo(fifo, 0o600)
        fds = [os.open(f, os.O_RDWR | os.O_CLOEXEC) for f in fifos]
        # Its stderr (the entrypoint's output) goes through a FIFO the server copies into
        # output.log with a cap, never straight into a file that could fill the disk.
        fds.append(self._output(sandbox_id).new_pipe())
        try:
            await self.runsc.run_detached(
                sandbox_id,
                directory,
                stdin=fds[0],
                stdout=fds[1],
                log=fds[2],
                launcher=launcher,
                checkpoint=checkpoint,
            )
        except RunscError as exc:
            raise RunscError(f"{exc}: {self._log_tail(sandbox_id)}") from None
        finally:
            for fd in fds:
                os.close(fd)

    async def link(self, sandbox_id: str) -> AgentLink:
        """The connected agent link of a running sandbox, connecting on first use."""
        current = self._links.get(sandbox_id)
        if current is not None and not current.dead:
            return current
        async with self._link_locks.setdefault(sandbox_id, asyncio.Lock()):
            current = self._links.get(sandbox_id)
            if current is not None and not current.dead:
                return current
            directory = self.sandbox_dir(sandbox_id)
            new = AgentLink(
                sandbox_id,
                directory / "agent.in",
                directory / "agent.out",
                on_entrypoint_exit=functools.partial(self._entry_codes.__setitem__, sandbox_id),
                on_protocol_error=functools.partial(self._agent_broke_protocol, sandbox_id),
            )
            self._links[sandbox_id] = new
            await new.connect(resync=sandbox_id not in self._fresh)
            self._fresh.discard(sandbox_id)
            return new

    def _agent_broke_protocol(self, sandbox_id: str, why: str) -> None:
        """The sandbox's agent (or what took its place) broke the channel protocol; its
        link is cut already. Nothing it sends can be trusted from now on: stop it."""
        self._spawn_task(self._fail_agent_protocol(sandbox_id, why))

    async def _fail_agent_protocol(self, sandbox_id: str, why: str) -> None:
        async with self._lock(sandbox_id):
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or not record.alive:
                return
            self._unwatch(sandbox_id)
            await self._cleanup(sandbox_id)
            record.status, record.reason = "failed", "agent_protocol"
            record.message = (
                f"its agent broke the channel protocol ({why}), so the sandbox was stopped"
            )
            record.ended_at = time.time()
            await self.store.put_sandbox(record)
            log.warning("sandbox %s ended: agent_protocol: %s", sandbox_id, why)
        self._ended(sandbox_id)

    def _drop_link(self, sandbox_id: str, reason: str) -> None:
        self._fresh.discard(sandbox_id)
        link = self._links.pop(sandbox_id, None)
        self._link_locks.pop(sandbox_id, None)
        if link is not None:
            link.close(reason)

    def process_env(
        self, record: SandboxRecord, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        env = dict(bundle.DEFAULT_ENV)
        env.update(record.env)
        if extra:
            env.update(extra)
        return env

    # ------------------------------------------------- pause, resume, checkpoints

    def checkpoint_dir(self, sandbox_id: str) -> Path:
        """A paused sandbox's saved memory (beside its disk, which keeps its files)."""
        return self.sandbox_dir(sandbox_id) / "checkpoint"

    async def fs_layers(self, sandbox_id: str) -> tuple[Path, tuple[Path, ...]]:
        """A running or paused sandbox's writes (its upper directory) and its image layers,
        top-first, without the agent's."""
        record = await self.get(sandbox_id)
        if record.status not in ("running", "paused"):
            await self.get_running(sandbox_id)  # raises, saying why
        return RootFS(self.sandbox_dir(sandbox_id)).upper, tuple(Path(p) for p in record.layers)

    @contextlib.asynccontextmanager
    async def frozen(self, sandbox_id: str) -> AsyncIterator[tuple[SandboxRecord, RootFS]]:
        """Hold a running sandbox still: every task frozen (so its memory and files agree)
        under its lock, thawed on the way out whatever happens."""
        async with self._lock(sandbox_id):
            record = await self.get_running(sandbox_id)
            await self.runsc.pause(sandbox_id)
            try:
                yield record, RootFS(self.sandbox_dir(sandbox_id))
            finally:
                try:
                    await self.runsc.resume(sandbox_id)
                except Exception:
                    log.exception("thawing sandbox %s", sandbox_id)

    async def pause(self, sandbox_id: str) -> SandboxRecord:
        """Save a running sandbox's memory to disk and stop it (status ``paused``).

        Crash-safe order: freeze, checkpoint into a temporary directory, rename it into
        place (from here the pause has happened), record ``paused``, then remove the runsc
        sandbox. :meth:`start` finishes or undoes a pause cut short at any step.
        """
        if (await self.get(sandbox_id)).status != "running":
            return await self._pause(sandbox_id)
        await self._hooks(self.before_pause, sandbox_id)
        try:
            return await self._pause(sandbox_id)
        finally:
            await self._hooks(self.after_pause, sandbox_id)

    async def _hooks(self, hooks: Sequence[Callable[[str], Awaitable[None]]], sid: str) -> None:
        for hook in hooks:
            try:
                await hook(sid)
            except Exception:
                log.exception("pause hook for sandbox %s", sid)

    async def _pause(self, sandbox_id: str) -> SandboxRecord:
        async with self._lock(sandbox_id):
            record = await self.get(sandbox_id)
            if record.status == "paused":
                return record
            record = await self.get_running(sandbox_id)
            final = self.checkpoint_dir(sandbox_id)
            tmp = final.with_name("checkpoint.tmp")
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            await self.runsc.pause(sandbox_id)
            try:
                tmp.mkdir()
                await self.runsc.checkpoint(sandbox_id, tmp)
                failpoint("pause.after-checkpoint")
                await asyncio.to_thread(os.rename, tmp, final)
                failpoint("pause.after-rename")
            except RunscError as exc:
                await asyncio.to_thread(shutil.rmtree, tmp, True)
                with contextlib.suppress(Exception):
                    await self.runsc.resume(sandbox_id)
                raise await self._checkpoint_failed(record, exc) from None
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, tmp, True)
                with contextlib.suppress(Exception):
                    await self.runsc.resume(sandbox_id)
                raise
            self._unwatch(sandbox_id)
            # The clock stops while paused: expires_at - paused_at is what resume grants.
            record.status, record.paused_at, record.pid = "paused", time.time(), None
            await self.store.put_sandbox(record)
            failpoint("pause.after-record")
            await self._stop_paused(record)
            log.info("sandbox %s paused", sandbox_id)
        self._deadline_changed.set()
        return record

    async def _checkpoint_failed(self, record: SandboxRecord, exc: RunscError) -> StockadeError:
        """Why a checkpoint failed: most often the sandbox died under it (its code ran out
        of memory while frozen pages were saved), which is the caller's to know, not a
        fault of the server's. Its exit watcher records the end a moment later."""
        sandbox_id = record.id
        state = await self.runsc.state(sandbox_id)
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

    async def _stop_paused(self, record: SandboxRecord) -> None:
        """Remove a paused sandbox's runsc sandbox, overlay and network; its disk and
        checkpoint stay for the resume (which gets a network again, maybe a new address)."""
        self._drop_link(record.id, f"sandbox {record.id} was paused")
        await self.runsc.delete(record.id)
        await RootFS(self.sandbox_dir(record.id)).unmount_overlay()
        await self._release_network(record)
        await self.store.put_sandbox(record)

    async def _release_network(self, record: SandboxRecord) -> None:
        """Give the sandbox's slot back and say so in its record (the caller stores it)."""
        await self._release_slot(record.id)
        if record.network is not None:
            record.network = {**record.network, "slot": None, "ip": None}

    async def _release_slot(self, sandbox_id: str) -> None:
        """Remove the sandbox's network namespace, veth and rules, if it has any."""
        slot = self._slots.pop(sandbox_id, None)
        if slot is not None:
            try:
                await self.network.release(slot)
            except Exception:
                log.exception("removing the network of sandbox %s", sandbox_id)

    async def resume(self, sandbox_id: str) -> SandboxRecord:
        """Bring a paused sandbox back: same ID, files, processes and network address.

        The checkpoint is removed only once the sandbox is recorded as running again, so
        a crash mid-resume leaves it paused (or, if runsc already runs it, running).
        """
        async with self._booting(sandbox_id):
            record = await self.get(sandbox_id)
            if record.status != "paused":
                return await self.get_running(sandbox_id)
            rootfs = RootFS(self.sandbox_dir(sandbox_id))
            await rootfs.mount(await self._lowerdirs(record))
            policy = NetworkPolicy.from_dict((record.network or {}).get("policy") or {})
            try:
                # A fresh namespace: gVisor takes its address from it again on restore.
                netns, etc_files, launcher = await self._attach_network(record, policy)
                await self._launch(
                    record, rootfs, netns, etc_files, launcher, self.checkpoint_dir(sandbox_id)
                )
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await self.runsc.delete(sandbox_id)
                await self._release_network(record)
                await rootfs.unmount_overlay()
                raise ServerError(f"resuming sandbox {sandbox_id} failed: {exc}") from exc
            failpoint("resume.after-restore")
            now = time.time()
            record.started_at, record.expires_at = now, now + _time_left(record)
            record.status, record.paused_at = "running", None
            await self.store.put_sandbox(record)
            await asyncio.to_thread(shutil.rmtree, self.checkpoint_dir(sandbox_id), True)
            self.touch(sandbox_id)
            log.info("sandbox %s resumed", sandbox_id)
        self._watch(record)
        self._deadline_changed.set()
        return record

    async def checkpoint_to(self, sandbox_id: str, dest: Path) -> SandboxRecord:
        """Save a running sandbox's memory (``dest/checkpoint``) and files (``dest/upper``)
        while it keeps running; returns its record as of the capture."""
        async with self.frozen(sandbox_id) as (record, rootfs):
            await rootfs.copy_upper(dest / "upper")
            (dest / "checkpoint").mkdir()
            try:
                await self.runsc.checkpoint(sandbox_id, dest / "checkpoint")
            except RunscError as exc:
                raise await self._checkpoint_failed(record, exc) from None
            failpoint("checkpoint.frozen")
        return record

    async def restore(
        self, source: SandboxRecord, saved: Checkpoint, req: CreateRequest
    ) -> SandboxRecord:
        """A new sandbox restored from ``saved``: ``source``'s image, limits, env, user and
        volumes, with ``req``'s tags, lifetimes and ports."""
        record = SandboxRecord(
            id=new_id("sb"), image=source.image, cpu=source.cpu, memory=source.memory,
            disk=source.disk, timeout=req.timeout, env=dict(source.env),
            workdir=source.workdir, tags=dict(req.tags), entrypoint=source.entrypoint,
            created_at=time.time(),
            # The restored servers still listen: their ports stay exposed unless the caller
            # names others.
            ports=[{"port": p, "public": pub} for p, pub in req.ports] or list(source.ports),
            access_token=_access_token(), user=source.user, uid=source.uid, gid=source.gid,
            volumes=dict(source.volumes), idle_timeout=req.idle_timeout,
            on_timeout=req.on_timeout, auto_resume=req.auto_resume,
        )  # fmt: skip
        policy = NetworkPolicy.from_dict((source.network or {}).get("policy") or {})
        layers = [Path(p) for p in source.layers]
        return await self._boot(record, layers, pooled=False, policy=policy, restore=saved)

    # -------------------------------------------------------------------- terminate

    async def terminate(
        self,
        sandbox_id: str,
        *,
        reason: str = "terminated",
        message: str | None = None,
        capture: Path | None = None,
    ) -> SandboxRecord:
        """End a sandbox (idempotent: an ended one is returned as it is).

        ``capture``: copy the sandbox's writes there first, as an image layer (builds).
        """
        async with self._lock(sandbox_id):
            found = await self.store.get_sandbox(sandbox_id)
            record = found if found is not None else await self.get(sandbox_id)
            if not record.alive and record.status != "paused":
                if capture is not None:
                    raise SandboxTerminatedError(describe_end(record))
                return record
            self._unwatch(sandbox_id)
            await self._cleanup(sandbox_id, capture=capture)
            record.status = "terminated"
            record.reason = reason
            record.message = message
            record.ended_at = time.time()
            await self.store.put_sandbox(record)
            log.info("sandbox %s ended: %s", sandbox_id, reason)
        self._ended(sandbox_id)
        return record

    async def _cleanup(self, sandbox_id: str, *, capture: Path | None = None) -> None:
        """Remove the runsc sandbox and the root filesystem; tolerate either being gone."""
        self._drop_link(sandbox_id, f"sandbox {sandbox_id} ended")
        try:
            await self.runsc.delete(sandbox_id)
        except Exception:
            # Never leave a sandbox running behind a record that says it ended: kill its
            # processes directly, then let runsc forget it.
            log.exception("deleting runsc sandbox %s; killing it directly", sandbox_id)
            pid = _read_pid(self.sandbox_dir(sandbox_id) / "pid")
            if pid is not None and proc.pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            with contextlib.suppress(Exception):
                await self.runsc.delete(sandbox_id)
        output = self._outputs.pop(sandbox_id, None)
        if output is not None:
            output.close()  # what the sandbox wrote last is in the FIFO still
        await self._release_slot(sandbox_id)
        rootfs = RootFS(self.sandbox_dir(sandbox_id))
        try:
            if capture is not None:
                await rootfs.capture_upper(capture)
        finally:
            await rootfs.destroy_keeping(("output.log", "output.log.1"))

    # ------------------------------------------------------- watching for the end

    def _watch(self, record: SandboxRecord) -> None:
        # A sandbox found again by a restarted server: copy its output from its FIFO.
        self._output(record.id).attach()
        if record.entrypoint:
            # Keep a link open: the agent reports the entrypoint's exit code over it,
            # whenever that happens. `runsc wait` below is the second witness.
            self._spawn_task(self._connect_quietly(record.id))
            fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self._exit_codes[record.id] = fut
            self._spawn_task(self._collect_exit_code(record.id, fut))
        self._watchers[record.id] = asyncio.create_task(
            self._watch_pid(record.id, record.pid or -1), name=f"watch-{record.id}"
        )

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _unwatch(self, sandbox_id: str) -> None:
        task = self._watchers.pop(sandbox_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        fut = self._exit_codes.pop(sandbox_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def _connect_quietly(self, sandbox_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.link(sandbox_id)

    async def _collect_exit_code(self, sandbox_id: str, fut: asyncio.Future[int | None]) -> None:
        """``runsc wait`` reports the init's exit status only while the sandbox lives."""
        import json

        p = await proc.spawn(
            self.runsc.wait_argv(sandbox_id),
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=proc.die_with_parent,
        )
        try:
            out = await p.stdout.read() if p.stdout else b""
            await proc.wait(p)
            code: int | None = None
            with contextlib.suppress(ValueError, KeyError, TypeError):
                code = int(json.loads(out)["exitStatus"])
            if not fut.done():
                fut.set_result(code)
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await proc.wait(p)
            raise

    async def _watch_pid(self, sandbox_id: str, pid: int) -> None:
        """Wait for the runsc sandbox process to exit, without polling (pidfd)."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = -1
        if fd >= 0:
            loop = asyncio.get_running_loop()
            gone = asyncio.Event()
            loop.add_reader(fd, gone.set)
            try:
                await gone.wait()
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        await self._on_exit(sandbox_id)

    async def _on_exit(self, sandbox_id: str) -> None:
        code: int | None = None
        link = self._links.get(sandbox_id)
        if link is not None and not link.dead:
            # The agent's ENTRYPOINT_EXIT may still be in flight on the channel.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.closed.wait(), 1.0)
        code = self._entry_codes.pop(sandbox_id, None)
        fut = self._exit_codes.get(sandbox_id)
        if fut is not None and code is None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                code = await asyncio.wait_for(asyncio.shield(fut), 2.0)
        record = await self.store.get_sandbox(sandbox_id)
        if code is None and self.reaper is not None and record is not None and record.pid:
            # `runsc wait` misses an init that exited before it asked; the sandbox
            # process, re-parented to us, carries the same status.
            code = await self.reaper.exit_code(record.pid)
        async with self._lock(sandbox_id):
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or not record.alive:
                return
            self._watchers.pop(sandbox_id, None)
            self._exit_codes.pop(sandbox_id, None)
            ooms = cgroups.oom_kills(sandbox_id)
            # runsc delete removes the cgroup; execs that end after it still ask.
            self._final_ooms[sandbox_id] = ooms
            if ooms > 0:
                record.status, record.reason = "failed", "oom"
                record.message = (
                    f"the sandbox ran out of memory (memory={record.memory} MiB) and was "
                    "killed; create it with a larger `memory=`"
                )
            elif record.entrypoint:
                record.status, record.reason, record.exit_code = "terminated", "exited", code
                record.message = f"the entrypoint exited with code {code}"
                if code in (126, 127):  # it could not even start: say why
                    record.message += f": {self._log_tail(sandbox_id, 300)}"
            else:
                record.status, record.reason = "failed", "error"
                record.message = _init_ended(code)
            await self._cleanup(sandbox_id)
            record.ended_at = time.time()
            await self.store.put_sandbox(record)
            log.info("sandbox %s ended: %s", sandbox_id, record.reason)
        self._ended(sandbox_id)

    def _ended(self, sandbox_id: str) -> None:
        """After a sandbox ended: its deadline is gone, and what others kept for it (the
        code service's contexts, say) can go, in the background."""
        self._deadline_changed.set()
        for hook in self.on_end:
            self._spawn_task(hook(sandbox_id))

    # --------------------------------------------------------------- timeouts
    #
    # One task, _expire_loop, applies every running sandbox's timeout and idle_timeout
    # (service/lifetimes.py holds the rules). It sleeps until the earliest deadline, then
    # looks again. Activity only ever moves a deadline later, so touch() is O(1) and wakes
    # nothing: a deadline that activity moved is found moved when the old one comes. What
    # can bring a deadline nearer wakes the loop (_deadline_changed): a sandbox starting or
    # resuming, set_timeout, and the last exec of a sandbox ending, if the idle deadline
    # that starts comes before the loop's next wake. Paused sandboxes have no clocks.

    def busy(self, sandbox_id: str) -> None:
        """An exec session started in the sandbox: it counts as active until the session
        ends (:meth:`idle_again`), however long the command runs."""
        self._busy[sandbox_id] = self._busy.get(sandbox_id, 0) + 1
        self.touch(sandbox_id)

    def idle_again(self, sandbox_id: str) -> None:
        """An exec session of the sandbox ended; once none is left, its idle clock runs
        again, from now."""
        self.touch(sandbox_id)
        left = self._busy.pop(sandbox_id, 0) - 1
        if left > 0:
            self._busy[sandbox_id] = left
            return
        limit = self._idle_limits.get(sandbox_id)
        if limit is not None and time.time() + limit < self._wake_at:
            self._deadline_changed.set()

    def _due(self, record: SandboxRecord, since: float) -> lifetimes.Deadline | None:
        return lifetimes.deadline(
            record,
            last_active=self._active.get(record.id),
            busy=self._busy.get(record.id, 0) > 0,
            since=since,
        )

    async def set_timeout(self, sandbox_id: str, seconds: float) -> SandboxRecord:
        """Make a running sandbox end ``seconds`` from now, sooner or later than it would
        have (E2B's setTimeout, Modal's set_timeout): ``timeout`` becomes ``seconds`` and
        ``expires_at`` now + ``seconds``. The HTTP layer checks the allowed range."""
        if not (math.isfinite(seconds) and seconds > 0):
            raise InvalidArgumentError(f"timeout={seconds:g} must be a positive number of seconds")
        async with self._lock(sandbox_id):
            record = await self.get_running(sandbox_id)
            record.timeout = seconds
            record.expires_at = time.time() + seconds
            await self.store.put_sandbox(record)
        # Asking for more time is using the sandbox.
        self.touch(sandbox_id)
        self._deadline_changed.set()
        return record

    async def _expire_loop(self) -> None:
        since = time.time()  # activity from before this server started is unknown
        while True:
            # Anything that moves a deadline while this pass looks wakes it again.
            self._wake_at = math.inf
            self._deadline_changed.clear()
            try:
                self._wake_at = await self._expire_due(since)
            except Exception:
                log.exception("checking the sandboxes' timeouts")
                self._wake_at = time.time() + 1.0
            # asyncio.timeout, not wait_for: wait_for (3.11) swallows a cancel that comes as
            # the event is set (as an ending _expire does), and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self._wake_at - time.time())):
                    await self._deadline_changed.wait()

    async def _expire_due(self, since: float) -> float:
        """Start applying the deadlines that have passed; returns when the next one comes."""
        started = time.time()
        running = await self.store.list_sandboxes("running")
        now = time.time()
        self._idle_limits = {r.id: r.idle_timeout for r in running if r.idle_timeout > 0}
        next_at = now + 60.0
        for r in running:
            due = None if r.id in self._expiring else self._due(r, since)
            if due is None:
                continue
            if due.at <= now:
                self._expiring.add(r.id)
                self._spawn_task(self._expire(r.id, since))
            else:
                next_at = min(next_at, due.at)
        # Forget the activity of sandboxes no longer running (unless noted since we looked).
        ids = {r.id for r in running}
        for sid in [s for s, t in self._active.items() if t < started and s not in ids]:
            del self._active[sid]
        return next_at

    async def _expire(self, sandbox_id: str, since: float) -> None:
        """Apply ``on_timeout`` to a sandbox the loop saw past its deadline, unless activity
        or set_timeout has moved the deadline since (the loop works from a snapshot)."""
        try:
            record = await self.store.get_sandbox(sandbox_id)
            if record is None or record.status != "running":
                return
            due = self._due(record, since)
            if due is None or due.at > time.time():
                return
            message = lifetimes.end_message(record, due.reason)
            if record.on_timeout == "pause":
                try:
                    await self._pause_at(record, due.reason)
                    return
                except Exception as exc:
                    log.exception(
                        "pausing sandbox %s at its %s failed; terminating it", sandbox_id,
                        due.reason,
                    )  # fmt: skip
                    message += f" (pausing it instead failed: {exc})"
            await self.terminate(sandbox_id, reason=due.reason, message=message)
        except Exception:
            log.exception("expiring sandbox %s", sandbox_id)
        finally:
            self._expiring.discard(sandbox_id)
            self._deadline_changed.set()

    async def _pause_at(self, record: SandboxRecord, reason: str) -> None:
        """Pause a sandbox whose ``timeout`` or ``idle_timeout`` has come (on_timeout="pause")."""
        if reason == "timeout":
            # pause() keeps what is left of the timeout for the resume, which here would be
            # nothing: a sandbox paused at its timeout gets the whole of it again. Set here,
            # before the pause: a resume right after it cannot miss it, and should the
            # server die in between, the sandbox still has a deadline.
            async with self._lock(record.id):
                current = await self.get(record.id)
                if current.status != "running":
                    return  # paused or ended meanwhile: nothing left to do
                current.expires_at = time.time() + current.timeout
                await self.store.put_sandbox(current)
        await self.pause(record.id)
        log.info("sandbox %s paused at its %s", record.id, reason)

    # ------------------------------------------------------------------ retention

    async def purge(self, now: float | None = None) -> Sequence[str]:
        """Forget the ended sandboxes that have been over for longer than the server's
        ``retention`` (0: keep them forever): their records and their directories (the
        log). Returns their IDs.

        Example::

            purged = await service.purge()
        """
        retention = self.config.retention
        if retention <= 0:
            return []
        now = time.time() if now is None else now
        ended = [r for status in lifetimes.ENDED for r in await self.store.list_sandboxes(status)]
        purged: list[str] = []
        for stale in lifetimes.purgeable(ended, retention=retention, now=now):
            async with self._lock(stale.id):
                record = await self.store.get_sandbox(stale.id)
                if record is None or record.status not in lifetimes.ENDED:
                    continue
                # The directory first: a crash in between leaves a record to purge again,
                # never a directory that nothing refers to.
                await RootFS(self.sandbox_dir(stale.id)).destroy_keeping(())
                await self.store.delete_sandbox(stale.id)
            for state in (self._locks, self._active, self._final_ooms):
                state.pop(stale.id, None)
            purged.append(stale.id)
        if purged:
            log.info("purged %d sandboxes ended more than %gs ago", len(purged), retention)
        return purged

    async def _purge_loop(self) -> None:
        if self.config.retention <= 0:
            return
        every = lifetimes.purge_interval(self.config.retention)
        while True:
            try:
                await self.purge()
            except Exception:
                log.exception("purging ended sandboxes")
            await asyncio.sleep(every)

    # ------------------------------------------------------------ start / stop

    async def start(self) -> None:
        """Reconcile records with runsc and the network, then start the timeout loop."""
        await self.network.start()
        known = {s.id: s for s in await self.runsc.list()}
        for record in await self.store.list_sandboxes():
            slot = (record.network or {}).get("slot")
            if slot is not None and (record.alive or record.status == "paused"):
                # (A paused one holds a slot only if a crash cut its pause short.)
                self._slots[record.id] = int(slot)
            state = known.get(record.id)
            if record.status == "paused" or (
                record.status == "running" and state is not None and state.status == "paused"
            ):
                await self._recover_pause(record, state)
                continue
            if not record.alive:
                continue
            rootfs = RootFS(self.sandbox_dir(record.id))
            if state is not None and state.status == "running" and not proc.pid_alive(state.pid):
                # runsc keeps saying "running" while a gofer lingers; the sandbox is gone.
                state = None
            usable = state is not None and state.status == "running" and rootfs.is_mounted()
            if usable and record.status != "starting":
                assert state is not None
                record.pid = state.pid
                await self.store.put_sandbox(record)
                self._watch(record)
                continue
            await self._cleanup(record.id)
            was_starting = record.status == "starting"
            record.status, record.reason = "failed", "error"
            if state is None:
                record.message = "the sandbox's runsc sandbox vanished while the server was down"
            elif was_starting:
                # Its create (or restore, or fork) never answered: nobody holds its ID.
                record.message = "the server stopped while the sandbox was starting"
            else:
                record.message = f"the sandbox was {state.status} when the server restarted"
            record.ended_at = time.time()
            await self.store.put_sandbox(record)
            log.warning("sandbox %s: %s", record.id, record.message)
        # runsc sandboxes that have no live record (e.g. the server died mid-create).
        records = await self.store.list_sandboxes()
        alive_ids = {r.id for r in records if r.alive or r.status == "paused"}
        for sid in known:
            if sid not in alive_ids:
                await self._cleanup(sid)
        live = [r for r in records if r.alive and r.network]
        slots = [int(n["slot"]) for r in records if (n := r.network or {}).get("slot")]
        await self.network.install(
            (
                (int(r.network["slot"]), NetworkPolicy.from_dict(r.network["policy"]))
                for r in live
                if r.network and r.network.get("slot") is not None
            ),
            last_slot=max(slots, default=0),
        )
        self._timer = asyncio.create_task(self._expire_loop(), name="expire-loop")
        self._purger = asyncio.create_task(self._purge_loop(), name="purge-loop")
        self._dozing_task = asyncio.create_task(self.dozer.run(), name="doze-loop")
        await self.spares.start()

    async def _recover_pause(self, record: SandboxRecord, state: SandboxState | None) -> None:
        """Finish or undo a pause, snapshot or resume that a crash cut short.

        A frozen runsc sandbox (status ``paused``) was being checkpointed: if its
        checkpoint made it into place, the pause happened; otherwise it thaws and runs on.
        A paused record whose runsc sandbox runs was being resumed: it is running.
        """
        sid = record.id
        complete = await asyncio.to_thread(self.checkpoint_dir(sid).is_dir)
        await asyncio.to_thread(
            shutil.rmtree, self.checkpoint_dir(sid).with_name("checkpoint.tmp"), True
        )
        live = state is not None and proc.pid_alive(state.pid)
        if record.status == "paused" and live and state is not None and state.status == "running":
            now = time.time()
            record.started_at, record.expires_at = now, now + _time_left(record)
            record.status, record.paused_at, record.pid = "running", None, state.pid
            await self.store.put_sandbox(record)
            await asyncio.to_thread(shutil.rmtree, self.checkpoint_dir(sid), True)
            self._watch(record)
            log.warning("sandbox %s: a resume was cut short; it is running", sid)
            return
        if record.status == "running" and not complete and live:
            await self.runsc.resume(sid)
            record.pid = state.pid if state is not None else None
            await self.store.put_sandbox(record)
            self._watch(record)
            log.warning("sandbox %s: a pause or snapshot was cut short; it runs on", sid)
            return
        if complete:
            if record.status != "paused":
                record.status, record.paused_at, record.pid = "paused", time.time(), None
                await self.store.put_sandbox(record)
                log.warning("sandbox %s: a pause was cut short after its checkpoint", sid)
            with contextlib.suppress(Exception):
                await self._stop_paused(record)
            return
        # Neither running nor saved: nothing to come back to.
        await self._cleanup(sid)
        record.status, record.reason = "failed", "error"
        record.message = "the sandbox was lost while paused: its checkpoint is missing"
        record.ended_at = time.time()
        await self.store.put_sandbox(record)
        log.warning("sandbox %s: %s", sid, record.message)

    async def stop(self) -> None:
        """Stop watching; the sandboxes themselves keep running for the next server."""
        loops = (self._timer, self._purger, self._dozing_task)
        tasks = [t for t in (*loops, *self._watchers.values(), *self._background) if t is not None]
        for fut in self._exit_codes.values():
            fut.cancel()
        for sid in list(self._links):
            self._drop_link(sid, "the server is shutting down")
        for output in self._outputs.values():
            output.close()  # the next server reads on from the FIFO
        self._outputs.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.spares.stop()
        await self.network.stop()


def _init_ended(code: int | None) -> str:
    """Why a sandbox without an entrypoint ended by itself: its init, the agent, is gone.
    Root in the sandbox may kill it (``kill -9 1``); the message says so, since nothing
    else ends such a sandbox but a crash."""
    what = "the sandbox's init, the Stockade agent (PID 1),"
    signo = -code if code is not None and code < 0 else (code or 0) - 128
    if code is not None and 0 < signo < 65:
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = f"signal {signo}"
        return (
            f"{what} was killed by {name}: code in the sandbox killed it, or it crashed; "
            "a sandbox ends with its agent"
        )
    if code is not None:
        return f"{what} exited with code {code}; a sandbox ends with its agent"
    return f"{what} ended without an exit status (its runsc process exited unexpectedly)"


def _access_token() -> str:
    return "sat_" + secrets.token_urlsafe(24)


def describe_end(record: SandboxRecord) -> str:
    """Why a sandbox is not running, in words that suggest what to do next."""
    base = f"sandbox {record.id} was {record.status}"
    if record.reason:
        base += f" ({record.reason})"
    if record.message:
        base += f": {record.message}"
    return base + "; create a new sandbox to continue"


def _time_left(record: SandboxRecord) -> float:
    """What a paused sandbox had left of its timeout when it paused (its clock stopped)."""
    if record.expires_at is None or record.paused_at is None:
        return record.timeout
    return max(1.0, record.expires_at - record.paused_at)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _tail(directory: Path, limit: int = 1500) -> str:
    """The end of a sandbox's output as text; reads only those bytes."""
    return read_tail(directory, limit).decode(errors="replace").strip()
