"""The persisted records of the server. Plain data: no IO, no behaviour beyond (de)serialising."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALIVE", "SandboxRecord"]

# Statuses in which a runsc sandbox may exist for the record.
ALIVE = frozenset({"starting", "running", "pooled"})


@dataclass
class SandboxRecord:
    """One sandbox, as stored after every state transition.

    status: starting → running → terminated | failed
            (a warm-pool sandbox: starting → pooled → running → …)
    reason (once ended): terminated | timeout | oom | error | exited
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

    @property
    def alive(self) -> bool:
        return self.status in ALIVE

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> SandboxRecord:
        data: dict[str, Any] = json.loads(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
