"""Sandbox lifetimes: when a running sandbox's time is up, and which ended ones to forget.

The rules, as pure functions of records and clock readings (no IO), so that they are
testable without a server. :class:`~.sandboxes.SandboxService` applies them:

- ``timeout``: a deadline, ``expires_at``, set when the sandbox starts or resumes and by
  ``set_timeout`` (now + seconds).
- ``idle_timeout``: no exec, file or API activity for that long (0: never). An exec that
  is still running counts as activity throughout, so a sandbox never idles under one.
- ``on_timeout``: at either deadline, ``"terminate"`` ends the sandbox (reason
  ``timeout`` or ``idle``); ``"pause"`` pauses it instead.
- retention: the records (and logs) of ended sandboxes are forgotten once they have been
  ended for longer than this (0: kept forever).

All times are ``time.time()`` readings, as in the records.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from ..state.records import SandboxRecord

__all__ = [
    "ENDED",
    "Deadline",
    "deadline",
    "end_message",
    "purge_interval",
    "purgeable",
]

# The statuses of a sandbox that is over for good (paused is not: it can resume).
ENDED = ("terminated", "failed")


class Deadline(NamedTuple):
    at: float
    reason: str  # "timeout" | "idle": the end reason it gives


def deadline(
    record: SandboxRecord, *, last_active: float | None, busy: bool, since: float
) -> Deadline | None:
    """When a running sandbox's lifetime is up and why; None if it has no limit.

    ``last_active``: its last activity as this server saw it (None: none yet); ``busy``:
    an exec is running in it now; ``since``: when this server started. Activity from
    before that is unknown, so a sandbox counts as active from its start or from then,
    whichever is later: a restart never makes a sandbox idle early.

    Example::

        due = deadline(record, last_active=time.time(), busy=False, since=server_start)
        if due is not None and due.at <= time.time():
            ...  # apply record.on_timeout, with due.reason as the end reason
    """
    due = None if record.expires_at is None else Deadline(record.expires_at, "timeout")
    if record.idle_timeout > 0 and not busy:
        base = max(last_active or 0.0, record.started_at or 0.0, since)
        idle = Deadline(base + record.idle_timeout, "idle")
        if due is None or idle.at < due.at:
            due = idle
    return due


def end_message(record: SandboxRecord, reason: str) -> str:
    """What a sandbox's record says when ``reason`` ("timeout" or "idle") ended it, naming
    the fix."""
    if reason == "idle":
        return (
            f"the sandbox reached its idle_timeout of {record.idle_timeout:g}s (no exec, file "
            "or API activity); create it with a larger `idle_timeout=`, or with "
            '`on_timeout="pause"` to keep it for later'
        )
    return (
        f"the sandbox reached its timeout of {record.timeout:g}s; create it with a larger "
        "`timeout=`, or extend it while it runs with set_timeout()"
    )


def purgeable(
    records: Iterable[SandboxRecord], *, retention: float, now: float
) -> list[SandboxRecord]:
    """The ended sandboxes whose records are past ``retention`` seconds (none for 0)."""
    if retention <= 0:
        return []
    cutoff = now - retention
    return [
        r
        for r in records
        # A record without ended_at (never expected) ages from its creation instead.
        if r.status in ENDED and (r.ended_at or r.created_at) < cutoff
    ]


def purge_interval(retention: float) -> float:
    """How often to look for records past ``retention``: often enough that they go within
    a tenth of it, at least once a minute, and never in a busy loop."""
    return max(0.1, min(retention / 10, 60.0))
