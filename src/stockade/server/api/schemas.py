"""Request and response bodies of the HTTP API (they make up the OpenAPI document)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..images.built import BuiltImage
from ..images.catalog import ImageInfo
from ..network.policy import MAX_ALLOWLIST, NetworkMode, NetworkPolicy
from ..service.files import FileInfo
from ..service.images import PulledImage
from ..service.names import NAME_PATTERN
from ..service.snapshots import MAX_FORKS
from ..service.spec import OnTimeout, SandboxSpec
from ..service.users import USER_PATTERN
from ..service.volumes import MAX_MOUNTS, SIZE_RANGE_MIB
from ..state.records import EndReason, SandboxRecord, SandboxStatus, SnapshotRecord
from .limits import DISK_RANGE, MAX_PORTS, MEMORY_RANGE, MIN_CPU, TIMEOUT_RANGE, cpu_limit
from .params import (
    ABS_PATH,
    CIDR,
    CONTEXT_DIGEST,
    DOMAIN_PATTERN,
    IMAGE_REF,
    MAX_PATH,
    MAX_REFERENCE,
    MOUNT_PATH,
    REFERENCE,
    SNAPSHOT_ID,
    TAG_NAME,
    VOLUME_REF,
    documented,
)

__all__ = [
    "BuildRequest",
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
    "SandboxPatch",
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


# Strings whose shape a handler or service checks itself, with a message of its own: the
# schema states the shape (documented), the check enforces it. Constraints that live in an
# Annotated item type land on the string itself, not on a `null` alternative or the list.
_AbsPath = Annotated[str, Field(json_schema_extra=documented(pattern=ABS_PATH))]
_Cidr = Annotated[str, Field(json_schema_extra=documented(pattern=CIDR))]
_Domain = Annotated[str, Field(json_schema_extra=documented(pattern=DOMAIN_PATTERN, maxLength=255))]
_Argument = Annotated[str, Field(json_schema_extra=documented(pattern=r"^[^\x00]*$"))]
_SandboxName = Annotated[str, Field(json_schema_extra=documented(pattern=NAME_PATTERN))]
_User = Annotated[str, Field(json_schema_extra=documented(pattern=USER_PATTERN))]
_VolumeRef = Annotated[str, Field(json_schema_extra=documented(pattern=VOLUME_REF))]
_Timeout = Annotated[
    float, Field(json_schema_extra=documented(minimum=TIMEOUT_RANGE[0], maximum=TIMEOUT_RANGE[1]))
]


# NetworkPolicy.parse checks these (its messages name the entry that is wrong).
_CidrList = Annotated[list[_Cidr], Field(json_schema_extra=documented(maxItems=MAX_ALLOWLIST))]
_DomainList = Annotated[list[_Domain], Field(json_schema_extra=documented(maxItems=MAX_ALLOWLIST))]
_NOT_BOTH = " Not together with `block_network`."


class NetworkIn(_Strict):
    block_network: bool = Field(False, description="Loopback only: no traffic in or out.")
    outbound_cidr_allowlist: _CidrList | None = Field(
        None,
        description='Only these IPv4 ranges may be reached, e.g. `["203.0.113.0/24"]`.' + _NOT_BOTH,
    )
    outbound_domain_allowlist: _DomainList | None = Field(
        None,
        description="Only these names may be reached (`example.com`, `*.example.org`); "
        "enforced on DNS and on the TLS SNI / HTTP Host of every connection." + _NOT_BOTH,
    )


class PortIn(_Strict):
    port: int = Field(..., ge=1, le=65535, strict=True)
    public: bool = Field(False, description="Reachable without the sandbox's access token.")


class CreateSandbox(_Strict):
    image: str = Field(
        "python",
        description="A base image (`python`, `debian`), a built-in one (`code-interpreter`), "
        "a built image (`name:tag` or `img-…`) or a registry reference (`python:3.12-slim`, "
        "pulled on first use).",
        json_schema_extra=documented(
            pattern=IMAGE_REF, maxLength=MAX_REFERENCE, examples=["python", "debian"]
        ),
    )
    # check_create_ranges enforces these, with messages naming the allowed range.
    cpu: float = Field(
        SandboxSpec.cpu,
        description="CPU cores (fractional allowed), at most the host's.",
        json_schema_extra=documented(minimum=MIN_CPU, maximum=cpu_limit()),
    )
    memory: int = Field(
        SandboxSpec.memory,
        description="Memory limit in MiB.",
        json_schema_extra=documented(minimum=MEMORY_RANGE[0], maximum=MEMORY_RANGE[1]),
    )
    disk: int = Field(
        SandboxSpec.disk,
        description="Writable disk space in MiB.",
        json_schema_extra=documented(minimum=DISK_RANGE[0], maximum=DISK_RANGE[1]),
    )
    timeout: _Timeout = Field(
        SandboxSpec.timeout, description="Lifetime in seconds; the sandbox ends after it."
    )
    env: dict[str, str] = Field(default_factory=dict)
    workdir: _AbsPath | None = Field(None, description="Absolute working directory.")
    tags: dict[str, str] = Field(default_factory=dict)
    entrypoint: (
        Annotated[list[_Argument], Field(json_schema_extra=documented(minItems=1))] | None
    ) = Field(
        None,
        description="Main process; its output is the sandbox log. Not together with "
        "`image_entrypoint`.",
    )
    image_entrypoint: bool = Field(
        False,
        description="Run the image's Entrypoint + Cmd as the main process (like `docker run`); "
        "by default a sandbox idles until its commands come.",
    )
    block_network: bool = Field(False, description="Loopback only: no traffic in or out.")
    outbound_cidr_allowlist: _CidrList | None = Field(
        None, description="Only these IPv4 ranges may be reached." + _NOT_BOTH
    )
    outbound_domain_allowlist: _DomainList | None = Field(
        None,
        description="Only these names may be reached (`example.com`, `*.example.org`)." + _NOT_BOTH,
    )
    ports: list[Annotated[int, Field(ge=1, le=65535, strict=True)] | PortIn] = Field(
        default_factory=list,
        description="Ports served through the server's proxy: `8080` or "
        f'`{{"port": 8080, "public": true}}`; at most {MAX_PORTS} distinct ones.',
        json_schema_extra=documented(maxItems=MAX_PORTS),
    )
    volumes: dict[str, _VolumeRef] = Field(
        default_factory=dict,
        description='Volumes to mount: `{"/data": "<volume name or ID>"}`; mount points are '
        "normalised absolute paths that neither nest nor cover `/`, `/proc`, `/dev`, `/sys`, "
        "`/etc/hosts` or `/etc/resolv.conf`.",
        # service/volumes.py resolve_mounts checks them, naming the mount that is wrong.
        json_schema_extra=documented(
            propertyNames={"pattern": MOUNT_PATH, "maxLength": MAX_PATH},
            maxProperties=MAX_MOUNTS,
        ),
    )
    idle_timeout: _Timeout | None = Field(
        None,
        description="Seconds without exec, file or API activity after which `on_timeout` "
        "applies (unset: never).",
    )
    on_timeout: OnTimeout = Field(
        SandboxSpec.on_timeout, description="What `timeout` and `idle_timeout` do to the sandbox."
    )
    auto_resume: bool = Field(
        SandboxSpec.auto_resume,
        description="A paused sandbox wakes by itself on its next exec, files call or port "
        "request.",
    )
    # An ID that names no snapshot is a 404, whatever its shape.
    snapshot: Annotated[str, Field(json_schema_extra=documented(pattern=SNAPSHOT_ID))] | None = (
        Field(
            None,
            description="Restore this memory snapshot (`sn-…`) instead of booting the image: "
            "its processes carry on where they were.",
        )
    )
    # service/names.py and service/users.py check these, naming what is allowed.
    name: _SandboxName | None = Field(
        None,
        description="Unique among the tenant's starting, running and paused sandboxes (409 "
        "if taken); `GET /v1/sandboxes/by-name/{name}` finds it.",
    )
    user: _User | None = Field(
        None,
        description="Who its commands run as: a user of the image's own /etc/passwd or "
        "`uid[:gid]` (default: the image's USER).",
    )
    readiness: int | str | list[_Argument] | None = Field(
        None,
        description="Return only once this passes inside the sandbox: a TCP port listening, "
        "an `http://` URL answering 2xx/3xx, or a command exiting 0. Past "
        "`readiness_timeout` the sandbox is terminated and the create fails with the "
        "check's last output.",
    )
    readiness_timeout: float | None = Field(
        None, description="Seconds the readiness check may take (default 60)."
    )


class NetworkOut(BaseModel):
    mode: NetworkMode
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
    policy = NetworkPolicy.from_dict(r.network.policy)
    return NetworkOut(
        mode=policy.mode,
        ip=r.network.ip,
        reason=r.network.reason,
        **policy.to_dict(),
    )


def _ports_out(r: SandboxRecord, tunnel_domain: str) -> list[PortOut]:
    return [
        PortOut(
            port=p.port,
            public=p.public,
            path=f"/proxy/{r.id}/{p.port}/",
            host=f"{p.port}-{r.id}.{tunnel_domain}" if tunnel_domain else None,
        )
        for p in r.ports
    ]


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SandboxOut(BaseModel):
    id: str
    # A pooled sandbox belongs to nobody yet: no caller ever sees that status.
    status: SandboxStatus
    reason: EndReason | None
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
    on_timeout: OnTimeout = SandboxSpec.on_timeout
    auto_resume: bool = SandboxSpec.auto_resume
    paused_at: str | None = None
    snapshot: str | None = Field(None, description="The snapshot it was restored from.")
    name: str | None = None
    user: str | None = Field(None, description="Who its commands run as (unset: root).")

    @classmethod
    def of(cls, r: SandboxRecord, tunnel_domain: str = "") -> SandboxOut:
        return cls(
            id=r.id,
            status=r.status,
            reason=r.reason,
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
            expires_at=_iso(r.expires_at if r.alive or r.status == SandboxStatus.PAUSED else None),
            network=_network_out(r),
            ports=_ports_out(r, tunnel_domain),
            access_token=r.access_token if r.alive or r.status == SandboxStatus.PAUSED else None,
            volumes=r.volumes,
            idle_timeout=r.idle_timeout or None,
            on_timeout=r.on_timeout,
            auto_resume=r.auto_resume,
            paused_at=_iso(r.paused_at if r.status == SandboxStatus.PAUSED else None),
            snapshot=r.snapshot,
            name=r.name,
            user=r.user,
        )


class SandboxList(BaseModel):
    sandboxes: list[SandboxOut]


class SandboxPatch(_Strict):
    tags: dict[str, str] | None = Field(
        None, description="The sandbox's tags from now on (they replace its tags)."
    )


# api/execs.py checks these: a command to run (its name not empty), no NUL anywhere.
_Argv = Annotated[
    list[_Argument],
    Field(
        json_schema_extra=documented(minItems=1, prefixItems=[{"type": "string", "minLength": 1}])
    ),
]
_ExecTimeout = Annotated[
    float, Field(json_schema_extra=documented(minimum=0.001, maximum=TIMEOUT_RANGE[1]))
]
# Standard base64 with its padding (base64.b64decode(validate=True)).
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


class ExecRequest(_Strict):
    argv: _Argv = Field(..., description="The command and its arguments.")
    env: dict[str, str] = Field(default_factory=dict)
    workdir: _AbsPath | None = Field(None, description="Absolute; default: the sandbox's.")
    timeout: _ExecTimeout | None = Field(
        None, description="Seconds; the command is killed after it."
    )
    stdin: str | None = Field(
        None, description="Text written to stdin, which is then closed. Not with `stdin_b64`."
    )
    stdin_b64: Annotated[str, Field(json_schema_extra=documented(pattern=_BASE64))] | None = Field(
        None, description="Like `stdin`, base64-encoded bytes."
    )
    user: _User | None = Field(
        None, description="Run as this user of the image or `uid[:gid]` (default: the sandbox's)."
    )


class WsExecRequest(_Strict):
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    timeout: float | None = None
    pty: bool = False
    cols: int = Field(80, ge=1, le=1000)
    rows: int = Field(24, ge=1, le=1000)
    user: str | None = None


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
    # check_path answers a bad path itself, naming it.
    path: str = Field(
        ...,
        description="Absolute path inside the sandbox.",
        json_schema_extra=documented(pattern=ABS_PATH, maxLength=MAX_PATH),
    )
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
    # parse_reference answers a malformed one itself, saying what is wrong with it.
    ref: str = Field(
        ...,
        description="A registry reference, e.g. `python:3.12-slim`.",
        json_schema_extra=documented(pattern=REFERENCE, maxLength=MAX_REFERENCE),
    )
    auth: RegistryLogin | None = Field(None, description="Registry credentials, if needed.")


class ImageList(BaseModel):
    images: list[ImageOut]


# The body of POST /v1/images/builds, for the OpenAPI document only: service/builder.py
# parse_spec validates the request (its messages name the step that is wrong) and, as it
# always has, ignores fields it does not know; so these models state no additionalProperties.
_Word = Annotated[str, Field(json_schema_extra=documented(minLength=1))]
_Words = Annotated[list[_Word], Field(json_schema_extra=documented(minItems=1))]
_Package = Annotated[str, Field(json_schema_extra=documented(pattern=r"^[^\s-]\S*$"))]
_StepPath = Annotated[str, Field(json_schema_extra=documented(pattern=ABS_PATH))]


class RunStep(BaseModel):
    op: Literal["run"]
    commands: _Words = Field(..., description="Shell commands, run one after the other.")


class PackagesStep(BaseModel):
    op: Literal["apt_install", "pip_install"]
    packages: Annotated[list[_Package], Field(json_schema_extra=documented(minItems=1))]


class EnvStep(BaseModel):
    op: Literal["env"]
    vars: dict[str, str] = Field(
        ..., json_schema_extra=documented(minProperties=1, propertyNames={"pattern": "^[^=]+$"})
    )


class WorkdirStep(BaseModel):
    op: Literal["workdir"]
    path: _StepPath


class UserStep(BaseModel):
    op: Literal["user"]
    user: str = Field(
        ...,
        description="A name, uid or uid:gid.",
        json_schema_extra=documented(pattern=r"^\S+$"),
    )


class ArgvStep(BaseModel):
    op: Literal["entrypoint", "cmd"]
    argv: _Words


class CopyStep(BaseModel):
    op: Literal["copy"]
    dest: _StepPath = Field(..., description="Where the uploaded tar is unpacked.")
    context: str = Field(
        ...,
        description="The uploaded tar's digest (`PUT /v1/images/contexts/{digest}` first).",
        json_schema_extra=documented(pattern=CONTEXT_DIGEST),
    )


class BuildRequest(BaseModel):
    image: str = Field(
        ...,
        description="The base: a base or built image, or with `registry` a registry reference.",
        json_schema_extra=documented(
            pattern=IMAGE_REF, maxLength=MAX_REFERENCE, examples=["debian", "python"]
        ),
    )
    steps: list[RunStep | PackagesStep | EnvStep | WorkdirStep | UserStep | ArgvStep | CopyStep] = (
        Field(default_factory=list, description="Applied in order; each is a cached layer.")
    )
    python_version: str | None = Field(
        None, description="With the `python` base: the Python it provides (`3.11`)."
    )
    auth: RegistryLogin | None = Field(None, description="Credentials for a registry base.")
    timeout: float = Field(
        1800.0,
        description="Seconds the whole build may take.",
        json_schema_extra=documented(minimum=TIMEOUT_RANGE[0], maximum=TIMEOUT_RANGE[1]),
    )
    registry: bool = Field(False, description="`image` is a registry reference, to be pulled.")
    tag: Annotated[str, Field(json_schema_extra=documented(pattern=TAG_NAME))] | None = Field(
        None, description="Name the result `name:tag` (and `name:latest`)."
    )


class _ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: _ErrorDetail


class SnapshotIn(_Strict):
    name: str | None = Field(None, max_length=200, description="A label for the snapshot.")


class FsSnapshotIn(_Strict):
    # parse_tag answers a bad name itself, with an example of a good one.
    name: Annotated[str, Field(json_schema_extra=documented(pattern=TAG_NAME))] | None = Field(
        None, description="Image name (`name:tag`); default `<sandbox id>:fs-<ms>`."
    )


class ForkIn(_Strict):
    count: int = Field(
        1,
        strict=True,
        description=f"How many sandboxes to fork (1 to {MAX_FORKS}).",
        json_schema_extra=documented(minimum=1, maximum=MAX_FORKS),
    )


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
    # service/volumes.py checks both, with messages that say what a good one looks like.
    name: str = Field(
        ...,
        description="1–63 of `a-z 0-9 . _ -`, starting with a letter or digit, and not shaped "
        "like a volume ID (`vol-` and 16 hex digits); unique.",
        json_schema_extra=documented(
            pattern=VOLUME_REF, **{"not": {"pattern": r"^vol-[0-9a-f]{16}$"}}
        ),
    )
    size: (
        Annotated[
            int,
            Field(
                json_schema_extra=documented(minimum=SIZE_RANGE_MIB[0], maximum=SIZE_RANGE_MIB[1])
            ),
        ]
        | None
    ) = Field(
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
    timeout: _Timeout = Field(
        ...,
        description="Seconds from now until the sandbox ends (or pauses, with "
        '`on_timeout="pause"`): more or less than it had left; 1–86400.',
    )
