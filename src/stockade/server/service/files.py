"""File operations inside a sandbox, performed by coreutils running in the sandbox itself.

Doing the work inside (rather than on the host's view of the overlay) means every path is
resolved by the gVisor kernel: a symlink planted by the sandboxed code can never point the
server at a host file. It also sees what the sandbox sees, tmpfs mounts included.

Each operation is one ``runsc exec`` of a small POSIX shell script. The script reports
failures with fixed exit codes (errno values) so that they map to API errors without
parsing localized messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ...errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    SandboxTerminatedError,
    StockadeError,
)
from ..runtime import proc
from .execs import ExecService, RawExec
from .sandboxes import describe_end

__all__ = ["FileInfo", "FileService", "check_path"]

_ENOENT, _EACCES, _EEXIST, _ENOTDIR, _EISDIR, _ENOSPC, _ENOTEMPTY = 2, 13, 17, 20, 21, 28, 39
_MAX_PATH = 4096

# $1 is the operation, $2 the path. Every branch either succeeds or exits with an errno.
_SCRIPT = r"""
op=$1; p=$2
fail() { echo "$2" >&2; exit "$1"; }
check_parent() {
  d=$(dirname -- "$p")
  [ -e "$d" ] && [ ! -d "$d" ] && fail 20 "a parent of $p is not a directory"
  return 0
}
info() { find "$1" -maxdepth 0 -printf '%y\t%s\t%m\t%T@\t%l\t%p\0'; }
case "$op" in
stat)
  [ -e "$p" ] || [ -L "$p" ] || fail 2 "$p does not exist"
  info "$p" ;;
list)
  [ -e "$p" ] || fail 2 "$p does not exist"
  [ -d "$p" ] || fail 20 "$p is not a directory"
  find "$p" -mindepth 1 -maxdepth 1 -printf '%y\t%s\t%m\t%T@\t%l\t%p\0' ;;
read)
  [ -e "$p" ] || fail 2 "$p does not exist"
  [ -d "$p" ] && fail 21 "$p is a directory; use files.list to read a directory"
  exec cat -- "$p" ;;
write)
  [ -d "$p" ] && fail 21 "$p is a directory"
  check_parent
  mkdir -p -- "$(dirname -- "$p")" 2>/dev/null ||
    fail 20 "cannot create the parent directories of $p"
  if ! err=$(cat 2>&1 >"$p"); then
    case "$err" in *"No space left"*) fail 28 "no space left writing $p" ;; esac
    fail 5 "writing $p failed: $err"
  fi
  info "$p" ;;
mkdir)
  if [ -e "$p" ]; then
    [ -d "$p" ] || fail 17 "$p exists and is not a directory"
    info "$p"; exit 0
  fi
  check_parent
  if [ "$3" = parents ]; then mkdir -p -- "$p" || fail 20 "cannot create $p"
  else [ -d "$(dirname -- "$p")" ] || fail 2 "the parent of $p does not exist; pass parents=True"
       mkdir -- "$p" || fail 5 "cannot create $p"; fi
  info "$p" ;;
remove)
  [ -e "$p" ] || [ -L "$p" ] || fail 2 "$p does not exist"
  [ "$p" = / ] && fail 13 "refusing to remove /"
  if [ -d "$p" ] && [ ! -L "$p" ]; then
    if [ "$3" = recursive ]; then rm -rf -- "$p" || fail 5 "cannot remove $p"
    else rmdir -- "$p" 2>/dev/null ||
      fail 39 "$p is a directory that is not empty; pass recursive=True"
    fi
  else rm -f -- "$p" || fail 5 "cannot remove $p"; fi ;;
