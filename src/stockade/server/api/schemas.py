"""Request and response bodies of the HTTP API (they make up the OpenAPI document)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..images.built import BuiltImage
from ..images.catalog import ImageInfo
from ..images.oci import PulledImage
from ..network.policy import NetworkPolicy
from ..runtime.rootfs import DEFAULT_DISK_MIB
from ..service.files import FileInfo
from ..state.records import SandboxRecord, SnapshotRecord

__all__ = [
    "CreateSandbox",
    "ErrorBody",
    "ExecRequest",
    "FileChangeOut",
    "FileChanges",
    "FileInfoOut",
    "FileList",
    "ForkIn",
    "FsSnapshotIn",
    "ImageList",
    "ImageOut",
    "MkdirRequest",
    "NetworkIn",
    "NetworkOut",
    "PortIn",
    "PortOut",
    "PullImage",
    "RegistryLogin",
    "SandboxList",
    "SandboxOut",
    "SnapshotIn",
    "SnapshotList",
    "SnapshotOut",
    "TimeoutIn",
    "VolumeCreate",
    "VolumeList",
    "VolumeOut",
    "WsExecRequest",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkIn(_Strict):
    block_network: bool = Field(False, description="Loopback only: no traffic in or out.")
    outbound_cidr_allowlist: list[str] | None = Field(
        None, description='Only these IPv4 ranges may be reached, e.g. `["203.0.113.0/24"]`.'
    )
    outbound_domain_allowlist: list[str] | None = Field(
        None,
        description="Only these names may be reached (`example.com`, `*.example.org`); "
        "enforced on DNS and on the TLS SNI / HTTP Host of every connection.",
    )


class PortIn(_Strict):
    port: int = Field(..., ge=1, le=65535, strict=True)
    public: bool = Field(False, description="Reachable without the sandbox's access token.")


class CreateSandbox(_Strict):
    image: str = Field("python", description="Name of a built image, e.g. `python` or `debian`.")
    cpu: float = Field(1.0, description="CPU cores (fractional allowed).")
    memory: int = Field(512, description="Memory limit in MiB.")
    disk: int = Field(DEFAULT_DISK_MIB, description="Writable disk space in MiB.")
    timeout: float = Field(300.0, description="Lifetime in seconds; the sandbox ends after it.")
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = Field(None, description="Absolute working directory.")
    tags: dict[str, str] = Field(default_factory=dict)
    entrypoint: list[str] | None = Field(
        None, description="Main process; its output is the sandbox log."
    )
    image_entrypoint: bool = Field(
        False,
        description="Run the image's Entrypoint + Cmd as the main process (like `docker run`); "
        "by default a sandbox idles until its commands come.",
    )
    block_network: bool = Field(False, description="Loopback only: no traffic in or out.")
    outbound_cidr_allowlist: list[str] | None = Field(
        None, description="Only these IPv4 ranges may be reached."
    )
    outbound_domain_allowlist: list[str] | None = Field(
        None, description="Only these names may be reached (`example.com`, `*.example.org`)."
    )
    ports: list[Annotated[int, Field(ge=1, le=65535, strict=True)] | PortIn] = Field(
        default_factory=list,
        description="Ports served through the server's proxy: `8080` or "
        '`{"port": 8080, "public": true}`.',
    )
    volumes: dict[str, str] = Field(
        default_factory=dict,
        description='Volumes to mount: `{"/data": "<volume name or ID>"}`.',
    )
    idle_timeout: float | None = Field(
        None,
        description="Seconds without exec, file or API activity after which `on_timeout` "
        "applies (unset: never).",
    )
    on_timeout: Literal["terminate", "pause"] = Field(
        "terminate", description="What `timeout` and `idle_timeout` do to the sandbox."
    )
    auto_resume: bool = Field(
        False,
        description="A paused sandbox wakes by itself on its next exec, files call or port "
        "request.",
    )
    snapshot: str | None = Field(
        None,
        description="Restore this memory snapshot (`sn-…`) instead of booting the image: "
        "its processes carry on where they were.",
    )


class NetworkOut(BaseModel):
    mode: Literal["open", "blocked", "allowlist"]
    block_network: bool
    outbound_cidr_allowlist: list[str] | None
    outbound_domain_allowlist: list[str] | None
    ip: str | None = Field(description="The sandbox's address on the host.")
    reason: str | None = Field(description="Why the sandbox has no network, if it has none.")


class PortOut(BaseModel):
    port: int
    public: bool
    path: str = Field(description="The proxy path on this server: `/proxy/{id}/{port}/`.")
    host: str | None = Field(
        description="`{port}-{id}.<tunnel domain>` when the server has a tunnel domain."
    )


def _network_out(r: SandboxRecord) -> NetworkOut | None:
    if r.network is None:
        return None
    policy = NetworkPolicy.from_dict(r.network.get("policy") or {})
    return NetworkOut(
        mode=policy.mode,  # type: ignore[arg-type]
        ip=r.network.get("ip"),
        reason=r.network.get("reason"),
        **policy.to_dict(),
    )


def _ports_out(r: SandboxRecord, tunnel_domain: str) -> list[PortOut]:
    return [
        PortOut(
            port=p["port"],
            public=p["public"],
            path=f"/proxy/{r.id}/{p['port']}/",
            host=f"{p['port']}-{r.id}.{tunnel_domain}" if tunnel_domain else None,
        )
        for p in r.ports
    ]


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SandboxOut(BaseModel):
    id: str
    status: Literal["starting", "running", "paused", "terminated", "failed"]
    reason: (
        Literal["terminated", "timeout", "idle", "oom", "error", "exited", "agent_protocol"] | None
    )
    message: str | None
    exit_code: int | None
    image: str
    cpu: float
    memory: int
    disk: int
    timeout: float
    workdir: str | None
    tags: dict[str, str]
    entrypoint: list[str] | None
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    expires_at: str | None
    network: NetworkOut | None
    ports: list[PortOut]
    access_token: str | None = Field(
        description="Grants access to the non-public exposed ports (header "
        "`X-Stockade-Access-Token` or query `stockade_token`)."
    )
    volumes: dict[str, str] = Field(default_factory=dict, description="Mount path → volume ID.")
    idle_timeout: float | None = None
    on_timeout: Literal["terminate", "pause"] = "terminate"
    auto_resume: bool = False
    paused_at: str | None = None
    snapshot: str | None = Field(None, description="The snapshot it was restored from.")

    @classmethod
    def of(cls, r: SandboxRecord, tunnel_domain: str = "") -> SandboxOut:
        return cls(
            id=r.id,
            status=r.status,  # type: ignore[arg-type]
            reason=r.reason,  # type: ignore[arg-type]
            message=r.message,
            exit_code=r.exit_code,
            image=r.image,
            cpu=r.cpu,
            memory=r.memory,
            disk=r.disk,
            timeout=r.timeout,
            workdir=r.workdir,
            tags=r.tags,
            entrypoint=r.entrypoint,
            created_at=_iso(r.created_at),
            started_at=_iso(r.started_at),
            ended_at=_iso(r.ended_at),
            expires_at=_iso(r.expires_at if r.alive or r.status == "paused" else None),
            network=_network_out(r),
            ports=_ports_out(r, tunnel_domain),
            access_token=r.access_token if r.alive or r.status == "paused" else None,
            volumes=r.volumes,
            idle_timeout=r.idle_timeout or None,
            on_timeout=r.on_timeout,  # type: ignore[arg-type]
            auto_resume=r.auto_resume,
            paused_at=_iso(r.paused_at if r.status == "paused" else None),
            snapshot=r.snapshot,
        )


class SandboxList(BaseModel):
    sandboxes: list[SandboxOut]


class ExecRequest(_Strict):
    argv: list[str] = Field(..., description="The command and its arguments.")
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    timeout: float | None = Field(None, description="Seconds; the command is killed after it.")
    stdin: str | None = Field(None, description="Text written to stdin, which is then closed.")
    stdin_b64: str | None = Field(None, description="Like `stdin`, base64-encoded bytes.")


class WsExecRequest(_Strict):
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    timeout: float | None = None
    pty: bool = False
    cols: int = Field(80, ge=1, le=1000)
    rows: int = Field(24, ge=1, le=1000)


class FileInfoOut(BaseModel):
    path: str
    name: str
    type: Literal["file", "dir", "symlink", "other"]
    size: int
    mode: int
    mtime: float
    target: str | None

    @classmethod
    def of(cls, f: FileInfo) -> FileInfoOut:
        return cls(
            path=f.path, name=f.name, type=f.type,  # type: ignore[arg-type]
            size=f.size, mode=f.mode, mtime=f.mtime, target=f.target,
        )  # fmt: skip


class FileList(BaseModel):
    entries: list[FileInfoOut]


class MkdirRequest(_Strict):
    path: str
    parents: bool = True


class ImageOut(BaseModel):
    name: str = Field(description="A base image's name, or a registry reference.")
    description: str
    ready: bool
    size_mib: int | None
    kind: Literal["base", "registry", "built"] = "base"
    digest: str | None = Field(default=None, description="The manifest digest of a registry image.")
    pinned: str | None = Field(
        default=None,
        description="`registry/repository@digest` or `img-…`: what sandboxes are created from.",
    )
    created_at: str | None = Field(default=None, description="When it was built or pulled.")

    @classmethod
    def of(cls, i: ImageInfo) -> ImageOut:
        return cls(name=i.name, description=i.description, ready=i.ready, size_mib=i.size_mib)

    @classmethod
    def of_built(cls, image: BuiltImage, name: str) -> ImageOut:
        return cls(
            name=name,
            description=f"built image {image.id}",
            ready=True,
            size_mib=image.size // (1024 * 1024),
            kind="built",
            digest=None,
            pinned=image.id,
            created_at=_iso(image.created_at),
        )

    @classmethod
    def of_pulled(cls, image: PulledImage) -> ImageOut:
        return cls(
            name=str(image.reference),
            description=f"pulled from {image.reference.registry}",
            ready=True,
            size_mib=image.size // (1024 * 1024),
            kind="registry",
            digest=image.manifest_digest,
            pinned=f"{image.reference.name}@{image.manifest_digest}",
        )


class RegistryLogin(_Strict):
    username: str
    password: str


class PullImage(_Strict):
    ref: str = Field(..., description="A registry reference, e.g. `python:3.12-slim`.")
    auth: RegistryLogin | None = Field(None, description="Registry credentials, if needed.")


class ImageList(BaseModel):
    images: list[ImageOut]


class _ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: _ErrorDetail


class SnapshotIn(_Strict):
    name: str | None = Field(None, max_length=200, description="A label for the snapshot.")


class FsSnapshotIn(_Strict):
    name: str | None = Field(
        None, description="Image name (`name:tag`); default `<sandbox id>:fs-<ms>`."
    )


class ForkIn(_Strict):
    count: int = Field(1, strict=True, description="How many sandboxes to fork (1 to 32).")


class SnapshotOut(BaseModel):
    id: str
    sandbox_id: str = Field(description="The sandbox it was taken of.")
    name: str | None
    created_at: str | None
    size: int = Field(description="Bytes on disk: memory checkpoint and files.")
    image: str

    @classmethod
    def of(cls, s: SnapshotRecord) -> SnapshotOut:
        return cls(
            id=s.id, sandbox_id=s.sandbox_id, name=s.name, created_at=_iso(s.created_at),
            size=s.size, image=str(s.sandbox.get("image", "")),
        )  # fmt: skip


class SnapshotList(BaseModel):
    snapshots: list[SnapshotOut]


class VolumeCreate(_Strict):
    name: str = Field(
        ...,
        description="1–63 of `a-z 0-9 . _ -`, starting with a letter or digit; unique.",
    )
    size: int | None = Field(
        None, strict=True, description="The most it may hold, in MiB (16 to 1048576; default 1024)."
    )
    create_if_missing: bool = Field(
        False,
        description="Answer 200 with the existing volume of this name instead of 409 (its size "
        "stays as it was).",
    )


class VolumeOut(BaseModel):
    id: str = Field(description="`vol-…`")
    name: str
    size: int = Field(description="The most it may hold, in MiB.")
    created_at: str | None
    used_by: list[str] = Field(
        default_factory=list,
        description="Sandboxes that have it mounted: starting, running or paused ones.",
    )


class VolumeList(BaseModel):
    volumes: list[VolumeOut]


class FileChangeOut(BaseModel):
    path: str = Field(..., description="Absolute path inside the sandbox.")
    kind: Literal["added", "modified", "deleted"]


class FileChanges(BaseModel):
    changes: list[FileChangeOut] = Field(
        ..., description="In tree order (sorted by path component)."
    )
    truncated: bool = Field(
        False,
        description="The list is incomplete: more than 100 000 paths changed, or "
        "directories nested more than 128 deep were not walked into.",
    )


class TimeoutIn(_Strict):
    timeout: float = Field(
        ...,
        description="Seconds from now until the sandbox ends (or pauses, with "
        '`on_timeout="pause"`): more or less than it had left; 1–86400.',
    )
