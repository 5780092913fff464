"""What changed in a sandbox's filesystem: ``sb.files.changes()``.

The answer comes from the overlay's layers on the host, never from inside the sandbox, so
it works on a paused sandbox as well as on a running one and costs no exec. A sandbox's
root is ``overlay(upper, lowers)``: its writes land in the upper directory, the image's
layers below are shared and never change. Two states are compared:

- now: the sandbox's upper over the image's layers;
- before: nothing over the image's layers (``since=None``), or the upper directory a
  memory snapshot saved, over the same layers (``since=<snapshot>``).

The effective state of a path is overlayfs's: the upper first (a 0/0 character device is
a whiteout, "absent"; a directory marked ``trusted.overlay.opaque=y``, or one that replaced
a non-directory, hides everything below it), else the lowers top-first, whose own whiteouts
and opaque directories count the same way. Only the paths that an upper holds are looked
at, plus the children an opaque directory hides, so the work is proportional to what was
written, not to the size of the image.

What is reported, for a reviewer who wants to see what an agent did:

- ``added``: absent before, present now. An added directory is listed, and so is every
  entry below it (new files are the ones to read).
- ``deleted``: present before, absent now. Only the top-most deleted path is listed: the
  files of a removed directory are in the image, and ``rm -rf /usr`` stays one line.
- ``modified``: present in both, and the type, permission bits, owner, size, link target,
  device number or content differ. A directory is modified only when its own type, mode
  or owner changed; children that changed are reported for themselves. A file that was
  only touched (copied up, same bytes) is not modified. A directory replaced by a file is
  ``modified`` (the files below it are gone with it); a file replaced by a directory is
  ``modified``, with the directory's entries ``added``.

Paths are absolute sandbox paths in tree order (sorted by path component, so a directory
comes right before its entries). A name that is not UTF-8 is shown with ``\\xNN`` escapes.
At most ``limit`` changes are returned; past it the walk stops and ``truncated`` is set,
so a sandbox with a million files cannot make the server build an unbounded answer.
``truncated`` is also set when directories nest deeper than ``MAX_DEPTH`` (they are not
walked into) or the server runs out of file descriptors.

Safety: the upper directory is written by untrusted code (and image layers come from
registries), so the walk never follows a symlink on the host: every directory is opened
relative to its parent with ``O_NOFOLLOW``, every entry is ``lstat``-ed through its
parent's descriptor, and a path that changes under the walk is skipped, not followed.
Content is compared in chunks, never read whole. :func:`diff` does blocking IO: call it
off the event loop (:func:`sandbox_changes` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import stat
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from ...errors import ConflictError, InvalidArgumentError

if TYPE_CHECKING:
    from ..state.records import SandboxRecord
    from .sandboxes import SandboxService
    from .snapshots import SnapshotService

__all__ = [
    "MAX_CHANGES",
    "MAX_DEPTH",
    "STOCKADE_PATHS",
    "Change",
    "ChangeKind",
    "ChangeList",
    "diff",
    "ignored_paths",
    "is_opaque",
    "is_whiteout",
    "quiet_paths",
    "sandbox_changes",
]

ChangeKind = Literal["added", "modified", "deleted"]

MAX_CHANGES: Final = 100_000
# Directories nested deeper are not walked into (the answer is then marked truncated): the
# walk holds a few descriptors per level and recurses, and sandboxed code picks the depth.
MAX_DEPTH: Final = 128

# Paths that runsc and Stockade put in every sandbox, not the sandbox's work: the agent's
# layer, the kernel's mount points (created in the upper when an image lacks them) and the
# files bind-mounted over the image's (mount points too; the sandbox cannot write them).
STOCKADE_PATHS: Final = ("/.stockade", "/proc", "/sys", "/dev", "/etc/hosts", "/etc/resolv.conf")

OPAQUE_XATTR: Final = "trusted.overlay.opaque"
_METACOPY_XATTR: Final = "trusted.overlay.metacopy"
_CHUNK: Final = 256 * 1024
# Bytes of file content one diff may read to tell "same bytes" from "modified"; a file
# whose comparison would pass it counts as modified. Sandboxed code picks the files (sparse
# terabytes, say), so without a budget one changes() call could read for hours.
READ_BUDGET: Final = 1 << 30
# What one lseek(SEEK_DATA/SEEK_HOLE) is charged: a file of a million tiny extents costs
# as much as reading them.
_SEEK_COST: Final = 64 * 1024
# Diffs at once: each holds a worker thread, which the store's calls need too.
_CONCURRENT_DIFFS: Final = 2
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a file between lstat and open must not hang the walk.
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_SNAPSHOT_ID = re.compile(r"sn-[A-Za-z0-9_-]{1,64}")


class Change(NamedTuple):
    """One changed path: ``("/etc/motd", "modified")``."""

    path: str
    kind: ChangeKind


@dataclass(frozen=True)
class ChangeList:
    """The changes, in tree order; ``truncated`` when that list is incomplete."""

    changes: tuple[Change, ...]
    truncated: bool = False


def is_whiteout(st: os.stat_result) -> bool:
    """Whether an ``lstat`` result is an overlay whiteout (a 0/0 character device)."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(dir_fd: int) -> bool:
    """Whether the open directory ``dir_fd`` is an opaque overlay directory (hides the
    layers below it)."""
    try:
        return os.getxattr(dir_fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def diff(
    upper: Path,
    lowers: Sequence[Path],
    base_upper: Path | None,
    ignore: Collection[str] = STOCKADE_PATHS,
    *,
    quiet: Collection[str] = (),
    limit: int = MAX_CHANGES,
    read_budget: int = READ_BUDGET,
) -> ChangeList:
    """The changes of ``overlay(upper, lowers)`` relative to ``overlay(base_upper, lowers)``
    (or to the bare ``lowers`` when ``base_upper`` is None). Blocking: run it in a thread.

    ``lowers`` are top-first. ``ignore``: absolute paths left out, with everything below
    them. ``quiet``: directories whose own addition or change is not reported (directories
    that Stockade created, such as a sandbox's working directory); their entries are.
    ``read_budget``: bytes of content read in all to compare files of equal size; past it
    such files count as modified (holes are skipped, not read).

    Example::

        result = diff(Path("disk/upper"), [Path("layers/a"), Path("layers/b")], None)
        for path, kind in result.changes:
            print(kind[0].upper(), path)
    """
    if limit < 0:
        raise ValueError("limit must not be negative")
    with contextlib.ExitStack() as stack:
        now_fd = _open_root(upper, stack)
        base_fd = _open_root(base_upper, stack) if base_upper is not None else None
        lower_fds = [_open_root(p, stack) for p in lowers]
        walk = _Walk(
            ignore={_parts(p) for p in ignore}, quiet={_parts(p) for p in quiet}, limit=limit,
            budget=_Budget(read_budget),
        )  # fmt: skip
        now = _Side(now_fd, lowers_visible=not is_opaque(now_fd))
        before = _Side(base_fd, lowers_visible=base_fd is None or not is_opaque(base_fd))
        try:
            walk.compare_dirs((), now, before, _merge(lower_fds))
        except _OutOfDescriptors:
            walk.truncated = True
        return ChangeList(tuple(walk.changes), walk.truncated)


def ignored_paths(record: SandboxRecord) -> frozenset[str]:
    """The paths of ``record``'s sandbox that :func:`diff` leaves out: Stockade's own and
    the mount points of its volumes."""
    return frozenset((*STOCKADE_PATHS, *record.volumes))


def quiet_paths(record: SandboxRecord) -> frozenset[str]:
    """Directories that Stockade may have created in ``record``'s sandbox: its working
    directory and the parents of it (``mkdir -p`` at boot)."""
    if not record.workdir:
        return frozenset()
    parts = _parts(record.workdir)
    return frozenset("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))


async def sandbox_changes(
    sandboxes: SandboxService,
    snapshots: SnapshotService,
    sandbox_id: str,
    since: str | None = None,
    *,
    limit: int = MAX_CHANGES,
) -> ChangeList:
    """What changed in a running or paused sandbox since its image, or since the memory
    snapshot ``since`` (``sn-…``, of this sandbox or of any other of the same image)."""
    upper, lowers = await sandboxes.fs_layers(sandbox_id)
    record = await sandboxes.get(sandbox_id)
    base = None
    if since is not None:
        if not _SNAPSHOT_ID.fullmatch(since):
            raise InvalidArgumentError(
                f"since must be a snapshot ID like 'sn-…', got {since[:80]!r}"
            )
        base = await snapshots.files_dir(since)
        taken = (await snapshots.get(since)).source()
        if taken.layers and record.layers and taken.layers != record.layers:
            # Its writes were made over other layers: a comparison would mean nothing.
            raise InvalidArgumentError(
                f"snapshot {since} was taken of a sandbox of another image ({taken.image}); "
                f"compare {sandbox_id} with a snapshot of a sandbox of its image "
                f"({record.image})"
            )
    try:
        async with _diff_slots():
            result = await asyncio.to_thread(
                diff, upper, lowers, base, ignored_paths(record), quiet=quiet_paths(record),
                limit=limit,
            )  # fmt: skip
    except FileNotFoundError as exc:
        await sandboxes.fs_layers(sandbox_id)  # raises if it ended, saying how
        raise ConflictError(
            f"the files of sandbox {sandbox_id} went away while being read (it is pausing "
            "or ending); try again"
        ) from exc
    # A sandbox that ended during the walk may have been read half torn down.
    await sandboxes.fs_layers(sandbox_id)
    return result


_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _diff_slots() -> asyncio.Semaphore:
    """The running loop's limit on concurrent diffs (one per loop: tests run several)."""
    loop = asyncio.get_running_loop()
    slots = _SLOTS.get(loop)
    if slots is None:
        slots = _SLOTS[loop] = asyncio.Semaphore(_CONCURRENT_DIFFS)
    return slots


# ----------------------------------------------------------------------------- the walk


class _Side:
    """One state's view of a directory: the directory in its upper (an open descriptor;
    None when the upper has nothing there) and whether the image's layers show through."""

    __slots__ = ("lowers_visible", "upper")

    def __init__(self, upper: int | None, *, lowers_visible: bool) -> None:
        self.upper = upper
        self.lowers_visible = lowers_visible


class _Entry(NamedTuple):
    """What a state has at a path: its lstat, and where it lives (to read it)."""

    st: os.stat_result
    dir_fd: int
    name: str
    in_upper: bool

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.st.st_mode)


class _Walk:
    """A depth-first walk over the paths that either upper holds, in tree order.

    ``lowers`` arguments are the image's layers that make up the directory being walked,
    top-first, as open descriptors (see :func:`_child_lowers`).
    """

    def __init__(
        self,
        *,
        ignore: set[tuple[str, ...]],
        quiet: set[tuple[str, ...]],
        limit: int,
        budget: _Budget,
    ) -> None:
        self.budget = budget
        self.ignore = ignore
        self.quiet = quiet
        self.limit = limit
        self.changes: list[Change] = []
        self.truncated = False  # the list is incomplete
        self.full = False  # ... because it holds ``limit`` changes: stop

    def compare_dirs(
        self, rel: tuple[str, ...], now: _Side, before: _Side, lowers: Sequence[int]
    ) -> None:
        """Compare the entries of directory ``rel`` (with ``before`` empty: list them all)."""
        names: set[str] = set()
        for side in (now, before):
            if side.upper is not None:
                names.update(_names(side.upper))
        if now.lowers_visible != before.lowers_visible:
            # One side hides the image's entries here (an opaque directory, or a directory
            # that is new on one side): only a listing of the image says which they are.
            for fd in lowers:
                names.update(_names(fd))
        for name in sorted(names):
            if self.full:
                return
            child = (*rel, name)
            if child not in self.ignore:
                self._compare(child, now, before, lowers)

    def _compare(
        self, rel: tuple[str, ...], now: _Side, before: _Side, lowers: Sequence[int]
    ) -> None:
        name = rel[-1]
        now_up, before_up = _lookup(now.upper, name), _lookup(before.upper, name)
        if now_up is None and before_up is None and now.lowers_visible == before.lowers_visible:
            return  # the image's entry (or nothing) on both sides
        needs_lower = (now_up is None and now.lowers_visible) or (
            before_up is None and before.lowers_visible
        )
        lower = _lower_entry(lowers, name) if needs_lower else None
        now_e = _resolve(now_up, lower if now.lowers_visible else None)
        before_e = _resolve(before_up, lower if before.lowers_visible else None)
        if now_e is None:
            if before_e is not None:
                self._report(rel, "deleted")  # alone: what was below it went with it
            return
        quiet = rel in self.quiet and now_e.is_dir
        if before_e is None:
            if not quiet:
                self._report(rel, "added")
        elif not (quiet and before_e.is_dir) and _differs(
            now_e, before_e, lowers, name, self.budget
        ):
            self._report(rel, "modified")
        if now_e.is_dir:
            self._descend(rel, now_e, now, before_e, before, lowers)

    def _descend(
        self,
        rel: tuple[str, ...],
        now_e: _Entry,
        now: _Side,
        before_e: _Entry | None,
        before: _Side,
        lowers: Sequence[int],
    ) -> None:
        """Walk into directory ``rel``: compare it with ``before_e`` when that is a
        directory too, otherwise report everything in it as added."""
        if len(rel) >= MAX_DEPTH:
            self.truncated = True
            return
        with contextlib.ExitStack() as stack:
            now_child = _child_side(now_e, now, stack)
            if before_e is not None and before_e.is_dir:
                before_child = _child_side(before_e, before, stack)
                if now_child.upper is None and before_child.upper is None:
                    return  # the image's directory on both sides: nothing below differs
            else:
                before_child = _Side(None, lowers_visible=False)
            child_lowers: list[int] = []
            if now_child.lowers_visible or before_child.lowers_visible:
                child_lowers = _child_lowers(lowers, rel[-1], stack)
            self.compare_dirs(rel, now_child, before_child, child_lowers)

    def _report(self, rel: tuple[str, ...], kind: ChangeKind) -> None:
        if len(self.changes) >= self.limit:
            self.truncated = self.full = True
            return
        self.changes.append(Change(_display(rel), kind))


def _child_side(entry: _Entry, parent: _Side, stack: contextlib.ExitStack) -> _Side:
    """A state's view into its directory ``entry``, whose parent it sees as ``parent``."""
    if not entry.in_upper:
        return _Side(None, lowers_visible=True)
    fd = _open_dir(entry.dir_fd, entry.name, stack)
    if fd is None:
        return _Side(None, lowers_visible=False)  # replaced under us: read it as empty
    # Overlayfs merges an upper directory with the image's directory of the same name
    # unless it is opaque. (If the image has no directory there, there is nothing to merge:
    # _child_lowers finds none.)
    return _Side(fd, lowers_visible=parent.lowers_visible and not is_opaque(fd))


def _resolve(upper: _Entry | None, lower: _Entry | None) -> _Entry | None:
    if upper is not None:
        return None if is_whiteout(upper.st) else upper
    return lower


def _lookup(dir_fd: int | None, name: str, *, in_upper: bool = True) -> _Entry | None:
    if dir_fd is None:
        return None
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return _Entry(st, dir_fd, name, in_upper)


def _lower_entry(lowers: Sequence[int], name: str) -> _Entry | None:
    """The image's entry ``name`` in a directory made of ``lowers``: the top-most layer's
    (a whiteout meaning none)."""
    for fd in lowers:
        entry = _lookup(fd, name, in_upper=False)
        if entry is not None:
            return None if is_whiteout(entry.st) else entry
    return None


def _merge(layers: Sequence[int]) -> list[int]:
    """The layers that make up a directory present in all of ``layers``: down to the first
    opaque one, which hides the rest."""
    merged: list[int] = []
    for fd in layers:
        merged.append(fd)
        if is_opaque(fd):
            break
    return merged


def _child_lowers(lowers: Sequence[int], name: str, stack: contextlib.ExitStack) -> list[int]:
    """The image's layers that make up directory ``name`` of the directory made of
    ``lowers``: from the top, each that has it as a directory, until a layer has something
    else there (a whiteout or a file hides the layers below) or it is opaque."""
    found: list[int] = []
    for fd in lowers:
        entry = _lookup(fd, name, in_upper=False)
        if entry is None:
            continue
        if not entry.is_dir:
            break
        child = _open_dir(fd, name, stack)
        if child is None:
            break
        found.append(child)
        if is_opaque(child):
            break
    return found


def _differs(a: _Entry, b: _Entry, lowers: Sequence[int], name: str, budget: _Budget) -> bool:
    sa, sb = a.st, b.st
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return True
    if (stat.S_IMODE(sa.st_mode), sa.st_uid, sa.st_gid) != (
        stat.S_IMODE(sb.st_mode), sb.st_uid, sb.st_gid,
    ):  # fmt: skip
        return True
    if stat.S_ISDIR(sa.st_mode):
        return False  # a directory's size and times follow its entries
    if stat.S_ISLNK(sa.st_mode):
        return _readlink(a) != _readlink(b)
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return sa.st_rdev != sb.st_rdev
    if not stat.S_ISREG(sa.st_mode):
        return False  # FIFOs and sockets have no content
    if sa.st_size != sb.st_size:
        return True
    if (sa.st_dev, sa.st_ino, sa.st_mtime_ns, sa.st_ctime_ns) == (
        sb.st_dev, sb.st_ino, sb.st_mtime_ns, sb.st_ctime_ns,
    ):  # fmt: skip
        return False  # the very same file, untouched since
    # Times are not trusted to mean "unchanged": sandboxed code can set them.
    return not _same_content(_data_of(a, lowers, name), _data_of(b, lowers, name), budget)


def _data_of(entry: _Entry, lowers: Sequence[int], name: str) -> _Entry:
    """Where a file's bytes are: a metadata-only copy-up (overlayfs ``metacopy=on``) leaves
    them in the image's file."""
    if not entry.in_upper:
        return entry
    fd = _open_file(entry)
    if fd is None:
        return entry
    try:
        os.getxattr(fd, _METACOPY_XATTR)
    except OSError:
        return entry
    finally:
        os.close(fd)
    return _lower_entry(lowers, name) or entry


class _Budget:
    """Bytes of content a diff may still read (see READ_BUDGET)."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self, cost: int) -> bool:
        self.left -= cost
        return self.left >= 0


def _same_content(a: _Entry, b: _Entry, budget: _Budget) -> bool:
    fa = _open_file(a)
    if fa is None:
        return False  # replaced under us: count it as changed
    try:
        fb = _open_file(b)
        if fb is None:
            return False
        try:
            return _same_bytes(fa, fb, a.st.st_size, budget)
        finally:
            os.close(fb)
    finally:
        os.close(fa)


def _same_bytes(fa: int, fb: int, size: int, budget: _Budget) -> bool:
    """Whether two files of ``size`` bytes hold the same bytes, reading only where either
    has data: a hole reads as zeros, so ranges that are holes in both are skipped, and a
    1 TiB sparse file costs a few seeks. False once the budget is spent."""
    pos = 0
    while pos < size:
        if not budget.take(2 * _SEEK_COST):
            return False
        (data_a, end_a), (data_b, end_b) = _extent(fa, pos, size), _extent(fb, pos, size)
        if not data_a and not data_b:
            pos = min(end_a, end_b)  # zeros in both
            continue
        end = min(end_a, end_b, pos + _CHUNK)
        if not budget.take(end - pos):
            return False
        ca = os.pread(fa, end - pos, pos) if data_a else bytes(end - pos)
        cb = os.pread(fb, end - pos, pos) if data_b else bytes(end - pos)
        if ca != cb or len(ca) != end - pos:
            return False  # different, or shorter than stat said (changed under us)
        pos = end
    return True


def _extent(fd: int, pos: int, size: int) -> tuple[bool, int]:
    """Whether ``pos`` is in data (else in a hole), and where that run ends."""
    try:
        data = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return False, size  # nothing but a hole up to the end
        return True, size  # no SEEK_DATA here: all of it is data
    if data > pos:
        return False, min(data, size)
    try:
        return True, min(os.lseek(fd, pos, os.SEEK_HOLE), size)
    except OSError:
        return True, size


def _open_file(entry: _Entry) -> int | None:
    """``entry`` opened for reading, if it is still the regular file that was stat-ed."""
    try:
        fd = os.open(entry.name, _FILE_FLAGS, dir_fd=entry.dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (
            entry.st.st_dev, entry.st.st_ino,
        ):  # fmt: skip
            os.set_blocking(fd, True)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _readlink(entry: _Entry) -> str | None:
    try:
        return os.readlink(entry.name, dir_fd=entry.dir_fd)
    except OSError:
        return None


class _OutOfDescriptors(Exception):
    """The process has no file descriptor left: stop the walk, answer what was found."""


def _open_dir(dir_fd: int, name: str, stack: contextlib.ExitStack) -> int | None:
    """Directory ``name`` of ``dir_fd``, never through a symlink; None if it is not one
    (any more: the upper changes while it is read)."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise _OutOfDescriptors from exc
        return None
    stack.callback(os.close, fd)
    return fd


def _open_root(path: Path, stack: contextlib.ExitStack) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stack.callback(os.close, fd)
    return fd


def _names(dir_fd: int) -> list[str]:
    try:
        with os.scandir(dir_fd) as it:
            return [entry.name for entry in it]
    except OSError:
        return []


def _parts(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p and p != ".")


def _display(rel: tuple[str, ...]) -> str:
    raw = os.fsencode("/" + "/".join(rel))
    return raw.decode("utf-8", errors="backslashreplace")
