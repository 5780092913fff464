"""Host subprocesses of the server: one place that spawns them and remembers their PIDs.

The server is a child subreaper (see :mod:`.reaper`), so orphaned runsc processes are
re-parented to it and it must reap them. asyncio reaps the processes it spawned itself;
the reaper must leave those alone, so every spawn goes through :func:`spawn` and is
recorded in :data:`OWNED_PIDS` until asyncio has reaped it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

__all__ = [
    "OWNED_PIDS", "SPAWN_LOCK", "CommandError", "Completed", "background", "run", "spawn",
]  # fmt: skip

# PIDs of children that asyncio waits for itself; the reaper leaves them alone.
OWNED_PIDS: set[int] = set()
# Held from a child's fork until its PID is in OWNED_PIDS, and by the reaper while it
# collects orphans, so that it never sees a child of ours before it is registered.
SPAWN_LOCK = threading.Lock()

_File = int | IO[bytes] | None

# Niceness of the commands spawned in this context (see background()).
_NICE: contextvars.ContextVar[int] = contextvars.ContextVar("nice", default=0)


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Run the commands spawned inside at the lowest CPU priority: work done ahead of need
    (service/boot_reserve.py) then yields the cores to the requests being served meanwhile."""
    token = _NICE.set(19)
    try:
        yield
    finally:
        _NICE.reset(token)


class CommandError(Exception):
    """A host command failed; the message holds its argv head, exit code and stderr tail."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        tail = output.strip()[-2000:]
        super().__init__(f"{' '.join(argv[:4])} … exited {returncode}: {tail}")
        self.returncode = returncode
        self.output = output


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


async def spawn(
    argv: Sequence[str],
    *,
    stdin: _File = asyncio.subprocess.DEVNULL,
    stdout: _File = asyncio.subprocess.DEVNULL,
    stderr: _File = asyncio.subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    start_new_session: bool = False,
    preexec_fn: object = None,
) -> asyncio.subprocess.Process:
    """Start ``argv`` and record its PID so the reaper does not steal its exit status.

    The child may exit before ``create_subprocess_exec`` returns; without SPAWN_LOCK the
    reaper could collect it in that window, and asyncio would then report exit status 255
    for a command that succeeded.
    """
    if _NICE.get():
        argv = ["nice", "-n", str(_NICE.get()), *argv]
    if not SPAWN_LOCK.acquire(blocking=False):
        await asyncio.to_thread(SPAWN_LOCK.acquire)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=start_new_session,
            preexec_fn=preexec_fn,  # type: ignore[arg-type]
            close_fds=True,
        )
        OWNED_PIDS.add(proc.pid)
    finally:
        SPAWN_LOCK.release()
    return proc


async def wait(proc: asyncio.subprocess.Process) -> int:
    """Wait for a process from :func:`spawn` and forget its PID."""
    try:
        return await proc.wait()
    finally:
        OWNED_PIDS.discard(proc.pid)


async def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: bytes | None = None,
    timeout: float | None = 120.0,
) -> Completed:
    """Run a short host command to completion, capturing its output.

    Detached runsc processes inherit our descriptors, so callers that start one must
    pass files instead of pipes (see ``Runsc.run_detached``); this helper is for commands
    that end by themselves.
    """
    proc = await spawn(
        argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await wait(proc)
        raise CommandError(argv, -9, f"timed out after {timeout}s") from None
    finally:
        OWNED_PIDS.discard(proc.pid)
    rc = proc.returncode if proc.returncode is not None else -1
    if check and rc != 0:
        raise CommandError(argv, rc, (err or out).decode(errors="replace"))
    return Completed(rc, out, err)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; an exited process waiting to be reaped (a zombie) does not."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2 :].split()
    return bool(fields) and fields[0] not in (b"Z", b"X")


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the server dies (PR_SET_PDEATHSIG).

    For helpers such as ``runsc wait`` that must not outlive the server that started
    them: a leftover one would race the next server's for the same exit status.
    """
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
