"""OCI runtime specs (config.json and exec process.json) for runsc.

The limits live here so that the init process and every exec get the same ones:
- memory: the cgroup limit; gVisor also reports it as MemTotal inside.
- cpu: a CFS quota of ``cpu`` cores per 100 ms period.
- RLIMIT_NPROC: the fork-bomb guard. The gVisor kernel enforces it per user inside the
  sandbox, so a bomb gets EAGAIN while the sandbox lives on. It scales with ``memory``
  (one process per 2 MiB, within 64–4096): a limit that lets the bomb exhaust memory first
  would turn a contained bomb into an OOM kill of the whole sandbox. ``pids.max`` counts
  host threads of the sandbox, not guest processes, so it is only a backstop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_ENV", "ProcessSpec", "container_spec", "max_processes", "write_json"]

_PIDS_BACKSTOP = 40960
_CPU_PERIOD_US = 100_000

DEFAULT_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}

# The default init: idles, and (as dash's wait collects any child) reaps the orphans that
# exec'd commands leave behind, so zombies do not pile up in long-lived sandboxes.
IDLE_INIT = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 86400 & wait $!; done"]


# Root in a sandbox gets what root gets in a Docker container (less NET_RAW), inside the
# gVisor kernel: enough for apt (which drops to its _apt user), chown, useradd and su.
# Without capabilities root could not even change a file's owner.
_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT",
    "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip
_CAPABILITY_SETS = ("bounding", "effective", "permitted")


def max_processes(memory_mib: int) -> int:
    """The sandbox's process limit: from its memory, so that a fork bomb meets the limit
    long before it could exhaust the host's PIDs (the cgroup's pids limit backs it up)."""
    return max(64, min(4096, memory_mib // 2))


def _rlimits(nproc: int) -> list[dict[str, Any]]:
    return [
        {"type": "RLIMIT_NPROC", "hard": nproc, "soft": nproc},
        {"type": "RLIMIT_NOFILE", "hard": 65536, "soft": 65536},
    ]


class ProcessSpec:
    """An OCI ``process`` object: what to run, with which env, where, and on which terminal."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str = "/",
        terminal: bool = False,
    ) -> None:
        self.args = list(args)
        self.env = dict(env)
        self.cwd = cwd
        self.terminal = terminal

    def to_dict(self, nproc: int) -> dict[str, Any]:
        """The object, with at most ``nproc`` processes (the sandbox's, from its memory)."""
        return {
            "terminal": self.terminal,
            "user": {"uid": 0, "gid": 0},
            "args": self.args,
            "env": [f"{k}={v}" for k, v in self.env.items()],
            "cwd": self.cwd,
            "rlimits": _rlimits(nproc),
            "capabilities": {k: list(_CAPABILITIES) for k in _CAPABILITY_SETS},
            "noNewPrivileges": True,
        }


def container_spec(
    *,
    root: Path,
    process: ProcessSpec,
    hostname: str,
    cpu: float,
    memory_mib: int,
    cgroups_path: str,
    netns: Path | None = None,
    etc_files: Mapping[str, Path] | None = None,
    volumes: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """The config.json of a sandbox's root container.

    ``netns``: the network namespace to join (a networked sandbox); without it the
    sandbox gets a fresh one with loopback only. ``etc_files``: host files bind-mounted
    read-only over files of the image, e.g. ``/etc/resolv.conf`` pointing at the server's
    DNS forwarder. ``volumes``: mount path → host directory, bind-mounted read-write;
    gVisor's gofer serves them, so the sandbox resolves every symlink and ``..`` inside
    its own view and cannot leave the directory.
    """
    network: dict[str, str] = {"type": "network"}
    if netns is not None:
        network["path"] = str(netns)
    binds = [
        {"destination": dest, "type": "bind", "source": str(src), "options": ["rbind", "ro"]}
        for dest, src in (etc_files or {}).items()
    ]
    binds += [
        {"destination": dest, "type": "bind", "source": str(src), "options": ["rbind", "rw"]}
        for dest, src in sorted((volumes or {}).items())
    ]
    return {
        "ociVersion": "1.0.2",
        "process": process.to_dict(max_processes(memory_mib)),
        "root": {"path": str(root), "readonly": False},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            *binds,
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {
                "memory": {"limit": memory_mib * 1024 * 1024},
                "cpu": {"quota": int(cpu * _CPU_PERIOD_US), "period": _CPU_PERIOD_US},
                "pids": {"limit": _PIDS_BACKSTOP},
            },
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                network,
            ],
        },
    }  # fmt: skip


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write a spec owner-only: it holds the sandbox's env, which may carry secrets."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # a spec written by an older server may exist with 0644
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data))
