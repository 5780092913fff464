"""Wheels for image builds, downloaded once by the host's own pip.

Build sandboxes must not need the internet for a built-in image, so the wheels of its
pinned requirements are fetched on the host, for the sandboxes' Python (CPython 3.11 on
x86_64 Linux, whatever the host runs), with pip as the host has it configured (its index,
mirrors and certificates). They go to ``<cache>/wheelhouse/<name>-<hash>/``, where the
hash covers the pinned requirements and the target, so that a changed pin is a new
directory and an unchanged one is found again.

The directory is laid out as an overlay layer: a build step mounts it as an extra lower
layer of its sandbox, where the wheels appear at ``/opt/stockade/wheels/`` (see
``ImageBuilder``); the image built never contains it.

Several servers may share one cache (the test suite does): a download holds an exclusive
file lock, writes into a temporary directory and renames it into place only when pip has
succeeded, with a ``complete`` marker inside; a complete wheelhouse costs no pip call.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import ServerError
from ..runtime import proc

__all__ = [
    "WHEELS_DIR",
    "PipRunner",
    "Wheelhouse",
    "WheelhouseError",
    "ensure_wheelhouse",
    "run_pip",
]

# Where the wheels appear inside a build sandbox that mounts the wheelhouse.
WHEELS_DIR = "/opt/stockade/wheels"

_TAIL_LINES = 15

# (argv, a callback for each line of output) -> exit status
PipRunner = Callable[[Sequence[str], Callable[[str], None]], Awaitable[int]]


class WheelhouseError(ServerError):
    """The host's pip could not download a wheelhouse."""


@dataclass(frozen=True)
class Wheelhouse:
    """Pinned requirements, and the interpreter and platforms their wheels are for."""

    name: str
    requirements: tuple[str, ...]
    python_version: str = "3.11"
    implementation: str = "cp"
    abi: str = "cp311"
    # Debian bookworm has glibc 2.36; pip also takes older manylinux tags for each of these.
    platforms: tuple[str, ...] = (
        "manylinux_2_28_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "any",
    )

    @property
    def digest(self) -> str:
        target = {
            "requirements": sorted(self.requirements),
            "python_version": self.python_version,
            "implementation": self.implementation,
            "abi": self.abi,
            "platforms": list(self.platforms),
        }
        return hashlib.sha256(json.dumps(target, sort_keys=True).encode()).hexdigest()

    @property
    def dirname(self) -> str:
        """The directory's name: what a build step names the wheelhouse by."""
        return f"{self.name}-{self.digest[:16]}"

    def path(self, cache_dir: Path) -> Path:
        return cache_dir / "wheelhouse" / self.dirname

    def is_complete(self, cache_dir: Path) -> bool:
        return (self.path(cache_dir) / "complete").is_file()

    def pip_argv(self, dest: Path) -> list[str]:
        platforms = [arg for p in self.platforms for arg in ("--platform", p)]
        return [
            sys.executable, "-m", "pip", "download", "--only-binary=:all:",
            "--python-version", self.python_version, "--implementation", self.implementation,
            "--abi", self.abi, *platforms, "--progress-bar", "off", "-d", str(dest),
            *self.requirements,
        ]  # fmt: skip


async def run_pip(argv: Sequence[str], on_line: Callable[[str], None]) -> int:
    """Run the host's pip, passing on each line it prints."""
    p = await proc.spawn(argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert p.stdout is not None
    try:
        async for raw in p.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                on_line(line)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        raise
    finally:
        code = await proc.wait(p)
    return code


async def ensure_wheelhouse(
    cache_dir: Path,
    wheelhouse: Wheelhouse,
    *,
    on_log: Callable[[str], None] | None = None,
    pip: PipRunner = run_pip,
) -> Path:
    """The wheelhouse's directory, downloading its wheels first unless already complete."""
    say = on_log or _ignore
    final = wheelhouse.path(cache_dir)
    if wheelhouse.is_complete(cache_dir):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(final.parent / f"{wheelhouse.dirname}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        say(f"waiting for the download lock of wheelhouse {wheelhouse.dirname}")
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        if not wheelhouse.is_complete(cache_dir):  # else another server made it meanwhile
            await _download(final, wheelhouse, say, pip)
    finally:
        os.close(fd)
    return final


async def _download(
    final: Path, wheelhouse: Wheelhouse, say: Callable[[str], None], pip: PipRunner
) -> None:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    wheels = tmp / WHEELS_DIR.lstrip("/")
    wheels.mkdir(parents=True)
    try:
        argv = wheelhouse.pip_argv(wheels)
        say(
            f"downloading the wheels of {wheelhouse.name} with the host's pip "
            f"({len(wheelhouse.requirements)} requirements)"
        )
        started = time.monotonic()
        tail: list[str] = []

        def line(text: str) -> None:
            tail[:] = [*tail[-(_TAIL_LINES - 1) :], text]
            say(f"  {text}")

        code = await pip(argv, line)
        found = sorted(wheels.glob("*.whl"))
        if code != 0 or not found:
            last = "\n".join(tail) or "(no output)"
            why = f"exited {code}" if code != 0 else "downloaded no wheel"
            raise WheelhouseError(
                f"downloading the wheelhouse {wheelhouse.dirname} failed: `{shlex.join(argv)}` "
                f"{why}; pip's last lines:\n{last}"
            )
        size = await asyncio.to_thread(_publish, tmp, final, found) / (1024 * 1024)
        say(
            f"wheelhouse {wheelhouse.dirname}: {len(found)} wheels ({size:.0f} MiB) in "
            f"{time.monotonic() - started:.1f}s"
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


def _publish(tmp: Path, final: Path, wheels: Sequence[Path]) -> int:
    # A sandbox sees these as root-owned files of its image: keep them world-readable
    # whatever the umask and temporary-directory modes were.
    for path in [tmp, *tmp.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    size = sum(w.stat().st_size for w in wheels)
    (tmp / "complete").write_text(f"{len(wheels)} {size}\n")
    shutil.rmtree(final, ignore_errors=True)  # an incomplete one, left by a crash
    os.rename(tmp, final)
    return size


def _ignore(_line: str) -> None:
    pass
