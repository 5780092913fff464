"""A sandbox's ``output.log``, capped: what its entrypoint and agent write to their fd 2.

The sandbox does not write the file itself: its fd 2 (and runsc's own stderr) is a FIFO
in the sandbox directory, ``output.pipe``, which the sandbox holds open read-write like
the agent's channel, so that it never sees EPIPE when a server goes away. The server
reads the FIFO and appends to ``output.log`` until the file reaches half the cap, then
renames it to ``output.log.1`` (replacing the one before) and starts a new one. The two
files together never hold more than the cap, and hold at least the last half of it once
the output went past it. A restarted server attaches to the FIFO again; while no server
reads it, a writer in the sandbox blocks once the FIFO's buffer is full (1 MiB).

:func:`read_log` reads the files back without ever loading more than a chunk at a time,
following a rotation while it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

__all__ = ["DEFAULT_MAX_LOG_BYTES", "MIN_MAX_LOG_BYTES", "OutputLog", "read_log", "read_tail"]

log = logging.getLogger(__name__)

DEFAULT_MAX_LOG_BYTES = 10 * 1024 * 1024
MIN_MAX_LOG_BYTES = 64 * 1024
LOG_NAME = "output.log"
OLD_NAME = "output.log.1"
PIPE_NAME = "output.pipe"
# Most bytes copied per readiness callback: a flooding sandbox gets its turn like others.
_READ_BUDGET = 256 * 1024
_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_READ_CHUNK = 1024 * 1024


class OutputLog:
    """The copier of one sandbox's FIFO into its capped log files. Event loop only."""

    def __init__(self, directory: Path, cap: int = DEFAULT_MAX_LOG_BYTES) -> None:
        self.dir = directory
        self.cap = max(cap, MIN_MAX_LOG_BYTES)
        self._reader = -1  # the FIFO, read end
        self._file = -1  # output.log, append
        self._size = 0  # of output.log

    @property
    def path(self) -> Path:
        return self.dir / LOG_NAME

    @property
    def pipe_path(self) -> Path:
        return self.dir / PIPE_NAME

    @property
    def reading(self) -> bool:
        return self._reader >= 0

    def new_pipe(self) -> int:
        """A fresh FIFO for a sandbox about to start, read from now on; returns the
        descriptor (read-write) to give the sandbox as its stderr. The caller closes it
        once runsc has started."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.pipe_path.unlink()
        os.mkfifo(self.pipe_path, 0o600)
        # Read-write first: the FIFO then has a writer, and the read end opened next never
        # sees an EOF before the sandbox holds its own copy.
        writer = os.open(self.pipe_path, os.O_RDWR | os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # a larger buffer: more slack while no server reads
            fcntl.fcntl(writer, _F_SETPIPE_SZ, _PIPE_SIZE)
        try:
            self._open_reader()
        except BaseException:
            os.close(writer)
            raise
        return writer

    def attach(self) -> bool:
        """Read the FIFO of a sandbox started by an earlier server; False if it has none
        (started before its output went through one: it writes output.log itself)."""
        if self.reading:
            return True
        try:
            self._open_reader()
        except FileNotFoundError:
            return False
        return True

    def _open_reader(self) -> None:
        fd = os.open(self.pipe_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._reader = fd
        asyncio.get_running_loop().add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        self._copy(_READ_BUDGET)

    def _copy(self, budget: int) -> None:
        """Copy what the FIFO holds, up to ``budget`` bytes; stop reading at its EOF, once
        every writer is gone (the sandbox ended)."""
        done = 0
        while self._reader >= 0 and done < budget:
            want = min(_READ_CHUNK, budget - done)
            try:
                data = os.read(self._reader, want)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as exc:
                log.warning("reading the output of %s: %s", self.dir.name, exc)
                self._stop_reading()
                return
            if not data:
                self._stop_reading()
                return
            self.write(data)
            done += len(data)

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating at half the cap so that the tail is always kept."""
        half = self.cap // 2
        if len(data) > half:
            # Only its end can survive the rotations it would cause anyway.
            data = data[-half:]
        try:
            while data:
                if self._file < 0:
                    self._file = os.open(
                        self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                    )
                    self._size = os.fstat(self._file).st_size
                room = half - self._size
                if room <= 0:
                    self._rotate()
                    continue
                n = os.write(self._file, data[:room])
                self._size += n
                data = data[n:]
        except OSError as exc:
            # A full disk, say: the output is lost, the sandbox is not held up by it.
            log.warning("writing the output of %s: %s", self.dir.name, exc)

    def _rotate(self) -> None:
        os.close(self._file)
        self._file = -1
        os.replace(self.path, self.dir / OLD_NAME)

    def drain(self) -> None:
        """Copy what the FIFO holds now (before reading the log for an error). Bounded:
        a sandbox that keeps writing cannot hold the caller, and past the cap only the
        end of it would be kept anyway."""
        self._copy(self.cap + _PIPE_SIZE)

    def _stop_reading(self) -> None:
        if self._reader >= 0:
            with contextlib.suppress(RuntimeError):  # the loop may be closing
                asyncio.get_running_loop().remove_reader(self._reader)
            os.close(self._reader)
            self._reader = -1
        if self._file >= 0:
            os.close(self._file)
            self._file = -1

    def close(self) -> None:
        """Copy what is left and stop (the sandbox ended, or a new FIFO replaces this)."""
        if self._reader >= 0:
            self.drain()
        self._stop_reading()


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return -1


