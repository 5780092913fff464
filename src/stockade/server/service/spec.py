"""What a sandbox is given when it is made: its resources and its lifetime.

:class:`SandboxSpec` is the one place their defaults are written; the HTTP bodies that
create sandboxes and pools, and the pools themselves, read them from here
(``SandboxSpec.memory`` is the default memory, a dataclass field's default being its class
attribute).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..network.policy import NetworkPolicy
from ..runtime.rootfs import DEFAULT_DISK_MIB
from ..state.ids import new_id
from ..state.records import ExposedPort, OnTimeout, SandboxRecord

__all__ = ["Checkpoint", "CreateRequest", "OnTimeout", "SandboxSpec", "new_record"]



@dataclass(frozen=True)
class SandboxSpec:
    """A sandbox's resources and lifetime settings, each with its default."""

    cpu: float = 1.0  # cores, fractional allowed
    memory: int = 512  # MiB
    disk: int = DEFAULT_DISK_MIB  # MiB of writable disk
    timeout: float = 300.0  # seconds of life
    idle_timeout: float = 0.0  # seconds without activity before on_timeout applies; 0: never
    on_timeout: OnTimeout = "terminate"
    auto_resume: bool = False  # a paused sandbox wakes by itself on its next use


@dataclass(frozen=True)
class CreateRequest:
    """A caller's ask for a sandbox, checked and resolved by the HTTP layer (the image
    named, volumes resolved to IDs); its defaults are :class:`SandboxSpec`'s."""

    image: str
    cpu: float
    memory: int
    disk: int
    timeout: float
    env: Mapping[str, str]
    workdir: str | None
    tags: Mapping[str, str]
    entrypoint: Sequence[str] | None
    policy: NetworkPolicy = field(default_factory=NetworkPolicy)
    ports: Sequence[tuple[int, bool]] = ()  # (port, public)
    # Run the image's ENTRYPOINT + CMD as the main process (as `docker run` does).
    image_entrypoint: bool = False
    # Mount path → volume ID (checked and resolved by the caller: VolumeService).
    volumes: Mapping[str, str] = field(default_factory=dict)
    idle_timeout: float = SandboxSpec.idle_timeout
    on_timeout: OnTimeout = SandboxSpec.on_timeout
    auto_resume: bool = SandboxSpec.auto_resume
    # Whose sandbox it will be (the caller's tenant).
    tenant: str = "default"
    # The new sandbox's ID when chosen ahead (the quotas count a create by it); None: a
    # new one. A request with an ID makes one sandbox only.
    sandbox_id: str | None = None
    # Its name (service/names.py checks it), unique among the tenant's live sandboxes.
    name: str | None = None
    # Who its commands run as (a name in the image's /etc/passwd, or ``uid[:gid]``);
    # None: the image's USER.
    user: str | None = None


@dataclass(frozen=True)
class Checkpoint:
    """What a restore starts from: runsc's checkpoint image and the writes beside it."""

    checkpoint: Path
    upper: Path


def new_record(
    req: CreateRequest,
    *,
    image: str,
    env: dict[str, str],
    workdir: str | None = None,
    entrypoint: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    cpu: float | None = None,
    memory: int | None = None,
    disk: int | None = None,
    volumes: Mapping[str, str] | None = None,
) -> SandboxRecord:
    """The record of a new sandbox for ``req``: the one place a record is built from a
    request (create, build step, restore, pooled sandbox handed out). Keywords override
    what the request says (a restore keeps its source's image, limits and env)."""
    return SandboxRecord(
        id=req.sandbox_id or new_id("sb"),
        image=image,
        cpu=req.cpu if cpu is None else cpu,
        memory=req.memory if memory is None else memory,
        disk=req.disk if disk is None else disk,
        timeout=req.timeout,
        env=env,
        workdir=workdir if workdir is not None else req.workdir,
        tags=dict(req.tags if tags is None else tags),
        entrypoint=list(entrypoint) if entrypoint else None,
        created_at=time.time(),
        ports=[ExposedPort(port, public) for port, public in req.ports],
        access_token="sat_" + secrets.token_urlsafe(24),
        volumes=dict(req.volumes if volumes is None else volumes),
        idle_timeout=req.idle_timeout,
        on_timeout=req.on_timeout,
        auto_resume=req.auto_resume,
        tenant=req.tenant,
        name=req.name,
    )
