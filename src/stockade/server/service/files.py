"""File operations inside a sandbox, performed by its agent.

The agent does the work inside, so every path is resolved by the gVisor kernel: a symlink
planted by sandboxed code can never point the server at a host file, and the server sees
what the sandbox sees, tmpfs mounts included. Bytes stream both ways in frames; the
server holds at most a window of a file at a time, and at most :data:`LIST_MAX_BYTES` of
a listing (:meth:`FileService.listing` says when it stopped there).
"""

from __future__ import annotations

import contextlib
import errno
import posixpath
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from ...errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    StockadeError,
)
from ..agent.protocol import Frame, FrameType
from ..runtime.agent_link import AGENT_REPLY_TIMEOUT, AgentLost, AgentSilent, Channel
from .execs import ExecService, lost, open_channel, silent

__all__ = ["LIST_MAX_BYTES", "LIST_MAX_ENTRIES", "FileInfo", "FileService", "Listing",
           "WatchEvent", "check_mode", "check_path"]  # fmt: skip

_MAX_PATH = 4096
_CHUNK = 256 * 1024
# A listing is cut (and says so) past either: the agent sends up to 100 000 entries of up to
# a few KiB each (long names that are not UTF-8 come escaped, six bytes per byte), which
# would be hundreds of MiB once parsed. The entries come sorted by name, so a cut listing
# is the first ones in order.
LIST_MAX_ENTRIES = 100_000
LIST_MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class FileInfo:
    path: str
    name: str
    type: str
    size: int
    mode: int
    mtime: float
    target: str | None

    @classmethod
    def of(cls, d: dict[str, Any]) -> FileInfo:
        path = str(d.get("path", ""))
        return cls(
            path=path,
            name=str(d.get("name") or posixpath.basename(path) or "/"),
            type=str(d.get("type", "other")),
            size=int(d.get("size", 0)),
            mode=int(d.get("mode", 0)),
            mtime=float(d.get("mtime", 0.0)),
            target=d.get("target"),
        )


@dataclass(frozen=True)
class Listing:
    entries: list[FileInfo]
    truncated: bool  # the directory has more entries than the listing holds


def check_path(path: str) -> str:
    """Validate and normalise an absolute in-sandbox path."""
    if not isinstance(path, str) or not path:
        raise InvalidArgumentError("path is required: an absolute path inside the sandbox")
    if "\x00" in path:
        raise InvalidArgumentError("path must not contain NUL bytes")
    if len(path) > _MAX_PATH:
        raise InvalidArgumentError(f"path is longer than {_MAX_PATH} characters")
    if not path.startswith("/"):
        raise InvalidArgumentError(
            f"path {path!r} is relative; give an absolute path inside the sandbox, e.g. /{path}"
        )
    norm = posixpath.normpath(path)
    return "/" + norm.lstrip("/") if norm.startswith("//") else norm


