"""Named persistent volumes (``vol-…``): a size-limited disk each, bound into sandboxes.

Layout of one volume::

    <volumes dir>/<id>/disk.img   sparse ext4 file, the volume's size
    <volumes dir>/<id>/mnt/       disk.img loop-mounted (nosuid, nodev): what sandboxes bind

A filesystem of its own per volume is what keeps a full volume from hurting anything
else: writes past its size fail with ENOSPC inside the sandboxes that mount it, and the
host keeps only what was written (the file is sparse). Sandboxes bind ``mnt`` read-write
and gVisor's gofer serves it, resolving every symlink and ``..`` inside the sandbox's own
view, so nothing in a volume leads to the host's files.

Crash safety: a volume is made under a temporary name (``.new-<id>``), renamed to
``<id>``, and only then recorded; deleting forgets the record first, then renames the
directory to ``.gone-<id>`` and removes it. A record therefore always means a whole
volume, and a directory without one is garbage that :meth:`VolumeService.start` removes
(after unmounting it). Mounts outlive the server process, so sandboxes keep their volumes
across a restart, even a ``kill -9``.

Concurrency: one asyncio.Lock serialises create and delete, because names are unique
within a tenant (each tenant names its own volumes; the store's ``put_volume`` replaces a
row of the same tenant and name) and the space check
must see the volumes being made. Lookups take no lock. A tenant's ``max_disk`` (quotas.py)
counts a volume's whole size, checked before its disk is made.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import os
import posixpath
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from ...errors import ConflictError, InvalidArgumentError, NotFoundError, ServerError
from ..config import ServerConfig
from ..runtime import proc
from ..runtime.rootfs import make_disk, mount_disk
from ..state.ids import new_id
from ..state.records import SandboxStatus, VolumeRecord
from ..state.store import Store
from .quotas import Quotas

__all__ = [
    "DEFAULT_SIZE_MIB",
    "IN_USE",
    "MAX_MOUNTS",
    "SIZE_RANGE_MIB",
    "VolumeService",
    "check_mount_path",
    "check_name",
]

log = logging.getLogger(__name__)

DEFAULT_SIZE_MIB = 1024
# ext4 needs a few MiB for itself; above 1 TiB a mistake is likelier than a need.
SIZE_RANGE_MIB = (16, 1024 * 1024)
MAX_MOUNTS = 16
# Sandboxes in these states have (or, paused, will have again) their volumes mounted.
IN_USE = (
    SandboxStatus.STARTING, SandboxStatus.RUNNING, SandboxStatus.POOLED, SandboxStatus.PAUSED
)

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_ID_SHAPE = re.compile(r"vol-[0-9a-f]{16}")
# Mount points that belong to the sandbox's runtime: the kernel's filesystems and the agent.
_RESERVED_TREES = ("/proc", "/dev", "/sys", "/.stockade")
# Files the server binds over the image's (see Launcher.attach_network).
_RESERVED_FILES = ("/etc/hosts", "/etc/resolv.conf")
_MAX_PATH = 1024
_MIB = 1024 * 1024


def check_name(name: str) -> None:
    """A volume name: 1–63 of ``a-z 0-9 . _ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"volume name {name!r} is not valid: use 1–63 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (e.g. 'data' or 'model-cache')"
        )
    if _ID_SHAPE.fullmatch(name):
        # Lookups take a name or an ID; a name shaped like an ID would make them ambiguous.
        raise InvalidArgumentError(
            f"volume name {name!r} looks like a volume ID; pick a name without the 'vol-' form"
        )


def check_size(size_mib: int) -> None:
    lo, hi = SIZE_RANGE_MIB
    if isinstance(size_mib, bool) or not isinstance(size_mib, int) or not lo <= size_mib <= hi:
        raise InvalidArgumentError(
            f"volume size={size_mib!r} is out of range; allowed: {lo}–{hi} MiB (1 TiB)"
        )


