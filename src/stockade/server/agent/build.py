"""Compile Stockade's small C programs into static binaries, once per version.

There are two: ``stockade-agent`` (the in-sandbox init), compiled from every ``*.c`` file of
this package's directory with the ``*.h`` files alongside, and ``stockade-netexec`` (the
host-side launcher of networked sandboxes, the single file network/stockade-netexec.c).

The binary is named after a hash of its sources (every file's name and content), so a new
release never runs an old agent and unchanged sources are never rebuilt. Concurrent
builders (several servers, test workers) serialise on a lock file; the loser finds the
binary in place. The result is static, so it runs in any image, with or without a libc.
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

__all__ = [
    "AgentBuildError",
    "agent_binary",
    "agent_sources",
    "ensure_agent",
    "netexec_binary",
    "sources_digest",
]

_SOURCE_SUFFIXES = (".c", ".h")
_INSTALL_HINT = "install a C compiler and static libc with: apt-get install gcc libc6-dev"
# No -Werror here: a newer compiler's new warning must not stop a server from starting.
_CFLAGS = ["-static", "-O2", "-Wall", "-Wextra"]
_BUILD_TIMEOUT_S = 300


class AgentBuildError(RuntimeError):
    """The agent could not be compiled; the message says why and what to install."""


def agent_sources() -> dict[str, bytes]:
    """The agent's ``*.c`` and ``*.h`` files, by name, sorted by name."""
    package = resources.files("stockade.server.agent")
    found = {
        entry.name: entry.read_bytes()
        for entry in package.iterdir()
        if entry.name.endswith(_SOURCE_SUFFIXES) and entry.is_file()
    }
    return dict(sorted(found.items()))


def sources_digest(sources: dict[str, bytes]) -> str:
    """First 16 hex digits of a SHA-256 over every file's name and content, by name.

    Each name and content is preceded by its length, so that no two different sets of
    files feed the same bytes to the hash.
    """
    h = hashlib.sha256()
    for name in sorted(sources):
        for part in (name.encode(), sources[name]):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.hexdigest()[:16]


def agent_binary(cache_dir: Path) -> Path:
    """``<cache_dir>/agent/stockade-agent-<hash>``, compiled now if it is not there yet."""
    sources = agent_sources()
    return _binary(sources, sources_digest(sources), "stockade-agent", cache_dir)


def netexec_binary(cache_dir: Path) -> Path:
    """``<cache_dir>/agent/stockade-netexec-<hash>``, compiled now if it is not there yet."""
    source = (resources.files("stockade.server.network") / "stockade-netexec.c").read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    return _binary({"stockade-netexec.c": source}, digest, "stockade-netexec", cache_dir)


def _binary(sources: dict[str, bytes], digest: str, name: str, cache_dir: Path) -> Path:
    out_dir = Path(cache_dir) / "agent"
    target = out_dir / f"{name}-{digest}"
    if target.is_file():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():  # built by another process while we waited
            return target
        _compile(sources, name, out_dir, target)
    return target


def _compile(sources: dict[str, bytes], name: str, out_dir: Path, target: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise AgentBuildError(f"cannot build {name}: gcc is not installed; {_INSTALL_HINT}")
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as tmp:
        src_dir = Path(tmp) / "src"
        src_dir.mkdir()
        for file_name, content in sources.items():
            (src_dir / file_name).write_bytes(content)
        c_files = [str(src_dir / n) for n in sorted(sources) if n.endswith(".c")]
        # -iquote, not -I: the sources' own headers must never hide a system header.
        include = ["-iquote", str(src_dir)]
        binary = Path(tmp) / name
        try:
            result = subprocess.run(
                [gcc, *_CFLAGS, *include, "-o", str(binary), *c_files],
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
