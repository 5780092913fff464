"""Compile Stockade's small C programs into static binaries, once per version.

There are two: ``stockade-agent.c`` (the in-sandbox init) and ``stockade-netexec.c`` (the
host-side launcher of networked sandboxes, see network/stockade-netexec.c).

The binary is named after the source's hash, so a new release never runs an old agent
and an unchanged source is never rebuilt. Concurrent builders (several servers, test
workers) serialise on a lock file; the loser finds the binary in place. The result is
static, so it runs in any image, with or without a libc.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["AgentBuildError", "agent_binary", "agent_source", "ensure_agent", "netexec_binary"]

SOURCE_NAME = "stockade-agent.c"
_INSTALL_HINT = "install a C compiler and static libc with: apt-get install gcc libc6-dev"
# No -Werror here: a newer compiler's new warning must not stop a server from starting.
_CFLAGS = ["-static", "-O2", "-Wall", "-Wextra"]
_BUILD_TIMEOUT_S = 300


class AgentBuildError(RuntimeError):
    """The agent could not be compiled; the message says why and what to install."""


def agent_source() -> bytes:
    return (resources.files("stockade.server.agent") / SOURCE_NAME).read_bytes()


def agent_binary(cache_dir: Path) -> Path:
    """``<cache_dir>/agent/stockade-agent-<hash>``, compiled now if it is not there yet."""
    return _binary(agent_source(), "stockade-agent", cache_dir)


def netexec_binary(cache_dir: Path) -> Path:
    """``<cache_dir>/agent/stockade-netexec-<hash>``, compiled now if it is not there yet."""
    source = (resources.files("stockade.server.network") / "stockade-netexec.c").read_bytes()
    return _binary(source, "stockade-netexec", cache_dir)


def _binary(source: bytes, name: str, cache_dir: Path) -> Path:
    digest = hashlib.sha256(source).hexdigest()[:16]
    out_dir = Path(cache_dir) / "agent"
    target = out_dir / f"{name}-{digest}"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():  # built by another process while we waited
            return target
        _compile(source, name, out_dir, target)
    return target


def _compile(source: bytes, name: str, out_dir: Path, target: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise AgentBuildError(f"cannot build {name}: gcc is not installed; {_INSTALL_HINT}")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_bytes(source)
        binary = Path(tmp) / name
        try:
            result = subprocess.run(
                [gcc, *_CFLAGS, "-o", str(binary), str(src)],
                capture_output=True,
                text=True,
                timeout=_BUILD_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise AgentBuildError(f"cannot build {name}: {e}; {_INSTALL_HINT}") from e
        if result.returncode != 0:
            raise AgentBuildError(
                f"cannot build {name} (gcc exited {result.returncode}; "
                f"{_INSTALL_HINT}):\n{result.stderr.strip()[-4000:]}"
            )
        binary.chmod(0o755)
        # Same directory, so the rename is atomic: nobody sees a half-written binary.
        os.replace(binary, target)


async def ensure_agent(cache_dir: Path) -> Path:
    """:func:`agent_binary` off the event loop (a first build takes a few seconds)."""
    return await asyncio.to_thread(agent_binary, cache_dir)
