"""The persisted records of the server. Plain data: no IO, no behaviour beyond (de)serialising."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Self

__all__ = ["ALIVE", "SandboxRecord", "SnapshotRecord", "VolumeRecord"]


class _Record:
    """JSON (de)serialising shared by the records; unknown keys (a newer server's) are
    ignored, so a record written by one version loads in another."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, raw: str) -> Self:
        data: dict[str, Any] = json.loads(raw)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


# Statuses in which a runsc sandbox may exist for the record.
ALIVE = frozenset({"starting", "running", "pooled"})


@dataclass
class SandboxRecord(_Record):
    """One sandbox, as stored after every state transition.

    status: starting → running → terminated | failed
            (a warm-pool sandbox: starting → pooled → running → …)
            running → paused → running (pause/resume; paused holds no runsc sandbox)
    reason (once ended): terminated | timeout | idle | oom | error | exited
    """

    id: str
    image: str
    cpu: float
    memory: int
    disk: int
    timeout: float
    status: str = "starting"
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    created_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    expires_at: float | None = None
    # Host PID of the runsc sandbox process, to watch for its exit without polling.
    pid: int | None = None
    # {"slot": int | None, "ip": str | None, "policy": NetworkPolicy.to_dict(),
    #  "reason": why there is no network, or None}. None until the sandbox boots.
    network: dict[str, Any] | None = None
    # Exposed ports: [{"port": 8080, "public": False}].
    ports: list[dict[str, Any]] = field(default_factory=list)
    # Grants access to the sandbox's non-public exposed ports (and nothing else).
    access_token: str | None = None
    # The image's USER, which commands run as (None: root).
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    # The image's layers (top-first, without the agent's) as mounted: snapshots and
    # "what changed" need them even after the image's name has moved on.
    layers: list[str] = field(default_factory=list)
    # Volumes mounted into it: {"/data": "vol-…"} (mount path → volume ID).
    volumes: dict[str, str] = field(default_factory=dict)
    # Lifetimes: no exec, file or API activity for idle_timeout seconds also ends it (0 =
    # never); on_timeout says whether either limit terminates or pauses it.
    idle_timeout: float = 0.0
    on_timeout: str = "terminate"
    # A paused sandbox with auto_resume wakes by itself on its next exec, file or port call.
    auto_resume: bool = False
    paused_at: float | None = None
    # The snapshot this sandbox was restored from, if any.
    snapshot: str | None = None
    # Its code contexts' kernels (CodeService.saved): a restarted server attaches to them.
    contexts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.status in ALIVE


@dataclass
class SnapshotRecord(_Record):
    """A memory snapshot (``sn-…``): a runsc checkpoint plus a copy of the sandbox's writes.

    It is recorded only once its directory is complete, so a record always means a whole
    snapshot. ``sandbox`` is a frozen copy of the source's record: what a restore needs to
    rebuild the same container (image layers, limits, env, network policy, volumes).
    """

    id: str
    sandbox_id: str
    created_at: float
    size: int  # bytes on disk: checkpoint image + files
    sandbox: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    # The code contexts whose kernels it holds (CodeService.saved), attached on restore.
    contexts: list[dict[str, Any]] = field(default_factory=list)

    def source(self) -> SandboxRecord:
        return SandboxRecord.from_json(json.dumps(self.sandbox))


@dataclass
class VolumeRecord(_Record):
    """A named persistent volume (``vol-…``), mountable by several sandboxes at once."""

    id: str
    name: str
    created_at: float
    size: int  # MiB: the most it may hold
