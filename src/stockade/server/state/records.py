"""The persisted records of the server. Plain data: no IO, no behaviour beyond (de)serialising."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Self, get_args

__all__ = [
    "ALIVE",
    "USAGE_FIELDS",
    "AuditRecord",
    "EndReason",
    "ExposedPort",
    "KeyRecord",
    "NetworkAttachment",
    "OnTimeout",
    "Role",
    "SandboxRecord",
    "SandboxStatus",
    "SnapshotRecord",
    "TenantRecord",
    "UsageRecord",
    "VolumeRecord",
]


class SandboxStatus(StrEnum):
    """Where a sandbox is in its life (see :class:`SandboxRecord`)."""

    STARTING = "starting"
    POOLED = "pooled"  # running in a warm pool, nobody's yet: never shown to callers
    RUNNING = "running"
    PAUSED = "paused"
    TERMINATED = "terminated"
    FAILED = "failed"


class EndReason(StrEnum):
    """Why a sandbox ended."""

    TERMINATED = "terminated"  # asked to (an API call, a pool shrinking, a build's end)
    TIMEOUT = "timeout"
    IDLE = "idle"
    OOM = "oom"
    ERROR = "error"
    EXITED = "exited"  # its entrypoint exited
    AGENT_PROTOCOL = "agent_protocol"  # its agent broke the channel protocol


# What a sandbox's timeout and idle timeout do to it when they come.
OnTimeout = Literal["terminate", "pause"]


@dataclass
class ExposedPort:
    """A port of the sandbox reachable through the port proxy."""

    port: int
    public: bool = False  # reachable without the sandbox's access token


@dataclass
class NetworkAttachment:
    """A sandbox's place on the host-only network, or why it has none."""

    slot: int | None  # the network slot it holds (namespace, veth, rules); None: none now
    ip: str | None
    policy: dict[str, Any]  # NetworkPolicy.to_dict()
    reason: str | None = None  # why the sandbox has no network, if it has none


class _Record:
    """JSON (de)serialising shared by the records; unknown keys (a newer server's) are
    ignored, so a record written by one version loads in another."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, raw: str) -> Self:
        return cls.from_dict(json.loads(raw))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**cls._typed({k: v for k, v in data.items() if k in known}))

    @classmethod
    def _typed(cls, fields: dict[str, Any]) -> dict[str, Any]:
        """The JSON values of ``fields`` as the record's own types (enums, nested records)."""
        return fields


# Statuses in which a runsc sandbox may exist for the record.
ALIVE = frozenset({SandboxStatus.STARTING, SandboxStatus.RUNNING, SandboxStatus.POOLED})


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
    status: SandboxStatus = SandboxStatus.STARTING
    reason: EndReason | None = None
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
    # None until the sandbox boots.
    network: NetworkAttachment | None = None
    ports: list[ExposedPort] = field(default_factory=list)
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
    on_timeout: OnTimeout = "terminate"
    # A paused sandbox with auto_resume wakes by itself on its next exec, file or port call.
    auto_resume: bool = False
    paused_at: float | None = None
    # The snapshot this sandbox was restored from, if any.
    snapshot: str | None = None
    # Its code contexts' kernels (CodeService.saved): a restarted server attaches to them.
    contexts: list[dict[str, Any]] = field(default_factory=list)
    # The tenant it belongs to (records from before tenants: the default one).
    tenant: str = "default"
    # Its caller-chosen name, unique among its tenant's live and paused sandboxes
    # (service/names.py); None: unnamed.
    name: str | None = None

    @property
    def alive(self) -> bool:
        return self.status in ALIVE

    @property
    def ended(self) -> bool:
        return self.status in (SandboxStatus.TERMINATED, SandboxStatus.FAILED)

    @classmethod
    def _typed(cls, fields: dict[str, Any]) -> dict[str, Any]:
        out = dict(fields)
        if "status" in out:
            out["status"] = SandboxStatus(out["status"])
        if out.get("reason") is not None:
            out["reason"] = EndReason(out["reason"])
        if "on_timeout" in out and out["on_timeout"] not in get_args(OnTimeout):
            out["on_timeout"] = "terminate"
        if isinstance(out.get("network"), dict):
            out["network"] = NetworkAttachment(**out["network"])
        if "ports" in out:
            out["ports"] = [ExposedPort(int(p["port"]), bool(p["public"])) for p in out["ports"]]
        return out

    def exposed(self, port: int) -> ExposedPort | None:
        """The exposed ``port``, if it is exposed."""
        return next((p for p in self.ports if p.port == port), None)


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
    tenant: str = "default"

    def source(self) -> SandboxRecord:
        return SandboxRecord.from_dict(self.sandbox)


@dataclass
class VolumeRecord(_Record):
    """A named persistent volume (``vol-…``), mountable by several sandboxes at once."""

    id: str
    name: str
    created_at: float
    size: int  # MiB: the most it may hold
    tenant: str = "default"


# What a tenant's API key may do: readonly reads; user also creates, runs and writes;
# admin also manages its tenant's keys. (The server's admin token is the operator's.)
Role = Literal["readonly", "user", "admin"]


@dataclass
class TenantRecord(_Record):
    """A tenant: the owner of sandboxes, snapshots, images, volumes and keys."""

    name: str
    created_at: float
    # Limits by name (see service/quotas.py: QUOTAS); absent: no limit.
    quotas: dict[str, float] = field(default_factory=dict)


@dataclass
class KeyRecord(_Record):
    """An API key of a tenant. The secret itself is never stored: only its SHA-256."""

    id: str  # "key-…", also the start of the key the holder sends
    tenant: str
    role: Role
    secret_sha256: str
    created_at: float
    name: str | None = None
    expires_at: float | None = None
    revoked_at: float | None = None

    @classmethod
    def _typed(cls, fields: dict[str, Any]) -> dict[str, Any]:
        if fields.get("role") not in get_args(Role):
            fields = {**fields, "role": "readonly"}  # never more than a record says
        return fields


@dataclass
class AuditRecord(_Record):
    """One entry of the audit log: a mutating API call, or one exec.

    ``seq`` is given by the store when the entry is written (0 before): entries are read
    in that order, and ``after=seq`` is how a follower asks for what is new.
    """

    at: float  # when the call or exec started
    tenant: str
    kind: Literal["api", "exec"]
    key_id: str | None = None  # None: the operator's token
    request_id: str | None = None
    method: str | None = None  # api: the HTTP method; exec: "HTTP" or "WEBSOCKET"
    path: str | None = None
    status: int | None = None  # api: the HTTP status answered
    sandbox: str | None = None
    argv: list[str] | None = None
    workdir: str | None = None
    user: str | None = None
    duration: float = 0.0  # seconds
    exit_code: int | None = None
    bytes_in: int = 0  # request body, or an exec's stdin
    bytes_out: int = 0  # an exec's stdout and stderr
    seq: int = 0


# The figures of a UsageRecord, by name: what metering adds up (service/usage.py).
USAGE_FIELDS = (
    "sandbox_seconds",
    "cpu_seconds",
    "memory_gib_seconds",
    "snapshot_gib_hours",
    "volume_gib_hours",
    "execs",
)


@dataclass
class UsageRecord:
    """What one tenant used in one minute (``minute``: its start, Unix seconds), or, as a
    query's answer, over a whole window (``minute``: 0)."""

    tenant: str
    minute: int
    sandbox_seconds: float = 0.0
    cpu_seconds: float = 0.0
    memory_gib_seconds: float = 0.0
    snapshot_gib_hours: float = 0.0
    volume_gib_hours: float = 0.0
    execs: int = 0