def check_mount_path(path: str) -> None:
    """Where a volume may be mounted: an absolute, normalised path that hides nothing the
    sandbox's runtime or the server provides."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgumentError(
            f"volume mount path {path!r} must be an absolute path such as '/data'"
        )
    if len(path) > _MAX_PATH or any(ord(c) < 32 or c == "\x7f" for c in path):
        raise InvalidArgumentError(
            f"volume mount path {path[:80]!r} must be at most {_MAX_PATH} characters "
            "without control characters"
        )
    norm = posixpath.normpath(path)
    if norm != path or path.startswith("//"):
        raise InvalidArgumentError(
            f"volume mount path {path!r} is not normalised; write it as {'/' + norm.lstrip('/')!r}"
        )
    if path == "/":
        raise InvalidArgumentError(
            "a volume cannot be mounted over / (the sandbox's root); use a directory such as "
            "'/data'"
        )
    for tree in _RESERVED_TREES:
        if path == tree or path.startswith(tree + "/"):
            raise InvalidArgumentError(
                f"volume mount path {path!r} is inside {tree}, which belongs to the sandbox's "
                "runtime; use a directory such as '/data'"
            )
    for reserved in _RESERVED_FILES:
        if reserved == path or reserved.startswith(path + "/"):
            raise InvalidArgumentError(
                f"volume mount path {path!r} would hide {reserved}, which the server provides; "
                "use a directory such as '/data'"
            )


class VolumeService:
    """Create, find, mount and delete volumes; see the module docstring for the layout."""

    def __init__(self, config: ServerConfig, store: Store, quotas: Quotas | None = None) -> None:
        self.config = config
        self.store = store
        self.quotas = quotas or Quotas(store)
        self._lock = asyncio.Lock()

    def _dir(self, volume_id: str) -> Path:
        return self.config.volumes_dir / volume_id

    # ----------------------------------------------------------------------- lifetime

    async def start(self) -> None:
        """At server start: remove what crashed creates and deletes left behind, and mount
        every recorded volume whose disk is not mounted (after a host reboot)."""
        root = self.config.volumes_dir
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(os.chmod, root, 0o700)
        records = await self.store.list_volumes()
        known = {r.id for r in records}
        for entry in await asyncio.to_thread(lambda: sorted(root.iterdir())):
            if entry.name not in known:
                log.info("removing %s: a volume directory without a record", entry)
                await _remove(entry)
        for record in records:
            try:
                await self._mount(record, fsck=True)
            except Exception as exc:
                # One broken volume must not keep the server down; mounting it is refused
                # with this reason until a restart mounts it (see resolve_mounts).
                log.error("volume %s (%s) is unavailable: %s", record.name, record.id, exc)

    async def _mount(self, record: VolumeRecord, *, fsck: bool = False) -> None:
        directory = self._dir(record.id)
        image, mnt = directory / "disk.img", directory / "mnt"
        if await asyncio.to_thread(os.path.ismount, mnt):
            return
        if not await asyncio.to_thread(image.exists):
            raise ServerError(f"its disk {image} is missing")
        await asyncio.to_thread(mnt.mkdir, exist_ok=True)
        if fsck:
            # The disks have no journal (as the sandboxes' own); after a host crash the
            # filesystem is repaired before use. Exit 1 and 2 mean "errors corrected".
            done = await proc.run(["e2fsck", "-p", str(image)], check=False, timeout=3600)
            if done.returncode >= 4:
                raise ServerError(
                    f"e2fsck -p {image} exited {done.returncode}: "
                    f"{(done.stdout + done.stderr).decode(errors='replace').strip()[-500:]}; "
                    "repair it with `e2fsck` by hand, then restart the server"
                )
        await mount_disk(image, mnt)
        await _harden(mnt)

    # ------------------------------------------------------------------------- lookups

    async def get(self, name_or_id: str, tenant: str | None = None) -> VolumeRecord:
        """By ID, or by name: ``tenant``'s (each tenant names its own; None: any)."""
        record = await self.store.get_volume(name_or_id, tenant)
        if record is None:
            raise _missing(name_or_id)
        return record

    async def get_owned(self, name_or_id: str, tenant: str) -> VolumeRecord:
        """The volume if ``tenant`` owns it; another tenant's answers as a missing one."""
        record = await self.get(name_or_id, tenant)
        if record.tenant != tenant:
            raise _missing(name_or_id)
        return record

    async def list(self) -> list[VolumeRecord]:
        """Every volume, by name."""
        return await self.store.list_volumes()

    async def users(self) -> dict[str, builtins.list[str]]:
        """Volume ID → IDs of the sandboxes that have it mounted (or will, once resumed)."""
        out: dict[str, builtins.list[str]] = {}
        for status in IN_USE:
            for record in await self.store.list_sandboxes(status):
                for volume_id in set(record.volumes.values()):
                    out.setdefault(volume_id, []).append(record.id)
        return {k: sorted(v) for k, v in out.items()}

    async def users_of(self, volume_id: str) -> builtins.list[str]:
        return (await self.users()).get(volume_id, [])

    # -------------------------------------------------------------------------- create

    async def create(
        self, name: str, size_mib: int | None = None, *, tenant: str = "default"
    ) -> VolumeRecord:
        """A new, empty volume of ``tenant``; ConflictError if the name is taken."""
        record, _ = await self._create(name, size_mib, exist_ok=False, tenant=tenant)
        return record

    async def get_or_create(
        self, name: str, size_mib: int | None = None, *, tenant: str = "default"
    ) -> tuple[VolumeRecord, bool]:
        """The volume ``name``, made first if missing; returns (record, whether it is new).
        An existing volume keeps its size whatever ``size_mib`` says."""
        return await self._create(name, size_mib, exist_ok=True, tenant=tenant)

    async def _create(
        self, name: str, size_mib: int | None, *, exist_ok: bool, tenant: str
    ) -> tuple[VolumeRecord, bool]:
        found = await self.store.get_volume(name, tenant)
        if found is not None and found.tenant != tenant:
            found = None  # an ID of another tenant's volume: as if it did not exist
        if exist_ok and found is not None:
            return found, False  # also by ID, which is never a valid new name
        check_name(name)
        size = DEFAULT_SIZE_MIB if size_mib is None else size_mib
        check_size(size)
        async with self._lock:
            existing = await self.store.get_volume(name, tenant)
            if existing is not None:
                if exist_ok:
                    return existing, False
                raise ConflictError(
                    f"volume {name!r} exists already ({existing.id}); mount it as it is "
                    f"(Volume.from_name({name!r})), or delete it first with "
                    f"`stockade volume rm {name}`"
                )
            # The tenant's max_disk counts the volume's whole size: it may fill it.
            async with self.quotas.storing(tenant, size, f"volume {name!r}"):
                await self._check_space(size)
                record = await self._make(name, size, tenant)
        log.info("volume %s (%s, %d MiB) created", name, record.id, size)
        return record, True

    async def _make(self, name: str, size: int, tenant: str) -> VolumeRecord:
        """Make the volume's disk and record it (under the lock)."""
        record = VolumeRecord(
            id=new_id("vol"), name=name, created_at=time.time(), size=size, tenant=tenant
        )
        tmp = self.config.volumes_dir / f".new-{record.id}"
        try:
            await asyncio.to_thread((tmp / "mnt").mkdir, parents=True)
            await make_disk(tmp / "disk.img", tmp / "mnt", size)
            await _harden(tmp / "mnt")
            await asyncio.to_thread(_prepare_root, tmp / "mnt")
            # A mount point's parent may be renamed; the mount moves with it.
            await asyncio.to_thread(os.rename, tmp, self._dir(record.id))
            await self.store.put_volume(record)
        except BaseException as exc:
            await _remove(tmp)
            await _remove(self._dir(record.id))
            if isinstance(exc, Exception):
                raise ServerError(f"creating volume {name!r} failed: {exc}") from exc
            raise
        return record

    async def _check_space(self, size_mib: int) -> None:
        """Refuse a volume that the host's free space could not hold, counting what other
        volumes may still grow into: the disks are sparse, so free space is all that
        stands between a full volume and a full host."""
        root = self.config.volumes_dir
        await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
        records = await self.store.list_volumes()

        def measure() -> tuple[int, int]:
            promised = 0
            for r in records:
                try:
                    used = os.stat(self._dir(r.id) / "disk.img").st_blocks * 512
                except OSError:
                    used = 0
                promised += max(0, r.size * _MIB - used)
            return shutil.disk_usage(root).free, promised

        free, promised = await asyncio.to_thread(measure)
        if size_mib * _MIB > free - promised:
            room = max(0, free - promised) // _MIB
            raise InvalidArgumentError(
                f"a volume of {size_mib} MiB does not fit: the server's disk has room for "
                f"{room} MiB more of volumes ({free // _MIB} MiB free, {promised // _MIB} MiB "
                "promised to existing volumes); pass a smaller size or delete volumes"
            )

    # -------------------------------------------------------------------------- delete

    async def delete(self, name_or_id: str, tenant: str | None = None) -> VolumeRecord:
        """Delete a volume and its files; ConflictError while a sandbox has it mounted.
        ``tenant``: whose name ``name_or_id`` is, if a name."""
        async with self._lock:
            record = await self.get(name_or_id, tenant)
            users = await self.users_of(record.id)
            if users:
                raise ConflictError(_in_use(record, users))
            # The record goes first: from here on the volume no longer exists for anyone,
            # and a crash leaves only a directory without a record, which start() removes.
            await self.store.delete_volume(record.id)
        directory = self._dir(record.id)
        gone = self.config.volumes_dir / f".gone-{record.id}"
        # Renamed before unmounting, so a create that resolved the volume just before the
        # delete finds no directory to bind (and fails) instead of binding the bare mount
        # point on the host's disk.
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.rename, directory, gone)
        await _remove(gone)
        log.info("volume %s (%s) deleted", record.name, record.id)
        return record

    # -------------------------------------------------------------------------- mounts

    async def resolve_mounts(
        self, mounts: Mapping[str, str], *, tenant: str | None = None
    ) -> dict[str, str]:
        """Check a create's ``volumes`` (mount path → volume name or ID) and return mount
        path → volume ID. 422 for a bad path, 404 for an unknown volume."""
        if len(mounts) > MAX_MOUNTS:
            raise InvalidArgumentError(
                f"a sandbox may mount at most {MAX_MOUNTS} volumes; got {len(mounts)}"
            )
        for path in mounts:
            check_mount_path(path)
        paths = sorted(mounts)
        for i, outer in enumerate(paths):
            for inner in paths[i + 1 :]:
                if inner.startswith(outer + "/"):
                    raise InvalidArgumentError(
                        f"volume mount paths {outer!r} and {inner!r} nest; mount volumes side "
                        "by side (e.g. '/data' and '/cache')"
                    )
        out: dict[str, str] = {}
        for path in paths:
            ref = mounts[path]
            record = await (self.get(ref) if tenant is None else self.get_owned(ref, tenant))
            if not await asyncio.to_thread(os.path.ismount, self.config.volume_mount(record.id)):
                # Never bind the bare mount point: writes would land on the host's disk.
                raise ServerError(
                    f"volume {record.name!r} ({record.id}) is unavailable: its disk is not "
                    "mounted on the server (the server log says why; a restart mounts it again)"
                )
            out[path] = record.id
        return out


