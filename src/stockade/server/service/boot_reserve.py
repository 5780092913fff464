"""Boot resources made ahead of need: mounted disks and network slots.

A cold create spends about 40 ms of its time before runsc starts on work that does not
depend on the request: making and loop-mounting the sandbox's ext4 disk (mkfs, mount) and
setting up its network namespace, veth and rules (``ip`` twice, ``nft``). :class:`BootReserve`
keeps a few of each ready, for the default disk size and the default network policy, so
that a create only renames a directory and, when its policy differs, rewrites its rules.

They are not warm sandboxes: nothing runs in them and nobody has used them, and they hold
no memory. The refill waits until no sandbox is booting and runs its commands at the
lowest CPU priority, so that it never takes the cores from the creates it is meant to speed
up, nor from their first commands; under a burst the creates that find no spare simply
make their own, as before. A spare from a server that stopped is removed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
from pathlib import Path

from ..network.manager import NetworkManager
from ..runtime import proc
from ..runtime.rootfs import DEFAULT_DISK_MIB, RootFS

__all__ = ["SPARES", "BootReserve"]

log = logging.getLogger(__name__)

# How many of each to keep: a create and a pool refill arriving together both find one.
SPARES = 2


class BootReserve:
    """Keeps :data:`SPARES` disks and network slots ready. Use from the event loop."""

    def __init__(
        self,
        directory: Path,
        network: NetworkManager,
        *,
        idle: asyncio.Event,
        count: int = SPARES,
        disk_mib: int = DEFAULT_DISK_MIB,
    ) -> None:
        self.dir = directory
        self.network = network
        self.disk_mib = disk_mib
        self.count = count
        self._idle = idle  # set while no sandbox is booting
        self._disks: list[RootFS] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._remove_leftovers()
        if self.count > 0:
            self._task = asyncio.create_task(self._fill_loop(), name="spares-fill")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._disks:
            await self._disks.pop().destroy()
        # The spare network slots go with NetworkManager.stop, which runs after this.

    def take_disk(self, disk_mib: int) -> RootFS | None:
        """A mounted disk of ``disk_mib`` for :meth:`RootFS.create`, or None."""
        if disk_mib != self.disk_mib or not self._disks:
            return None
        self._wake.set()
        return self._disks.pop()

    def network_taken(self) -> None:
        """A boot may have used a spare slot (NetworkManager.reserve): top them up."""
        self._wake.set()

    @property
    def ready(self) -> tuple[int, int]:
        """(disks, network slots) ready now."""
        return len(self._disks), self.network.spares

    def _short(self) -> bool:
        disks, slots = self.ready
        return disks < self.count or (self.network.available and slots < self.count)

    async def _fill_loop(self) -> None:
        while True:
            self._wake.clear()
            while self._short():
                await self._idle.wait()
                try:
                    with proc.background():
                        await self._make_one()
                except Exception:
                    log.exception("preparing a spare disk or network slot")
                    await asyncio.sleep(5)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30.0):
                    await self._wake.wait()

    async def _make_one(self) -> None:
        if len(self._disks) < self.count:
            disk = RootFS(self.dir / secrets.token_hex(6))
            await disk.make_spare(self.disk_mib)
            self._disks.append(disk)
        if self.network.available and self.network.spares < self.count:
            await self.network.make_spare()

    async def _remove_leftovers(self) -> None:
        if not self.dir.exists():
            return
        for child in await asyncio.to_thread(lambda: list(self.dir.iterdir())):
            await RootFS(child).destroy()
        await asyncio.to_thread(shutil.rmtree, self.dir, True)
