"""A sandbox's root filesystem: read-only image layers under a private, size-limited upper.

Layout of one sandbox directory::

    <sandbox dir>/disk.img     sparse file, ext4, the size of the sandbox's ``disk`` limit
    <sandbox dir>/disk/        disk.img loop-mounted; holds upper/ and work/
    <sandbox dir>/merged/      overlayfs(lower=image layers, upper=disk/upper) = the root

Putting the upper directory on its own small filesystem enforces ``disk`` without quota
support from the host: writes past it fail with ENOSPC inside the sandbox, and the host
disk only keeps what was actually written (the file is sparse). Layers are never copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from . import proc

__all__ = ["DEFAULT_DISK_MIB", "RootFS", "make_disk", "makedirs_in_root", "mount_disk"]

# A sandbox's writable disk when the create call names none (MiB).
DEFAULT_DISK_MIB = 1024


class RootFS:
    """Mounts and unmounts the root filesystem of one sandbox directory."""

    def __init__(self, sandbox_dir: Path) -> None:
        self.dir = sandbox_dir
        self.image = sandbox_dir / "disk.img"
        self.disk = sandbox_dir / "disk"
        self.upper = self.disk / "upper"
        self.work = self.disk / "work"
        self.merged = sandbox_dir / "merged"

    async def create(
        self,
        layers: Sequence[Path],
        disk_mib: int,
        *,
        upper_from: Path | None = None,
        spare: RootFS | None = None,
    ) -> None:
        """Make the disk, mount it and mount the overlay. Idempotent steps, undone on error.

        ``upper_from``: start from a copy of these writes (a snapshot's) instead of none.
        ``spare``: a directory made ahead by :meth:`make_spare` with a disk of ``disk_mib``;
        it becomes this one, which must not exist yet, and saves the mkfs and loop mount.
        """
        for layer in layers:
            if ":" in str(layer) or "," in str(layer):
                raise ValueError(f"layer path {layer} cannot be used in overlay options")
        assert spare is None or upper_from is None, "a spare disk has no writes to copy into"
        try:
            taken = spare is not None and await self._take(spare)
            if not taken:
                await self._make(disk_mib)
                if upper_from is not None:
                    await proc.run(
                        ["cp", "-a", "--sparse=always", str(upper_from), str(self.upper)]
                    )
            await self.mount(layers)
        except BaseException:
            await self.destroy()
            raise

    async def _take(self, spare: RootFS) -> bool:
        """Become ``spare``: a rename carries its mounted disk along, since mounts follow
        their directory. False (and the spare removed) when this directory exists."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(os.rename, spare.dir, self.dir)
        except OSError:
            await spare.destroy()
            return False
        return True

    async def make_spare(self, disk_mib: int) -> None:
        """Make the disk and mount it, with no overlay yet: a spare for :meth:`create`."""
        try:
            await self._make(disk_mib)
            # Made here so that the create's mount finds them (and a test can see the
            # spare is empty); mount() would otherwise make them on the create's path.
            self.upper.mkdir()
            self.work.mkdir()
        except BaseException:
            await self.destroy()
            raise

    async def _make(self, disk_mib: int) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk.mkdir(exist_ok=True)
        self.merged.mkdir(exist_ok=True)
        await make_disk(self.image, self.disk, disk_mib)

    async def mount(self, layers: Sequence[Path]) -> None:
        """Mount the overlay over the (already mounted) disk; a paused sandbox's resume."""
        if not layers:
            raise ValueError("an image needs at least one layer")
        await mount_disk(self.image, self.disk)
        self.upper.mkdir(exist_ok=True)
        self.work.mkdir(exist_ok=True)
        self.merged.mkdir(exist_ok=True)
        if await asyncio.to_thread(os.path.ismount, self.merged):
            return
        lower = ":".join(str(p) for p in layers)
        await _mount(
            [
                "-t", "overlay", "overlay",
                "-o",
                f"nosuid,nodev,lowerdir={lower},upperdir={self.upper},workdir={self.work}",
                str(self.merged),
            ]
        )  # fmt: skip

    async def unmount_overlay(self) -> None:
        """Unmount the overlay only, keeping the disk and its writes (a pause)."""
        await _unmount(self.merged)

    async def copy_upper(self, dest: Path) -> None:
        """Copy the sandbox's writes as they are now to ``dest`` (the sandbox must be frozen:
        a snapshot). Owners, modes, times, whiteouts and opaque marks are kept; overlayfs's
        private bookkeeping is dropped, as in :meth:`capture_upper`."""
        await proc.run(["cp", "-a", "--sparse=always", str(self.upper), str(dest)])
        await asyncio.to_thread(_strip_overlay_xattrs, dest)

    async def capture_upper(self, dest: Path) -> None:
        """Copy the sandbox's writes (the overlay's upper directory) to ``dest``, as a layer.

        Call it once the sandbox has stopped. The overlay is unmounted first so that the
        upper directory is complete; the copy keeps owners, modes, times, whiteouts (0/0
        character devices) and the opaque-directory marks, and drops overlayfs's private
        bookkeeping, which would mean nothing under another overlay.
        """
        # A runsc process on its way out may hold it a moment longer; nothing writes through
        # it any more, so a lazy unmount is as good.
        await _unmount(self.merged)
        await self.copy_upper(dest)

    def is_mounted(self) -> bool:
        return os.path.ismount(self.merged) and os.path.ismount(self.disk)

    async def destroy(self) -> None:
        """Unmount everything and remove the sandbox directory. Safe to call repeatedly."""
        await self.destroy_keeping(())

    async def destroy_keeping(self, keep: Sequence[str]) -> None:
        """Unmount everything and remove the sandbox directory except the files in ``keep``."""
        for mnt in (self.merged, self.disk):
            await _unmount(mnt)
        await asyncio.to_thread(_remove_except, self.dir, frozenset(keep))


async def _unmount(mnt: Path) -> None:
    if await asyncio.to_thread(os.path.ismount, mnt):
        result = await proc.run(["umount", str(mnt)], check=False)
        if result.returncode != 0:
            # A dying runsc may still hold it; detach now, the kernel frees it later.
            await proc.run(["umount", "-l", str(mnt)], check=False)


_MAX_LINKS = 40  # as the kernel's own limit on symlinks in one lookup


def makedirs_in_root(root: Path, path: str) -> None:
    """``mkdir -p path`` inside ``root`` as the sandbox would see it: every symlink of the
    image is resolved within ``root`` (an absolute one from ``root``, ``..`` never above
    it), never followed out of it on the host. Blocking; raises ValueError for a path
    that runs into a file or too many links."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    chain = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]  # root … current directory
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(chain) > 1:
                    os.close(chain.pop())
                continue
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            try:
                chain.append(os.open(name, flags, dir_fd=chain[-1]))
                continue
            except FileNotFoundError:
                os.mkdir(name, 0o755, dir_fd=chain[-1])
                chain.append(os.open(name, flags, dir_fd=chain[-1]))
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
            try:  # a symlink: go on from where it points, inside the root
                target = os.readlink(name, dir_fd=chain[-1])
            except OSError:
                raise ValueError(f"{path}: {name} is a file, not a directory") from None
            links += 1
            if links > _MAX_LINKS:
                raise ValueError(f"{path}: too many levels of symbolic links")
            if target.startswith("/"):
                while len(chain) > 1:
                    os.close(chain.pop())
            pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
    finally:
        for fd in chain:
            os.close(fd)


async def make_disk(image: Path, mountpoint: Path, size_mib: int) -> None:
    """Make ``image`` a sparse ext4 file of ``size_mib`` and loop-mount it at ``mountpoint``.

    A filesystem of its own is how a size limit is enforced without host quotas: writes
    past it fail with ENOSPC for the writer alone, and the host keeps only what was written.
    """
    await asyncio.to_thread(_make_sparse, image, size_mib * 1024 * 1024)
    # No journal and lazy init: mkfs + mount take ~25 ms and nothing is written upfront.
    await proc.run(
        [
            "mkfs.ext4", "-q", "-F", "-m", "0",
            "-E", "lazy_itable_init=1,lazy_journal_init=1",
            "-O", "^has_journal",
            str(image),
        ]
    )  # fmt: skip
    await mount_disk(image, mountpoint)


async def mount_disk(image: Path, mountpoint: Path) -> None:
    """Loop-mount an existing disk image (idempotent)."""
    if await asyncio.to_thread(os.path.ismount, mountpoint):
        return
    async with _LOOP_SETUP:
        await _mount(["-o", _DISK_OPTIONS, str(image), str(mountpoint)])


# Everything on a sandbox's disk was written by code nobody reviewed: the host must never
# honour a setuid bit or a device node found there. gVisor applies setuid inside the
# sandbox from the file modes the gofer reports, so this costs the sandbox nothing.
_DISK_OPTIONS = "loop,noatime,nosuid,nodev"

# mount(8) picks a free loop device and then claims it; two at once can pick the same one.
_LOOP_SETUP = asyncio.Lock()


async def _mount(args: Sequence[str], attempts: int = 4) -> None:
    """mount(8), retried: under a burst of parallel mounts it sometimes fails (exit 255,
    no message) while libmount contends for its lock, and succeeds when simply run again.
    ``-n`` skips the mount table file, which nothing here reads."""
    for attempt in range(attempts):
        try:
            await proc.run(["mount", "-n", *args])
            return
        except proc.CommandError:
            if await asyncio.to_thread(os.path.ismount, args[-1]):
                return  # the failed attempt had mounted it after all
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


_KEEP_XATTRS = frozenset({"trusted.overlay.opaque"})


def _strip_overlay_xattrs(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in (*dirnames, *filenames))]:
            try:
                names = os.listxattr(name, follow_symlinks=False)
            except OSError:
                continue
            for attr in names:
                if attr.startswith("trusted.overlay.") and attr not in _KEEP_XATTRS:
                    with contextlib.suppress(OSError):
                        os.removexattr(name, attr, follow_symlinks=False)


def _make_sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def _remove_except(directory: Path, keep: frozenset[str]) -> None:
    try:
        children = list(directory.iterdir())
    except FileNotFoundError:
        return
    for child in children:
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()
    if not keep or not any(directory.iterdir()):
        with contextlib.suppress(OSError):
            directory.rmdir()
