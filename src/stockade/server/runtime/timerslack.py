"""The host timer slack of a sandbox's threads, the lever behind dozing (service/doze.py).

runsc 20240729's systrap platform wakes every sandbox about 2,500 times a second, even when
nothing in it runs (a fast-path monitor sleeps 400 us in a loop; gVisor parks it only in
2026 releases). That is about 2.5% of a core per idle sandbox, so 100 idle sandboxes fill a
2-core host. The kernel's timer slack (``/proc/TID/timerslack_ns``, see prctl(2)
PR_SET_TIMERSLACK) lets it defer a thread's timer wake-ups by up to that much and batch
them: at 50 ms, an idle sandbox costs about 0.15% of a core. Threads inherit the slack of
the thread that creates them, so setting it on every thread of the sandbox's cgroup once
covers the threads started later too.
"""

from __future__ import annotations

from pathlib import Path

from stockade.server.runtime.cgroups import cgroup_path

__all__ = ["DEFAULT_SLACK_NS", "DOZE_SLACK_NS", "set_timer_slack"]

# The kernel's default for ordinary threads, which is what a sandbox runs with awake.
DEFAULT_SLACK_NS = 50_000
# While dozing: timers inside the sandbox may fire up to this late.
DOZE_SLACK_NS = 50_000_000

# The cpu controller's cgroup holds every host thread of the sandbox (sentry, gofer, stubs).
_TASK_FILES = (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


def _tasks(sandbox_id: str) -> list[int]:
    rel = cgroup_path(sandbox_id).lstrip("/")
    for root in _TASK_FILES:
        for name in ("tasks", "cgroup.threads"):
            try:
                text = (root / rel / name).read_text()
            except OSError:
                continue
            return [int(t) for t in text.split()]
    return []


def set_timer_slack(sandbox_id: str, slack_ns: int) -> int:
    """Set the timer slack of every host thread of the sandbox; returns how many took it.

    Blocking (procfs writes, some tens per sandbox): call it in a worker thread. Threads
    that exit meanwhile are skipped; a sandbox that is gone gives 0.
    """
    done = 0
    for tid in _tasks(sandbox_id):
        try:
            with open(f"/proc/{tid}/timerslack_ns", "w") as f:
                f.write(str(slack_ns))
            done += 1
        except OSError:
            continue  # the thread ended between the listing and the write
    return done
