"""Reads of the cgroups that runsc sets up for a sandbox from ``linux.cgroupsPath``: the
memory controller's OOM kills and the CPU time the host charged to the sandbox."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CGROUP_PARENT", "cgroup_path", "cpu_seconds", "oom_kills"]

CGROUP_PARENT = "stockade"
_MEMORY_ROOTS = (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup"))
_CGROUP_ROOT = Path("/sys/fs/cgroup")


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


def cpu_seconds(sandbox_id: str, root: Path = _CGROUP_ROOT) -> float | None:
    """CPU time the host charged to the sandbox's cgroup so far, in seconds: every host
    thread of it (the gVisor kernel, its gofer, the code inside), user and system time;
    None once the cgroup is gone (``runsc delete`` removes it) or never was.

    The cgroup v1 ``cpuacct`` controller counts nanoseconds; a cgroup v2 host counts
    microseconds in ``cpu.stat``. The count only grows while the cgroup lives.
    """
    rel = cgroup_path(sandbox_id).lstrip("/")
    try:
        return int((root / "cpuacct" / rel / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        pass
    try:
        text = (root / rel / "cpu.stat").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            try:
                return int(value) / 1e6
            except ValueError:
                return None
    return None
