"""Launching a sandbox and taking it apart: its directory, network, bundle, the runsc
sandbox with its agent FIFOs, and the agent link over them.

Nothing here decides what state a sandbox is in: the state machine (service.py) calls
these steps under the sandbox's lock and records what they did.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

from ....errors import ConflictError, InvalidArgumentError, NotFoundError, ServerError
from ...agent.protocol import FrameType
from ...config import ServerConfig
from ...network.manager import NetworkManager
from ...network.policy import NetworkPolicy
from ...runtime import bundle, cgroups, proc
from ...runtime.agent_layer import AGENT_PATH, ensure_agent_layer
from ...runtime.agent_link import AgentLink
from ...runtime.output_log import OutputLog, read_tail
from ...runtime.rootfs import RootFS
from ...runtime.runsc import Runsc, RunscError
from ...state.records import NetworkAttachment, SandboxRecord
from ..boot_reserve import BootReserve
from ..stages import stage
from ..usage import Meter
from .live import LiveSandbox, LiveSandboxes

__all__ = ["Launcher", "read_pid"]

log = logging.getLogger(__name__)

_SANDBOX_ID = re.compile(r"sb-[A-Za-z0-9_-]{1,64}")  # no "/" nor "..": one name


class Launcher:
    """The steps that start and remove a sandbox's runsc sandbox, network and files."""

    def __init__(
        self,
        config: ServerConfig,
        runtime: Runsc,
        network: NetworkManager,
        live: LiveSandboxes,
        meter: Meter,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.network = network
        self.live = live
        self.meter = meter
        self._agent_layer: Path | None = None
        self._boot_slots = asyncio.Semaphore(2 * (os.cpu_count() or 1))
        self._boots = 0  # boots holding or waiting for a slot
        self._no_boots = asyncio.Event()  # set while _boots is 0
        self._no_boots.set()
        self.reserve = BootReserve(config.spares_dir, network, idle=self._no_boots)
        # Told when a sandbox's agent broke the channel protocol (its link is cut already).
        self.on_protocol_error: Callable[[str, str], None] = lambda sid, why: None
        config.sandboxes_dir.mkdir(parents=True, exist_ok=True)
        config.runsc_root.mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- paths & output

    def sandbox_dir(self, sandbox_id: str) -> Path:
        # IDs reach here from URLs: only one of our own shape may become a host path.
        if not _SANDBOX_ID.fullmatch(sandbox_id):
            raise NotFoundError(f"sandbox {sandbox_id[:80]!r} does not exist")
        return self.config.sandboxes_dir / sandbox_id

    def rootfs(self, sandbox_id: str) -> RootFS:
        return RootFS(self.sandbox_dir(sandbox_id))

    def output(self, sandbox_id: str) -> OutputLog:
        live = self.live[sandbox_id]
        if live.output is None:
            live.output = OutputLog(self.sandbox_dir(sandbox_id), self.config.max_log_bytes)
        return live.output

    def log_tail(self, sandbox_id: str, limit: int = 1500) -> str:
        """The end of the sandbox's output, with what its FIFO still holds copied first."""
        live = self.live.get(sandbox_id)
        if live is not None and live.output is not None:
            live.output.drain()
        return read_tail(self.sandbox_dir(sandbox_id), limit).decode(errors="replace").strip()

    def oom_kills(self, sandbox_id: str) -> int:
        """OOM kills in the sandbox so far, also readable shortly after it died."""
        live = self.live.get(sandbox_id)
        return cgroups.oom_kills(sandbox_id) or (live.final_ooms if live is not None else 0)

    # ----------------------------------------------------------------------- booting

    @contextlib.asynccontextmanager
    async def booting(self, sandbox_id: str) -> AsyncIterator[None]:
        """Hold a boot slot and the sandbox's lock. Starting a sandbox is CPU-heavy (mkfs,
        mounts, runsc): a burst of creates waits here in order instead of making every one
        of them slow enough to time out."""
        self._boots += 1
        self._no_boots.clear()
        try:
            with stage("queue"):
                await self._boot_slots.acquire()
            try:
                async with self.live[sandbox_id].lock:
                    yield
            finally:
                self._boot_slots.release()
        finally:
            self._boots -= 1
            if not self._boots:
                self._no_boots.set()

    async def lowerdirs(self, record: SandboxRecord) -> tuple[Path, ...]:
        if self._agent_layer is None:
            self._agent_layer = await ensure_agent_layer(self.config.cache_dir)
        # The agent's layer goes on top, so /.stockade/agent exists in any image.
        return (self._agent_layer, *(Path(p) for p in record.layers))

    def process_env(
        self, record: SandboxRecord, extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        env = dict(bundle.DEFAULT_ENV)
        env.update(record.env)
        if extra:
            env.update(extra)
        return env

    async def launch(
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
        record.pid = read_pid(rootfs.dir / "pid")
        # The pid file saves a `runsc state` (a whole runsc process) per create.
        running = record.pid is not None and proc.pid_alive(record.pid)
        if not running and not record.entrypoint:
            tail = self.log_tail(record.id)
            raise ServerError(f"sandbox {record.id} stopped right after starting: {tail}")
        return running

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
        self.live[sandbox_id].fresh = checkpoint is None
        fifos = [directory / "agent.in", directory / "agent.out"]
        for fifo in fifos:
            with contextlib.suppress(FileNotFoundError):
                fifo.unlink()
            os.mkfifo(fifo, 0o600)
        fds = [os.open(f, os.O_RDWR | os.O_CLOEXEC) for f in fifos]
        # Its stderr (the entrypoint's output) goes through a FIFO the server copies into
        # output.log with a cap, never straight into a file that could fill the disk.
        fds.append(self.output(sandbox_id).new_pipe())
        try:
            await self.runtime.run_detached(
                sandbox_id,
                directory,
                stdin=fds[0],
                stdout=fds[1],
                log=fds[2],
                launcher=launcher,
                checkpoint=checkpoint,
            )
        except RunscError as exc:
            raise RunscError(f"{exc}: {self.log_tail(sandbox_id)}") from None
        finally:
            for fd in fds:
                os.close(fd)

    # ----------------------------------------------------------------------- network

    async def attach_network(
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
            record.network = NetworkAttachment(
                slot=None,
                ip=None,
                policy=NetworkPolicy(block_network=True).to_dict(),
                reason=self.network.reason,
            )
            return None, {"/etc/hosts": hosts}, []
        slot = self.network.reserve()
        self.live[record.id].slot = slot
        net = await self.network.attach(slot, policy)
        resolv = directory / "resolv.conf"
        resolv.write_text(f"nameserver {net.nameserver}\noptions timeout:2 attempts:2\n")
        record.network = NetworkAttachment(slot, net.ip, policy.to_dict())
        files = {"/etc/hosts": hosts, "/etc/resolv.conf": resolv}
        return net.netns, files, self.network.runsc_prefix(directory / "netexec-scratch")

    async def apply_policy(
        self, record: SandboxRecord, policy: NetworkPolicy, *, strict: bool = True
    ) -> None:
        """Make ``policy`` the sandbox's (the caller holds its lock and stores the record).

        A sandbox without a network stays blocked: an error when asked explicitly
        (``strict``), as on create otherwise (the record carries the reason).
        """
        net = record.network
        if net is None or net.slot is None:
            if strict and policy.mode != "blocked":
                raise ConflictError(
                    f"sandbox {record.id} has no network: {net.reason if net else None}; "
                    "it can only run with block_network=True"
                )
            return
        await self.network.set_policy(net.slot, policy)
        net.policy = policy.to_dict()

    async def release_network(self, record: SandboxRecord) -> None:
        """Give the sandbox's slot back and say so in its record (the caller stores it)."""
        await self._release_slot(record.id)
        if record.network is not None:
            record.network.slot = record.network.ip = None

    async def _release_slot(self, sandbox_id: str) -> None:
        """Remove the sandbox's network namespace, veth and rules, if it has any."""
        live = self.live.get(sandbox_id)
        slot = live.slot if live is not None else None
        if live is not None and slot is not None:
            live.slot = None
            try:
                await self.network.release(slot)
            except Exception:
                log.exception("removing the network of sandbox %s", sandbox_id)

    # -------------------------------------------------------------------- agent link

    async def link(self, sandbox_id: str) -> AgentLink:
        """The connected agent link of a running sandbox, connecting on first use."""
        live = self.live[sandbox_id]
        if live.link is not None and not live.link.dead:
            return live.link
        async with live.link_lock:
            if live.link is not None and not live.link.dead:
                return live.link
            directory = self.sandbox_dir(sandbox_id)
            new = AgentLink(
                sandbox_id,
                directory / "agent.in",
                directory / "agent.out",
                on_entrypoint_exit=functools.partial(_note_entry_code, live),
                on_protocol_error=functools.partial(self.on_protocol_error, sandbox_id),
            )
            live.link = new
            await new.connect(resync=not live.fresh)
            live.fresh = False
            return new

    async def agent_read(
        self, sandbox_id: str, path: str, limit: int = 1 << 20, timeout: float = 10.0
    ) -> str:
        """A small text file of the sandbox, read through its agent ("" if missing).

        The file is the sandbox's to make: a FIFO with a writer that never writes, or one
        that trickles, must not hold the caller (a create, an exec with ``user=``) forever,
        so the whole read has a deadline.
        """
        link = await self.link(sandbox_id)
        ch = link.open()
        data = b""

        async def read() -> None:
            nonlocal data
            await ch.send_json(FrameType.FILE_READ, {"path": path})
            frame = await ch.recv()
            while frame.type == FrameType.DATA and len(data) < limit:
                data += frame.payload
                ch.grant(len(frame.payload))
                frame = await ch.recv()

        try:
            await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            raise InvalidArgumentError(
                f"reading {path} in sandbox {sandbox_id} took longer than {timeout:g} s (is it "
                "a FIFO or a device?); make it a regular file"
            ) from None
        finally:
            ch.close()
        return data.decode(errors="replace")

    async def agent_mkdir(self, sandbox_id: str, path: str) -> None:
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

    def drop_link(self, sandbox_id: str, reason: str) -> None:
        live = self.live.get(sandbox_id)
        if live is None:
            return
        live.fresh = False
        link, live.link = live.link, None
        live.link_lock = asyncio.Lock()
        if link is not None:
            link.close(reason)

    # ----------------------------------------------------------------------- removal

    async def cleanup(self, sandbox_id: str, *, capture: Path | None = None) -> None:
        """Remove the runsc sandbox and the root filesystem; tolerate either being gone.

        ``capture``: copy the sandbox's writes there first, as an image layer (builds).
        """
        # Its last interval is billed first: deleting the runsc sandbox removes the cgroup
        # that counts its CPU.
        self.meter.end(sandbox_id)
        self.drop_link(sandbox_id, f"sandbox {sandbox_id} ended")
        try:
            await self.runtime.delete(sandbox_id)
        except Exception:
            # Never leave a sandbox running behind a record that says it ended: kill its
            # processes directly, then let runsc forget it.
            log.exception("deleting runsc sandbox %s; killing it directly", sandbox_id)
            pid = read_pid(self.sandbox_dir(sandbox_id) / "pid")
            if pid is not None and proc.pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            with contextlib.suppress(Exception):
                await self.runtime.delete(sandbox_id)
        live = self.live.get(sandbox_id)
        if live is not None and live.output is not None:
            live.output.close()  # what the sandbox wrote last is in the FIFO still
            live.output = None
        await self._release_slot(sandbox_id)
        rootfs = self.rootfs(sandbox_id)
        try:
            if capture is not None:
                await rootfs.capture_upper(capture)
        finally:
            await rootfs.destroy_keeping(("output.log", "output.log.1"))

    def stop(self) -> None:
        """Let go of every link and output copier; the sandboxes keep running for the next
        server, which reads on from their FIFOs."""
        for live in self.live:
            self.drop_link(live.id, "the server is shutting down")
            if live.output is not None:
                live.output.close()
                live.output = None


def _note_entry_code(live: LiveSandbox, code: int) -> None:
    """The agent reported the entrypoint's exit code over its channel."""
    live.entry_code = code


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