def _read_chunk(fd: int) -> bytes:
    return os.read(fd, _READ_CHUNK)


async def read_log(
    directory: Path, *, follow: bool, alive: Callable[[], Awaitable[bool]]
) -> AsyncIterator[bytes]:
    """The sandbox's output, a chunk (at most 1 MiB) at a time: the rotated file, then the
    current one; with ``follow``, then what comes until ``alive()`` turns false.

    Each file is held open while it is read, so a rotation meanwhile loses nothing of it;
    a reader that falls two rotations behind skips what it missed.
    """
    current = directory / LOG_NAME
    fd = await asyncio.to_thread(_open, current)
    old = await asyncio.to_thread(_open, directory / OLD_NAME)
    try:
        if old >= 0 and fd >= 0 and os.fstat(old).st_ino == os.fstat(fd).st_ino:
            # Rotated between the two opens: what we hold as current is that old file.
            os.close(old)
            old = -1
        if old >= 0:
            while chunk := await asyncio.to_thread(_read_chunk, old):
                yield chunk
        while True:
            if fd >= 0:
                while chunk := await asyncio.to_thread(_read_chunk, fd):
                    yield chunk
            if not follow:
                return
            # At the end of what we hold: a newer file, or more to come, or the end.
            newer = await asyncio.to_thread(_open, current)
            if newer >= 0 and (fd < 0 or os.fstat(newer).st_ino != os.fstat(fd).st_ino):
                if fd >= 0:
                    # Rotated: whatever was appended before the rename is read first.
                    while chunk := await asyncio.to_thread(_read_chunk, fd):
                        yield chunk
                    os.close(fd)
                fd = newer
                continue
            if newer >= 0:
                os.close(newer)
            if not await alive():
                if fd >= 0:
                    while chunk := await asyncio.to_thread(_read_chunk, fd):
                        yield chunk
                return
            await asyncio.sleep(0.2)
    finally:
        for f in (fd, old):
            if f >= 0:
                os.close(f)


def read_tail(directory: Path, limit: int) -> bytes:
    """The last ``limit`` bytes of the sandbox's output (blocking; reads only those)."""
    out = b""
    for name in (LOG_NAME, OLD_NAME):
        want = limit - len(out)
        if want <= 0:
            break
        try:
            with open(directory / name, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - want))
                out = f.read(want) + out
        except OSError:
            continue
    return out
