"""The layer store: each OCI layer unpacked once into a directory that overlayfs can stack.

Layout under the store's root::

    sha256-<hex>/            one layer's tree, named by its diff_id (the uncompressed tar's
                             digest, as listed in the image config), complete or absent
    .locks/sha256-<hex>.lock flock(2) held while one process makes that layer
    .tmp/                    unpacks and downloads in progress

Keying by diff_id rather than by blob digest means the same layer pulled gzip-compressed from
one registry and zstd-compressed from another is stored once.

A layer appears atomically: it is unpacked into ``.tmp/`` and renamed into place only after
its diff_id checked out. Several pulls (even from several server processes sharing a cache)
may want one layer at once; each takes the layer's lock, and whoever comes second finds the
directory made and uses it. The lock is polled, not waited on in a thread, so a cancelled pull
never leaves a thread blocked on it.

Unpacking is where a hostile image would attack the host, so it trusts nothing in the tar:

- names are normalized; an absolute name, or one whose ``..`` climbs out, rejects the layer;
- every parent directory is opened with ``O_NOFOLLOW`` from the layer's root, so an entry
  can never be written through a symlink (``link -> /etc`` then ``link/passwd``);
- hard links may only point at entries already unpacked in the same layer;
- device nodes are skipped, except the 0:0 character device that is an overlay whiteout;
- of the extended attributes a tar may carry, only ``user.*`` and ``security.capability``
  are applied: ``trusted.overlay.*`` from a tar could redirect overlayfs lookups.

OCI whiteouts become overlayfs's own, so the kernel applies them when layers are stacked:
``.wh.<name>`` becomes a character device 0:0 named ``<name>``, and ``.wh..wh..opq`` in a
directory becomes the ``trusted.overlay.opaque=y`` attribute on it. Ownership, modes
(setuid included) and mtimes are kept; the server runs as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gzip
import hashlib
import io
import logging
import os
import posixpath
import re
import secrets
import shutil
import stat
import tarfile
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import zstandard

from ....errors import DigestMismatchError, UnsafeLayerError, UnsupportedImageError
from .registry import LAYER_MEDIA_TYPES, short_digest

__all__ = ["OPAQUE_XATTR", "LayerStore", "unpack_copy", "unpack_layer"]

log = logging.getLogger(__name__)

OPAQUE_XATTR = "trusted.overlay.opaque"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK_POLL = 0.05
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
# Deeper names are refused: shutil.rmtree, which removes a directory that a later entry
# replaces (and a failed unpack), recurses once per level and overflows Python's stack near
# a thousand. Real layers stay far below; PATH_MAX itself allows 2048 levels at most.
_MAX_DEPTH = 256
# uid_t and gid_t are 32 bits, and chown reads (uid_t)-1 as "leave the owner as it is";
# a tar's pax headers and base-256 fields can hold any number, negative ones included.
_MAX_ID = 2**32 - 2
# Errors of the host, not of the layer: they must not be reported as a bad image.
_HOST_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM}
)


class LayerStore:
    """Unpacked layers keyed by diff_id, made once and shared by every image that has them.

    Example::

        store = LayerStore(Path("/var/cache/stockade/oci"))
        path = await store.add_from_blob(blob, "application/vnd.oci.image.layer.v1.tar+gzip",
                                         "sha256:…")  # -> /var/cache/stockade/oci/sha256-…

    Safe to use from several tasks and several processes at once.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks = root / ".locks"
        self.tmp = root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._locks.mkdir(exist_ok=True)

    def path(self, diff_id: str) -> Path:
        """Where the layer with ``diff_id`` lives (whether or not it exists yet)."""
        return self.root / _key(diff_id)

    def has(self, diff_id: str) -> bool:
        return self.path(diff_id).is_dir()

    async def add_from_blob(self, blob_path: Path, media_type: str, expected_diff_id: str) -> Path:
        """Unpack a layer blob (gzip, zstd or plain tar) unless the store already has it.

        Raises DigestMismatchError when the uncompressed tar does not hash to
        ``expected_diff_id``, and UnsafeLayerError when it is not a tar or breaks out.
        """

        async def no_fetch(_: Path) -> None:
            raise AssertionError("add_from_blob never downloads")

        path, _ = await self._ensure(expected_diff_id, media_type, no_fetch, blob_path)
        return path

    async def ensure(
        self, diff_id: str, media_type: str, fetch: Callable[[Path], Awaitable[object]]
    ) -> tuple[Path, bool]:
        """The layer's directory, and whether it had to be made.

        ``fetch(path)`` must download the layer's blob to ``path``; it is called only when
        no process has the layer yet, with the layer's lock held, so that two pulls of one
        image download each layer once.
        """
        return await self._ensure(diff_id, media_type, fetch, None)

    async def _ensure(
        self,
        diff_id: str,
        media_type: str,
        fetch: Callable[[Path], Awaitable[object]],
        blob: Path | None,
    ) -> tuple[Path, bool]:
        key = _key(diff_id)
        if media_type not in LAYER_MEDIA_TYPES:
            raise UnsupportedImageError(
                f"layer {short_digest(diff_id)} has unsupported media type {media_type!r}"
            )
        final = self.root / key
        if final.is_dir():
            return final, False
        fd = await self._lock(key)
        handed_over = False
        owned_blob: Path | None = None
        try:
            if final.is_dir():  # made by whoever held the lock before us
                return final, False
            if blob is None:
                owned_blob = self.tmp / f"{key}-{os.getpid()}-{secrets.token_hex(4)}.blob"
                await fetch(owned_blob)
                blob = owned_blob
            # From here the thread owns the lock and the downloaded blob: if this task is
            # cancelled, the unpack still finishes (or cleans up) before the lock is released.
            handed_over = True
            await asyncio.to_thread(self._unpack_and_release, fd, key, blob, diff_id, owned_blob)
            return final, True
        finally:
            if not handed_over:
                os.close(fd)
                if owned_blob is not None:
                    owned_blob.unlink(missing_ok=True)

    async def _lock(self, key: str) -> int:
        fd = os.open(self._locks / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    await asyncio.sleep(_LOCK_POLL)
        except BaseException:
            os.close(fd)
            raise

    def _remove_stale(self, key: str, keep: Path) -> None:
        """Remove what a holder of this layer's lock left when it died (we hold it now)."""
        for leftover in self.tmp.glob(f"{key}-*"):
            if leftover.name.startswith(keep.name):
                continue  # our own download
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)

    def _unpack_and_release(
        self, fd: int, key: str, blob: Path, diff_id: str, owned_blob: Path | None
    ) -> None:
        work = self.tmp / f"{key}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self._remove_stale(key, keep=blob)
            work.mkdir()
            work.chmod(0o755)  # whatever the umask; a "./" entry in the tar may change it
            actual = unpack_layer(blob, work)
            if actual != diff_id:
                raise DigestMismatchError(
                    f"layer {short_digest(diff_id)} unpacks to {actual}, not the {diff_id} "
                    "that the image config lists: the image is corrupt"
                )
            os.rename(work, self.root / key)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        finally:
            if owned_blob is not None:
                owned_blob.unlink(missing_ok=True)
            os.close(fd)


