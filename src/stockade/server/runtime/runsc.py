"""Every runsc command line Stockade runs is built here, and only here.

Global flags are the same for every verb so that a sandbox started by one server process
is found and driven by the next one: a private ``--root`` per data directory, the systrap
platform (the only fast one on these hosts; see DESIGN.md), our own kernel overlay as the
root (``--overlay2=none``, so that writes land in the sandbox's upper directory) and no
network (``--network=none``), and open connections that a checkpoint may reset
(``--net-disconnect-ok``). Only ``run`` of a networked sandbox differs: it uses
``--network=sandbox`` (gVisor's netstack on the namespace named in the spec) behind a
launcher that works around runsc's root-namespace check (network/stockade-netexec.c).

A detached sandbox inherits the descriptors of the ``runsc`` that started it, so
``run --detach`` is never given pipes of ours (they would never reach EOF): its stdio are
the agent's FIFOs, opened read-write, and the log (a FIFO the server copies from).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import proc

__all__ = ["MIN_RUNSC_VERSION", "Runsc", "RunscError", "SandboxState", "runsc_version"]

# The first release with a usable systrap platform and checkpoint --leave-running.
MIN_RUNSC_VERSION = 20240101


class RunscError(Exception):
    """A runsc verb failed; the message carries the verb and runsc's own words."""


@dataclass(frozen=True)
class SandboxState:
    id: str
    status: str  # "created" | "running" | "stopped" | "paused"
    pid: int


def runsc_version(binary: str) -> int | None:
    """The release date of a runsc binary as YYYYMMDD, or None if it cannot be read."""
    import subprocess

    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    m = re.search(r"version\s+(?:\S*?[~-])?(\d{8})", out) or re.search(r"(20\d{6})", out)
    return int(m.group(1)) if m else None


class Runsc:
    """Drives runsc for one data directory. Safe to share: it holds no mutable state."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root

    def _argv(self, *verb: str, network: str = "none") -> list[str]:
        return [
            self.binary,
            f"--root={self.root}",
            "--platform=systrap",
            "--overlay2=none",
            f"--network={network}",
            # A checkpoint resets the sandbox's open TCP connections instead of refusing
            # to save them (gVisor cannot carry a live connection across a restore).
            "--net-disconnect-ok",
            *verb,
        ]

    async def run_detached(
        self,
        sandbox_id: str,
        bundle: Path,
        *,
        stdin: int,
        stdout: int,
        log: Path | int,
        launcher: Sequence[str] = (),
        checkpoint: Path | None = None,
    ) -> None:
        """Create and start a sandbox from ``bundle``.

        ``stdin``/``stdout`` become the init's (the agent's FIFOs); ``log`` (a file, or a
        descriptor to use as is) receives its stderr and runsc's own complaints; with a
        descriptor the caller reads them for the error message. A ``launcher`` (the
        netexec prefix) means the spec names a network namespace and the sandbox gets
        gVisor's netstack in it. With ``checkpoint`` (a directory written by
        :meth:`checkpoint`) the sandbox is restored from it instead of booted: its
        processes carry on where they were, with the new stdin/stdout in place of the old
        ones.
        """
        verb = ["run"] if checkpoint is None else ["restore", f"--image-path={checkpoint}"]
        run = [*verb, "--detach", f"--bundle={bundle}", f"--pid-file={bundle / 'pid'}", sandbox_id]
        argv = [*launcher, *self._argv(*run, network="sandbox")] if launcher else self._argv(*run)
        with (
            open(log, "ab")  # noqa: ASYNC230  (a local file, opened once)
            if isinstance(log, Path)
            else contextlib.nullcontext(log)
        ) as err:
            p = await proc.spawn(
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=err,
            )
            try:
                result = await asyncio.wait_for(proc.wait(p), 120)
            except TimeoutError:
                p.kill()
                await proc.wait(p)
                result = -9
        if result != 0:
            tail = f": {_tail(log)}" if isinstance(log, Path) else ""
            raise RunscError(f"runsc {verb[0]} {sandbox_id} exited {result}{tail}")

    async def checkpoint(self, sandbox_id: str, image_path: Path) -> None:
        """Save the sandbox's memory and kernel state into ``image_path``; it keeps running
        (or stays paused, when it was). Uncompressed: the pages are written and read back
        at disk speed, and the checkpoint lives only as long as its snapshot."""
        await self._verb(
            "checkpoint", "--leave-running", "--compression=none",
            f"--image-path={image_path}", sandbox_id, timeout=300,
        )  # fmt: skip

    async def pause(self, sandbox_id: str) -> None:
        """Freeze every task of the sandbox (nothing runs, nothing writes) until resume."""
        await self._verb("pause", sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        await self._verb("resume", sandbox_id)

    async def _verb(self, *args: str, timeout: float = 60) -> None:
        try:
            result = await proc.run(self._argv(*args), check=False, timeout=timeout)
        except proc.CommandError as exc:  # timed out
            raise RunscError(f"runsc {args[0]} {args[-1]} failed: {exc}") from None
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace").strip()[-2000:]
            raise RunscError(f"runsc {args[0]} {args[-1]} failed: {err}")

    def wait_argv(self, sandbox_id: str) -> list[str]:
        """``runsc wait``: blocks until the sandbox's init exits and prints its status."""
        return self._argv("wait", sandbox_id)

    async def state(self, sandbox_id: str) -> SandboxState | None:
        """The sandbox's state, or None when runsc does not know it."""
        result = await proc.run(self._argv("state", sandbox_id), check=False, timeout=30)
        if result.returncode != 0:
            return None
        try:
            data: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError:
            return None
        return SandboxState(str(data.get("id")), str(data.get("status")), int(data.get("pid", -1)))

    async def list(self) -> list[SandboxState]:
        result = await proc.run(self._argv("list", "--format=json"), check=False, timeout=30)
        if result.returncode != 0:
            raise RunscError(f"runsc list failed: {result.stderr.decode(errors='replace')}")
        items = json.loads(result.stdout or b"[]") or []
        return [SandboxState(str(i["id"]), str(i["status"]), int(i.get("pid", -1))) for i in items]

    async def delete(self, sandbox_id: str) -> None:
        """Force-delete the sandbox, retrying: under parallel deletes one may survive."""
        last = ""
        for attempt in range(5):
            result = await proc.run(
                self._argv("delete", "--force", sandbox_id), check=False, timeout=60
            )
            if await self.state(sandbox_id) is None:
                return
            last = result.stderr.decode(errors="replace").strip()
            await asyncio.sleep(0.1 * (attempt + 1))
        raise RunscError(f"runsc delete {sandbox_id} did not remove it: {last}")


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - limit))
            data = f.read(limit)
    except OSError:
        return ""
    return data.decode(errors="replace").strip()