*) fail 22 "unknown operation $op" ;;
esac
"""

_TYPES = {"f": "file", "d": "dir", "l": "symlink"}


@dataclass(frozen=True)
class FileInfo:
    path: str
    name: str
    type: str
    size: int
    mode: int
    mtime: float
    target: str | None


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


def _parse_infos(raw: bytes) -> list[FileInfo]:
    out: list[FileInfo] = []
    for rec in raw.split(b"\0"):
        if not rec:
            continue
        kind, size, mode, mtime, target, path = rec.decode(errors="surrogateescape").split("\t", 5)
        name = posixpath.basename(path) or "/"
        out.append(
            FileInfo(
                path=path,
                name=name,
                type=_TYPES.get(kind, "other"),
                size=int(size),
                mode=int(mode, 8),
                mtime=float(mtime),
                target=target or None,
            )
        )
    return out


def _error(code: int, stderr: bytes, sandbox_id: str, path: str, disk: int) -> StockadeError:
    msg = stderr.decode(errors="replace").strip().splitlines()
    text = msg[-1] if msg else f"file operation on {path} failed with code {code}"
    if code == _ENOENT:
        return NotFoundError(f"{text} (in sandbox {sandbox_id})")
    if code in (_EISDIR, _ENOTDIR, _EACCES, 22):
        return InvalidArgumentError(text)
    if code in (_EEXIST, _ENOTEMPTY):
        return ConflictError(text)
    if code == _ENOSPC:
        return ConflictError(
            f"{text}: the sandbox's disk (disk={disk} MiB) is full; "
            "free space or create the sandbox with a larger `disk=`"
        )
    return StockadeError(text, code="internal", status=500)


class FileService:
    def __init__(self, execs: ExecService) -> None:
        self.execs = execs

    async def _failure(
        self, rc: int, stderr: bytes, sandbox_id: str, path: str, disk: int
    ) -> StockadeError:
        err = _error(rc, stderr, sandbox_id, path, disk)
        if err.status >= 500:
            # Not one of the script's own codes: runsc could not run it. If the sandbox
            # is ending, that is the real answer.
            record = await self.execs.sandboxes.settle(sandbox_id)
            if record.status != "running":
                return SandboxTerminatedError(describe_end(record))
        return err

    async def _spawn(self, sandbox_id: str, *args: str) -> tuple[RawExec, int]:
        record = await self.execs.sandboxes.get_running(sandbox_id)
        raw = await self.execs.spawn_raw(record, ["/bin/sh", "-c", _SCRIPT, "sh", *args])
        return raw, record.disk

    async def _run(self, sandbox_id: str, *args: str, stdin: bytes = b"") -> bytes:
        raw, disk = await self._spawn(sandbox_id, *args)
        try:
            out, err = await raw.process.communicate(stdin)
            rc = await proc.wait(raw.process)
        finally:
            raw.cleanup()
        if rc != 0:
            raise await self._failure(rc, err, sandbox_id, args[1], disk)
        return out

    async def stat(self, sandbox_id: str, path: str) -> FileInfo:
        return _parse_infos(await self._run(sandbox_id, "stat", check_path(path)))[0]

    async def list(self, sandbox_id: str, path: str) -> list[FileInfo]:
        infos = _parse_infos(await self._run(sandbox_id, "list", check_path(path)))
        return sorted(infos, key=lambda i: i.name)

    async def mkdir(self, sandbox_id: str, path: str, *, parents: bool) -> FileInfo:
        args = ["mkdir", check_path(path)] + (["parents"] if parents else [])
        return _parse_infos(await self._run(sandbox_id, *args))[0]

    async def remove(self, sandbox_id: str, path: str, *, recursive: bool) -> None:
        args = ["remove", check_path(path)] + (["recursive"] if recursive else [])
        await self._run(sandbox_id, *args)

    async def write(self, sandbox_id: str, path: str, chunks: AsyncIterator[bytes]) -> FileInfo:
        """Stream ``chunks`` into the file; memory use stays at one chunk."""
        path = check_path(path)
        if path == "/":
            raise InvalidArgumentError("cannot write to /: give a file path")
        raw, disk = await self._spawn(sandbox_id, "write", path)
        p = raw.process
        assert p.stdin is not None and p.stdout is not None and p.stderr is not None
        err_task = asyncio.create_task(p.stderr.read())
        out_task = asyncio.create_task(p.stdout.read())
        try:
            try:
                async for chunk in chunks:
                    p.stdin.write(chunk)
                    await p.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the script failed early; its exit code says why
            finally:
                if not p.stdin.is_closing():
                    p.stdin.close()
            rc = await proc.wait(p)
            out, err = await out_task, await err_task
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await proc.wait(p)
            err_task.cancel()
            out_task.cancel()
            raise
        finally:
            raw.cleanup()
        if rc != 0:
            raise await self._failure(rc, err, sandbox_id, path, disk)
        return _parse_infos(out)[0]

    async def read(self, sandbox_id: str, path: str) -> AsyncIterator[bytes]:
        """Start reading; errors (missing, a directory) raise before the first chunk."""
        path = check_path(path)
        raw, disk = await self._spawn(sandbox_id, "read", path)
        p = raw.process
        assert p.stdout is not None and p.stderr is not None
        first = await p.stdout.read(256 * 1024)
        if not first:
            err = await p.stderr.read()
            rc = await proc.wait(p)
            raw.cleanup()
            if rc != 0:
                raise await self._failure(rc, err, sandbox_id, path, disk)
            return _empty()
        return _stream_rest(raw, first)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover  (makes this an async generator)


async def _stream_rest(raw: RawExec, first: bytes) -> AsyncIterator[bytes]:
    p = raw.process
    assert p.stdout is not None
    try:
        yield first
        while chunk := await p.stdout.read(256 * 1024):
            yield chunk
        await proc.wait(p)
    finally:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await proc.wait(p)
        raw.cleanup()