def unpack_layer(blob: Path, dest: Path) -> str:
    """Unpack a layer blob into the empty directory ``dest``; return its diff_id.

    Blocking; the diff_id (sha256 of the uncompressed tar, trailing padding included) is
    computed from the very bytes unpacked, so checking it afterwards proves what was written.
    """
    with open(blob, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        source = _decompressor(raw, magic)
        hashing = _HashingReader(source)
        try:
            with io.BufferedReader(hashing, _CHUNK) as reader:
                with tarfile.open(fileobj=reader, mode="r|", bufsize=_CHUNK) as tar:
                    _Unpacker(dest, tar).run()
                while reader.read(_CHUNK):  # hash what follows the end-of-archive marker too
                    pass
        except UnsafeLayerError:
            raise
        # zlib.error: a corrupt deflate stream read outside tarfile's header reads (in a
        # member's data or after the archive's end), which tarfile does not wrap for us.
        except (
            tarfile.TarError,
            EOFError,
            zstandard.ZstdError,
            gzip.BadGzipFile,
            zlib.error,
        ) as exc:
            raise UnsafeLayerError(f"the layer is not a valid tar archive: {exc}") from exc
        finally:
            source.close()  # closing ``raw`` twice is harmless
    return f"sha256:{hashing.hash.hexdigest()}"


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def _decompressor(raw: BinaryIO, magic: bytes) -> _Readable:
    # The magic number decides, not the media type: registries and tools mislabel layers
    # (Docker's own ".tar.gzip" type is used for uncompressed ones), the bytes never lie.
    if magic.startswith(_GZIP_MAGIC):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic == _ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return raw


class _HashingReader(io.RawIOBase):
    """Reads through to ``src`` and hashes every byte that passes."""

    def __init__(self, src: _Readable) -> None:
        self._src = src
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._src.read(len(view))
        n = len(data)
        view[:n] = data
        self.hash.update(data)
        return n


def unpack_copy(tar_path: Path, layer: Path, dest: str) -> None:
    """Unpack the files of a copy step (a tar an API caller uploaded) to ``dest`` inside the
    empty layer directory ``layer``. Blocking.

    The same unpacker as registry layers, so the same refusals (``..``, absolute names,
    entries below symlinks, hard links out of the tar), with a copy's meaning: every file
    is owned by root as Docker's COPY makes it, names starting ``.wh.`` are plain files,
    extended attributes and special files are dropped, and the tar's own root entry does
    not change ``dest``. ``dest`` must be normalised (``stockade._paths.path_in_root``);
    its directories are made 0755 from ``layer`` down, never through a symlink.
    """
    parts = tuple(p for p in dest.split("/") if p)
    if ".." in parts or "." in parts:
        raise ValueError(f"copy destination {dest!r} is not normalised")
    root = os.open(layer, _DIR_FLAGS)
    try:
        os.fchmod(root, 0o755)  # the image's "/" whatever the server's umask
        fd = _walk_from(root, parts, create=True)
    finally:
        os.close(root)
    try:
        with tarfile.open(tar_path, mode="r|", bufsize=_CHUNK) as tar:
            _Unpacker(fd, tar, copy=True).run()
    except (tarfile.TarError, EOFError) as exc:
        raise UnsafeLayerError(f"the files of the copy step are not a valid tar: {exc}") from exc
    finally:
        os.close(fd)


class _Unpacker:
    """Writes one tar stream's members below a directory, refusing every escape.

    All paths are resolved with ``*at`` calls from directory descriptors opened with
    ``O_NOFOLLOW``, never by the kernel from a string, so no symlink is ever followed.
    ``dest`` is a path or a directory descriptor (borrowed: the caller closes it).
    ``copy`` unpacks a copy step's files rather than an image layer (see unpack_copy).
    """

    def __init__(self, dest: Path | int, tar: tarfile.TarFile, *, copy: bool = False) -> None:
        self._tar = tar
        self._copy = copy
        self._root = os.dup(dest) if isinstance(dest, int) else os.open(dest, _DIR_FLAGS)
        # Directory metadata is applied last: creating entries inside a directory would
        # change its mtime again, and a read-only mode would stop nothing (root) but is odd.
        self._dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}
        # The most recent parent directory, kept open: consecutive entries share it.
        self._cached: tuple[tuple[str, ...], int] | None = None

    def run(self) -> None:
        try:
            for member in self._tar:
                try:
                    self._member(member)
                except UnsafeLayerError:
                    raise
                except OSError as exc:
                    if exc.errno in _HOST_ERRNOS:
                        raise
                    raise UnsafeLayerError(
                        f"cannot unpack entry {member.name!r} of the layer: {exc}"
                    ) from exc
                except ValueError as exc:
                    raise UnsafeLayerError(
                        f"cannot unpack entry {member.name!r} of the layer: {exc}"
                    ) from exc
            for parts in sorted(self._dirs, key=len, reverse=True):
                self._finish_dir(parts, self._dirs[parts])
        finally:
            self._forget()
            os.close(self._root)

    # -- one member ---------------------------------------------------------------------------

    def _member(self, m: tarfile.TarInfo) -> None:
        parts = _split(m.name)
        if not parts:
            if not m.isdir():
                raise UnsafeLayerError(f"entry {m.name!r} names the layer root but is no directory")
            if not self._copy:  # a copy's root is its destination, already made 0755
                self._dirs[()] = m
            return
        if self._copy:
            if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
                log.debug("skipping %s (tar type %r) in copied files", m.name, m.type)
                return
            # COPY makes root the owner of what it copies, and a caller's xattrs (file
            # capabilities among them) are not theirs to grant.
            m.uid = m.gid = 0
            m.pax_headers = {
                k: v for k, v in m.pax_headers.items() if not k.startswith("SCHILY.xattr.")
            }
        parent = self._parent(parts, m.name)
        name = parts[-1]
        if name.startswith(_WHITEOUT) and not self._copy:
            self._whiteout(parent, parts, name)
        elif m.isdir():
            if not self._clear(parent, name, keep_dir=True):
                os.mkdir(name, 0o700, dir_fd=parent)
            self._dirs[parts] = m
        elif m.isreg():
            self._clear(parent, name)
            fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600, dir_fd=parent,
            )  # fmt: skip
            with open(fd, "wb", buffering=_CHUNK) as out:
                src = self._tar.extractfile(m)
                assert src is not None  # a regular member always has data
                shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                _apply_meta(fd, m)
        elif m.issym():
            self._clear(parent, name)
            os.symlink(m.linkname, name, dir_fd=parent)
            _apply_meta_at(parent, name, m, symlink=True)
        elif m.islnk():
            self._hardlink(parent, name, m)
        elif m.ischr() and m.devmajor == 0 and m.devminor == 0:
            self._clear(parent, name)  # already an overlay whiteout: keep it as one
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
        elif m.isfifo():
            self._clear(parent, name)
            os.mkfifo(name, 0o600, dir_fd=parent)
            _apply_meta_at(parent, name, m, symlink=False)  # just made: not a symlink
        else:  # device nodes: a sandbox gets its /dev from gVisor, never from an image
            log.debug("skipping %s (tar type %r) in a layer", m.name, m.type)

    def _whiteout(self, parent: int, parts: tuple[str, ...], name: str) -> None:
        if name == _OPAQUE:
            os.setxattr(parent, OPAQUE_XATTR, b"y")
            return
        if name.startswith(_WHITEOUT + _WHITEOUT):
            return  # other AUFS metadata (.wh..wh.plnk and friends) means nothing here
        target = name[len(_WHITEOUT) :]
        if target in ("", ".", ".."):
            raise UnsafeLayerError(f"whiteout {'/'.join(parts)!r} names no file")
        if _exists(parent, target):
            # The image spec: a whiteout hides only lower layers' files, never its own layer's.
            return
        os.mknod(target, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)

    def _hardlink(self, parent: int, name: str, m: tarfile.TarInfo) -> None:
        target = _split(m.linkname, f"the target of hard link {m.name!r},")
        if not target:
            raise UnsafeLayerError(f"hard link {m.name!r} points at the layer root")
        try:
            tparent = self._walk(target[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise UnsafeLayerError(
                f"hard link {m.name!r} points at {m.linkname!r}, which is not in this layer"
            ) from exc
        try:
            st = os.stat(target[-1], dir_fd=tparent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise UnsafeLayerError(f"hard link {m.name!r} points at directory {m.linkname!r}")
            if (st.st_dev, st.st_ino) == _stat_or_none(parent, name):
                return  # already the same file
            self._clear(parent, name)
            os.link(target[-1], name, src_dir_fd=tparent, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError as exc:
            raise UnsafeLayerError(
                f"hard link {m.name!r} points at {m.linkname!r}, which is not in this layer"
            ) from exc
        finally:
            os.close(tparent)

    def _finish_dir(self, parts: tuple[str, ...], m: tarfile.TarInfo) -> None:
        try:
            fd = self._walk(parts, create=False)
        except OSError:
            return  # replaced by a later entry (a file or symlink); nothing to finish
        try:
            _apply_meta(fd, m)
        finally:
            os.close(fd)

    # -- paths ------------------------------------------------------------------------------

    def _parent(self, parts: tuple[str, ...], name: str) -> int:
        """A descriptor of the parent directory of ``parts`` (borrowed; do not close)."""
        dir_parts = parts[:-1]
        if self._cached is not None and self._cached[0] == dir_parts:
            return self._cached[1]
        try:
            fd = self._walk(dir_parts, create=True)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):
                raise UnsafeLayerError(
                    f"entry {name!r} lies below a symlink or a file in the layer; "
                    "writing through it could escape the layer"
                ) from exc
            raise
        self._forget()
        self._cached = (dir_parts, fd)
        return fd

    def _walk(self, dir_parts: tuple[str, ...], *, create: bool) -> int:
        """Open ``dir_parts`` below the root, one ``O_NOFOLLOW`` step at a time (a new fd)."""
        return _walk_from(self._root, dir_parts, create=create)

    def _clear(self, parent: int, name: str, *, keep_dir: bool = False) -> bool:
        """Remove what ``name`` is now, so a later entry replaces it (the last one wins).

        Returns True when ``name`` is a directory that was kept.
        """
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            # The cached descriptor is ``parent`` itself, never inside what goes here.
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
        return False

    def _forget(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None


def _walk_from(root: int, dir_parts: tuple[str, ...], *, create: bool) -> int:
    """Open ``dir_parts`` below ``root``, one ``O_NOFOLLOW`` step at a time (a new fd)."""
    fd = os.dup(root)
    try:
        for part in dir_parts:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                # Tars may omit parent directories; Docker makes them 0755 root:root.
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(nfd, 0o755)  # not narrowed by the server's umask
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _split(name: str, what: str = "entry") -> tuple[str, ...]:
    """A member name as path components below the layer root; escapes raise."""
    if "\0" in name:
        raise UnsafeLayerError(f"{what} {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise UnsafeLayerError(f"{what} {name!r} is an absolute path; layer entries are relative")
    norm = posixpath.normpath(name)
    if norm == ".":
        return ()
    if norm == ".." or norm.startswith("../"):
        raise UnsafeLayerError(f"{what} {name!r} climbs out of the layer with '..'")
    parts = tuple(norm.split("/"))
    if len(parts) > _MAX_DEPTH:
        raise UnsafeLayerError(
            f"{what} {name[:100]!r}... is {len(parts)} directories deep; at most {_MAX_DEPTH}"
        )
    return parts


def _exists(parent: int, name: str) -> bool:
    return _stat_or_none(parent, name) is not None


def _stat_or_none(parent: int, name: str) -> tuple[int, int] | None:
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _xattrs(m: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    """The extended attributes a member carries that are safe to set (see the module doc)."""
    result = []
    for key, value in m.pax_headers.items():
        if not key.startswith("SCHILY.xattr."):
            continue
        attr = key[len("SCHILY.xattr.") :]
        if attr.startswith("user.") or attr == "security.capability":
            # tarfile decoded the raw value with surrogateescape; this restores the bytes.
            result.append((attr, value.encode("utf-8", "surrogateescape")))
    return result


def _owner(m: tarfile.TarInfo) -> tuple[int, int]:
    """The member's uid and gid, refused when they are no IDs (see _MAX_ID): chown would
    raise OverflowError, or silently keep root as the owner for -1."""
    if not (0 <= m.uid <= _MAX_ID and 0 <= m.gid <= _MAX_ID):
        raise UnsafeLayerError(f"entry {m.name!r} has owner {m.uid}:{m.gid}, not a uid:gid")
    return m.uid, m.gid


def _apply_meta(fd: int, m: tarfile.TarInfo) -> None:
    # chown first: changing the owner clears setuid/setgid, which chmod then sets back.
    os.fchown(fd, *_owner(m))
    os.fchmod(fd, m.mode & 0o7777)
    for attr, value in _xattrs(m):
        with contextlib.suppress(OSError):  # e.g. a filesystem without user xattrs
            os.setxattr(fd, attr, value)
    with contextlib.suppress(OverflowError, ValueError, OSError):
        os.utime(fd, (m.mtime, m.mtime))


def _apply_meta_at(parent: int, name: str, m: tarfile.TarInfo, *, symlink: bool) -> None:
    os.chown(name, *_owner(m), dir_fd=parent, follow_symlinks=False)
    if not symlink:  # a symlink's mode means nothing on Linux, and lchmod does not exist
        os.chmod(name, m.mode & 0o7777, dir_fd=parent)
    with contextlib.suppress(OverflowError, ValueError, OSError):
        os.utime(name, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)


def _key(diff_id: str) -> str:
    if not _SHA256.fullmatch(diff_id):
        raise UnsupportedImageError(f"layer diff_id {diff_id!r} is not a sha256 digest")
    return diff_id.replace(":", "-")