def _in_use(record: VolumeRecord, users: list[str]) -> str:
    shown = users[:10]
    more = f" and {len(users) - 10} more" if len(users) > 10 else ""
    noun, them = ("sandboxes", "them") if len(users) > 1 else ("sandbox", "it")
    return (
        f"volume {record.name!r} ({record.id}) is in use by {noun} {', '.join(shown)}{more}; "
        f"terminate {them} first (`stockade rm {' '.join(shown)}`), then delete the volume"
    )


def _prepare_root(mnt: Path) -> None:
    """A fresh volume is empty and writable by any user, as a Modal volume is to the
    sandbox's user; the sticky bit keeps users from removing each other's files."""
    with contextlib.suppress(FileNotFoundError):
        # mkfs's lost+found; e2fsck makes it again if it ever needs one.
        (mnt / "lost+found").rmdir()
    os.chmod(mnt, 0o1777)


async def _harden(mnt: Path) -> None:
    """No setuid programs and no device files from a volume: its contents come from
    sandboxes, and the host must never honour them."""
    await proc.run(["mount", "-n", "-o", "remount,nosuid,nodev", str(mnt)])


async def _remove(directory: Path) -> None:
    """Unmount a volume directory's disk and remove the directory (if it exists)."""
    mnt = directory / "mnt"
    if await asyncio.to_thread(os.path.ismount, mnt):
        done = await proc.run(["umount", str(mnt)], check=False)
        if done.returncode != 0:
            # Still held (a sandbox on its way out): detach now, the kernel frees it later.
            await proc.run(["umount", "-l", str(mnt)], check=False)
    if await asyncio.to_thread(os.path.ismount, mnt):
        # Removing the tree now would delete the files of a mounted disk.
        log.error("cannot unmount %s; leaving %s for the next start", mnt, directory)
        return
    if await asyncio.to_thread(lambda: directory.is_dir() and not directory.is_symlink()):
        await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(directory.unlink)


def _missing(name_or_id: str) -> NotFoundError:
    return NotFoundError(
        f"volume {name_or_id!r} does not exist; `stockade volume ls` lists the volumes "
        f"(make it with Volume.from_name({name_or_id!r}, create_if_missing=True) or "
        f"`stockade volume create {name_or_id}`)"
    )
