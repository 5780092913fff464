"""Reads of the cgroup v1 memory controller that runsc sets up from ``linux.cgroupsPath``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CGROUP_PARENT", "cgroup_path", "oom_kills"]

CGROUP_PARENT = "stockade"
_MEMORY_ROOTS = (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup"))


def cgroup_path(sandbox_id: str) -> str:
    """The ``linux.cgroupsPath`` of a sandbox: one cgroup per sandbox under ``/stockade``."""
    return f"/{CGROUP_PARENT}/{sandbox_id}"


def oom_kills(sandbox_id: str) -> int:
    """How many times the kernel's OOM killer fired in the sandbox's memory cgroup.

    Inside gVisor, an allocation past the limit makes the host kill one of the sandbox's
    host processes; the sandbox may survive (the exec then fails) or die. Either way the
    counter goes up, which is how an exec or a sandbox is reported as ``oom``.
    """
    rel = cgroup_path(sandbox_id).lstrip("/")
    for root in _MEMORY_ROOTS:
        for name in ("memory.oom_control", "memory.events"):
            f = root / rel / name
            try:
                text = f.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0