def check_mode(mode: object) -> int:
    """A permission mode for chmod: an integer in 0..0o7777."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
        raise InvalidArgumentError(
            f"mode {mode!r} is not a permission mode: give an integer in 0..0o7777 "
            "(4095), e.g. 0o755 (493)"
        )
    return mode


@dataclass(frozen=True)
class WatchEvent:
    """One change seen by :meth:`FileService.watch`: ``type`` is create, modify, delete or
    rename (then ``dest`` is the new path), or overflow / limit (events were lost, or part
    of a tree is not watched: ``message`` says which)."""

    type: str
    path: str | None = None
    dest: str | None = None
    dir: bool = False
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.path is not None:
            out["path"] = self.path
            out["dir"] = self.dir
        if self.dest is not None:
            out["dest"] = self.dest
        if self.message is not None:
            out["message"] = self.message
        return out


_WATCH_TYPES = frozenset({"create", "modify", "delete", "rename", "overflow", "limit"})


def _watch_event(item: object) -> WatchEvent | None:
    """An event from the agent (untrusted: anything malformed is dropped)."""
    if not isinstance(item, dict) or item.get("type") not in _WATCH_TYPES:
        return None
    path, dest, message = item.get("path"), item.get("dest"), item.get("message")
    return WatchEvent(
        type=str(item["type"]),
        path=path if isinstance(path, str) else None,
        dest=dest if isinstance(dest, str) else None,
        dir=item.get("dir") is True,
        message=message[:500] if isinstance(message, str) else None,
    )


def _as_user(owner: tuple[int, int] | None) -> dict[str, int]:
    """The request members that make the agent act as ``owner`` (uid, gid); none: root."""
    return {} if owner is None else {"uid": owner[0], "gid": owner[1]}


def _error(
    frame: Frame, sandbox_id: str, disk: int, owner: tuple[int, int] | None = None
) -> StockadeError:
    try:
        info = frame.json()
    except ValueError:
        info = {}
    code = int(info.get("errno", 0) or 0) if isinstance(info, dict) else 0
    text = str(info.get("message", "")) if isinstance(info, dict) else ""
    text = text or f"file operation failed: {errno.errorcode.get(code, code)}"
    if owner is not None and code in (errno.EACCES, errno.EPERM):
        # The agent acted as this user (the message names the path): say who was refused.
        return InvalidArgumentError(
            f"{text} (as user {owner[0]}:{owner[1]}, whose permissions apply; "
            "pass user='root' to act as root)"
        )
    if code == errno.ENOENT:
        return NotFoundError(f"{text} (in sandbox {sandbox_id})")
    if code == errno.EISDIR:
        return InvalidArgumentError(f"{text}; use files.list to read a directory")
    if code == errno.ENOTEMPTY:
        return ConflictError(f"{text}; pass recursive=True to remove it with its contents")
    if code == errno.EEXIST:
        return ConflictError(text)
    # The path is in use (a mount point such as /tmp or /proc, a running program): the
    # caller picked it; the server did not fail.
    if code in (errno.EBUSY, errno.ETXTBSY):
        return ConflictError(text)
    if code == errno.ENOSPC:
        return ConflictError(
            f"{text}: the sandbox's disk (disk={disk} MiB) is full; "
            "free space or create the sandbox with a larger `disk=`"
        )
    # ENXIO, ENODEV, EOPNOTSUPP: a device or special file that cannot do this operation.
    if code in (errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EINVAL, errno.ENAMETOOLONG,
                errno.ELOOP, errno.EROFS, errno.E2BIG, errno.ENXIO, errno.ENODEV,
                errno.EOPNOTSUPP):  # fmt: skip
        return InvalidArgumentError(text)
    return StockadeError(text, code="internal", status=500)


class FileService:
    def __init__(self, execs: ExecService) -> None:
        self.execs = execs

    async def _open(self, sandbox_id: str, *, activity: bool = True) -> tuple[Channel, int]:
        # activity=False (a signed URL's transfer): the sandbox must be running already; it
        # is not resumed, woken or kept from its idle timeout by whoever holds the URL.
        sandboxes = self.execs.sandboxes
        record = await (
            sandboxes.ready_for_use(sandbox_id) if activity else sandboxes.get_running(sandbox_id)
        )
        return await open_channel(self.execs.sandboxes, sandbox_id), record.disk

    @contextlib.asynccontextmanager
    async def _talking(
        self, sandbox_id: str, ch: Channel, *, close: bool = True
    ) -> AsyncIterator[None]:
        """Agent failures in the block as the caller's errors (the sandbox's end, or an
        agent that does not answer); ``ch`` is closed afterwards, or with ``close=False``
        only when the block fails."""
        try:
            yield
        except AgentLost as exc:
            ch.close()
            raise await lost(self.execs.sandboxes, sandbox_id, exc) from None
        except AgentSilent as exc:
            ch.close()
            raise silent(sandbox_id, exc) from None
        except BaseException:
            ch.close()
            raise
        if close:
            ch.close()

    async def _call(
        self,
        sandbox_id: str,
        ftype: FrameType,
        request: dict[str, Any],
        owner: tuple[int, int] | None = None,
    ) -> Any:
        """One request, one answer."""
        ch, disk = await self._open(sandbox_id)
        async with self._talking(sandbox_id, ch):
            await ch.send_json(ftype, request)
            frame = await ch.reply()
        if frame.type == FrameType.ERROR:
            raise _error(frame, sandbox_id, disk, owner)
        return _json_object(frame)

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        return FileInfo.of(
            await self._call(sandbox_id, FrameType.FILE_STAT, {"path": check_path(path)})
        )

    async def list(self, sandbox_id: str, path: str) -> list[FileInfo]:
        return (await self.listing(sandbox_id, path)).entries

    async def listing(self, sandbox_id: str, path: str) -> Listing:
        """A directory's entries sorted by name: all of them, or the first ones up to
        LIST_MAX_ENTRIES / LIST_MAX_BYTES (``truncated``).

        A long listing arrives as DATA parts before its RESULT. Past the bounds the
        channel is closed: the agent drops the rest, and the link drops what it had sent
        of it already.
        """
        ch, disk = await self._open(sandbox_id)
        entries: list[FileInfo] = []
        received = 0
        truncated = False
        async with self._talking(sandbox_id, ch):
            await ch.send_json(FrameType.FILE_LIST, {"path": check_path(path)})
            while True:
                frame = await ch.reply()
                if frame.type not in (FrameType.DATA, FrameType.RESULT):
                    break
                received += len(frame.payload)
                part = _json_object(frame).get("entries")
                for item in part if isinstance(part, list) else ():
                    if len(entries) == LIST_MAX_ENTRIES:
                        truncated = True
                        break
                    with contextlib.suppress(AttributeError, TypeError, ValueError):
                        entries.append(FileInfo.of(item))
                if frame.type == FrameType.RESULT:
                    break
                if truncated or received >= LIST_MAX_BYTES:
                    truncated = True
                    break
        if frame.type == FrameType.ERROR:
            raise _error(frame, sandbox_id, disk)
        return Listing(sorted(entries, key=lambda i: i.name), truncated)

    async def mkdir(
        self, sandbox_id: str, path: str, *, parents: bool, owner: tuple[int, int] | None = None
    ) -> FileInfo:
        """Make ``path`` (with ``parents``, its missing parents too). With ``owner``
        (uid, gid) the agent acts as that user: the user's permissions apply and what is
        made is the user's."""
        request = {"path": check_path(path), "parents": parents, **_as_user(owner)}
        return FileInfo.of(await self._call(sandbox_id, FrameType.FILE_MKDIR, request, owner=owner))

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool) -> None:
        path = check_path(path)
        if path == "/":
            raise InvalidArgumentError("refusing to remove /")
        await self._call(sandbox_id, FrameType.FILE_REMOVE, {"path": path, "recursive": recursive})

    async def rename(self, sandbox_id: str, path: str, dest: str) -> FileInfo:
        """Move ``path`` to ``dest`` (replacing a file there), as rename(2) does; the info
        of ``dest``."""
        path, dest = check_path(path), check_path(dest)
        if "/" in (path, dest):
            raise InvalidArgumentError("cannot rename / or onto /: give other paths")
        request = {"path": path, "dest": dest}
        return FileInfo.of(await self._call(sandbox_id, FrameType.FILE_RENAME, request))

    async def chmod(self, sandbox_id: str, path: str, mode: int) -> FileInfo:
        """Set the permission bits of ``path`` (0..0o7777); its new info."""
        request = {"path": check_path(path), "mode": check_mode(mode)}
        return FileInfo.of(await self._call(sandbox_id, FrameType.FILE_CHMOD, request))

    async def watch(
        self, sandbox_id: str, path: str, *, recursive: bool
    ) -> AsyncGenerator[WatchEvent, None]:
        """Start watching ``path`` (a file or directory, with ``recursive`` its whole
        tree); errors (a missing path) raise here, before any event. The iterator yields
        events as they come, until it is closed: closing it closes the agent's channel,
        and with it the sandbox's inotify descriptor.

        Backpressure: the agent sends only as much as the channel's window allows, and the
        window reopens only as the caller takes events; a caller that falls behind gets an
        ``overflow`` event from the sandbox's kernel instead of unbounded buffering.
        """
        path = check_path(path)
        ch, disk = await self._open(sandbox_id)
        async with self._talking(sandbox_id, ch, close=False):
            await ch.send_json(FrameType.FILE_WATCH, {"path": path, "recursive": recursive})
            ready = await ch.reply()
        if ready.type != FrameType.READY:
            ch.close()
            if ready.type == FrameType.ERROR:
                raise _error(ready, sandbox_id, disk)
            raise StockadeError(f"watching {path}: unexpected answer from the agent")
        return self._watching(sandbox_id, ch)

    async def _watching(self, sandbox_id: str, ch: Channel) -> AsyncGenerator[WatchEvent, None]:
        try:
            while True:
                try:
                    frame = await ch.recv()  # events take any time: no reply timeout
                except AgentLost as exc:
                    raise await lost(self.execs.sandboxes, sandbox_id, exc) from None
                if frame.type != FrameType.DATA:
                    if frame.type == FrameType.ERROR:
                        raise _error(frame, sandbox_id, 0)
                    return
                events = _json_object(frame).get("events")
                for item in events if isinstance(events, list) else ():
                    if (event := _watch_event(item)) is not None:
                        yield event
                ch.grant(len(frame.payload))
        finally:
            ch.close()

    async def write(
        self,
        sandbox_id: str,
        path: str,
        chunks: AsyncIterator[bytes],
        *,
        activity: bool = True,
        owner: tuple[int, int] | None = None,
    ) -> FileInfo:
        """Stream ``chunks`` into the file; memory use stays at one chunk. With ``owner``
        (uid, gid) the agent opens the file, and makes missing parents, as that user: the
        kernel checks the user's permissions (a symlink planted at the path leads only
        where the user may write) and a new file or directory is the user's."""
        path = check_path(path)
        if path == "/":
            raise InvalidArgumentError("cannot write to /: give a file path")
        ch, disk = await self._open(sandbox_id, activity=activity)
        async with self._talking(sandbox_id, ch):
            request = {"path": path, "mode": 0o644, **_as_user(owner)}
            await ch.send_json(FrameType.FILE_WRITE, request)
            ready = await ch.reply()
            if ready.type == FrameType.ERROR:
                raise _error(ready, sandbox_id, disk, owner)
            async for chunk in chunks:
                for i in range(0, len(chunk), _CHUNK):
                    await ch.send(
                        FrameType.DATA, chunk[i : i + _CHUNK], timeout=AGENT_REPLY_TIMEOUT
                    )
            await ch.send(FrameType.END, timeout=AGENT_REPLY_TIMEOUT)
            result = await ch.reply()
        if result.type == FrameType.ERROR:
            raise _error(result, sandbox_id, disk)
        return FileInfo.of(result.json())

    async def read(
        self, sandbox_id: str, path: str, *, activity: bool = True
    ) -> AsyncIterator[bytes]:
        """Start reading; errors (missing, a directory) raise before the first chunk.
        ``activity=False``: see _open."""
        path = check_path(path)
        ch, disk = await self._open(sandbox_id, activity=activity)
        async with self._talking(sandbox_id, ch, close=False):
            await ch.send_json(FrameType.FILE_READ, {"path": path})
            first = await ch.reply()
        if first.type == FrameType.ERROR:
            ch.close()
            raise _error(first, sandbox_id, disk)
        return _stream(ch, first)


def _json_object(frame: Frame) -> dict[str, Any]:
    """A frame's JSON object; {} for anything else (the agent's answers are untrusted)."""
    try:
        value = frame.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _stream(ch: Channel, first: Frame) -> AsyncIterator[bytes]:
    try:
        frame = first
        while frame.type == FrameType.DATA:
            yield frame.payload
            ch.grant(len(frame.payload))
            frame = await ch.reply()
        if frame.type == FrameType.ERROR:
            raise RuntimeError(f"reading failed midway: {frame.payload[:200]!r}")
    finally:
        ch.close()
