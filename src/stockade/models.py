"""The records the API returns, as immutable dataclasses parsed from its JSON.

Parsing is lenient about additions (unknown fields are ignored, so a newer server works
with an older SDK) and strict about types: a field of the wrong type raises
:class:`~stockade.errors.ServerError` through :func:`stockade._base.parse`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

__all__ = [
    "FileChange",
    "FileChanges",
    "FileEvent",
    "FileInfo",
    "ImageInfo",
    "SandboxInfo",
    "SnapshotInfo",
    "TenantUsage",
    "UsageReport",
]


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, got {value!r}")
    return value


def _str(data: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = _opt_str(data, key)
    if value is None:
        if default is None:
            raise KeyError(key)
        return default
    return value


def _num(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number, got {value!r}")
    return float(value)


def _opt_num(data: Mapping[str, Any], key: str) -> float | None:
    return None if data.get(key) is None else _num(data, key, 0.0)


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{key} must be an integer, got {value!r}")
    return value


def _time(data: Mapping[str, Any], key: str) -> datetime | None:
    value = _opt_str(data, key)
    # fromisoformat reads the API's "...Z" suffix since Python 3.11 and gives an aware UTC time.
    return datetime.fromisoformat(value) if value else None


def _str_map(data: Mapping[str, Any], key: str) -> dict[str, str]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError(f"{key} must be an object of strings, got {value!r}")
    return dict(value)


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds").replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    return value


@dataclass(frozen=True)
class NetworkInfo:
    """A sandbox's network: its outbound policy and its address on the host.

    ``mode`` is ``open`` (public internet; never private ranges, the host or other
    sandboxes), ``blocked`` (loopback only) or ``allowlist``. ``reason`` says why a
    sandbox has no network when the server cannot provide one.
    """

    mode: str
    block_network: bool = False
    outbound_cidr_allowlist: list[str] | None = None
    outbound_domain_allowlist: list[str] | None = None
    ip: str | None = None
    reason: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NetworkInfo:
        def str_list(key: str) -> list[str] | None:
            value = data.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"{key} must be a list of strings, got {value!r}")
            return list(value)

        return cls(
            mode=_str(data, "mode"),
            block_network=bool(data.get("block_network")),
            outbound_cidr_allowlist=str_list("outbound_cidr_allowlist"),
            outbound_domain_allowlist=str_list("outbound_domain_allowlist"),
            ip=_opt_str(data, "ip"),
            reason=_opt_str(data, "reason"),
        )


@dataclass(frozen=True)
class PortInfo:
    """An exposed port: reachable through the server at ``path`` (or at ``host``)."""

    port: int
    public: bool
    path: str
    host: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PortInfo:
        return cls(
            port=int(_num(data, "port", 0)),
            public=bool(data.get("public")),
            path=_str(data, "path"),
            host=_opt_str(data, "host"),
        )


@dataclass(frozen=True)
class SandboxInfo:
    """A sandbox's record as the server last described it.

    ``status`` is ``starting``, ``running``, ``paused``, ``terminated`` or ``failed``;
    once it has ended, ``reason`` says why (``terminated``, ``timeout``, ``idle``, ``oom``,
    ``error``, ``exited`` or ``agent_protocol``: its agent broke the channel protocol, so
    it was stopped) and ``message`` gives the detail.

    Example::

        from stockade import Sandbox

        with Sandbox.create() as sb:
            info = sb.info()
            print(info.status, info.memory, info.expires_at)
    """

    id: str
    status: str
    image: str
    cpu: float
    memory: int
    disk: int
    timeout: float
    reason: str | None = None
    message: str | None = None
    exit_code: int | None = None
    workdir: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    expires_at: datetime | None = None
    network: NetworkInfo | None = None
    ports: list[PortInfo] = field(default_factory=list)
    access_token: str | None = None
    volumes: dict[str, str] = field(default_factory=dict)
    idle_timeout: float | None = None
    on_timeout: str = "terminate"
    auto_resume: bool = False
    paused_at: datetime | None = None
    snapshot: str | None = None
    name: str | None = None
    user: str | None = None

    @property
    def paused(self) -> bool:
        """Whether the sandbox is paused (its state is on disk; :meth:`resume` wakes it)."""
        return self.status == "paused"

    @property
    def running(self) -> bool:
        """Whether the sandbox accepts exec and file operations."""
        return self.status == "running"

    @property
    def ended(self) -> bool:
        """Whether the sandbox is gone for good (``terminated`` or ``failed``)."""
        return self.status in ("terminated", "failed")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SandboxInfo:
        """Parse the API's ``SandboxInfo`` object."""
        entrypoint = data.get("entrypoint")
        if entrypoint is not None and not (
            isinstance(entrypoint, list) and all(isinstance(a, str) for a in entrypoint)
        ):
            raise TypeError(f"entrypoint must be a list of strings, got {entrypoint!r}")
        network, ports = data.get("network"), data.get("ports") or []
        if not isinstance(ports, list):
            raise TypeError(f"ports must be a list, got {ports!r}")
        return cls(
            id=_str(data, "id"),
            status=_str(data, "status"),
            image=_str(data, "image", ""),
            cpu=_num(data, "cpu", 0.0),
            memory=int(_num(data, "memory", 0)),
            disk=int(_num(data, "disk", 0)),
            timeout=_num(data, "timeout", 0.0),
            reason=_opt_str(data, "reason"),
            message=_opt_str(data, "message"),
            exit_code=_opt_int(data, "exit_code"),
            workdir=_opt_str(data, "workdir"),
            tags=_str_map(data, "tags"),
            entrypoint=list(entrypoint) if entrypoint is not None else None,
            created_at=_time(data, "created_at"),
            started_at=_time(data, "started_at"),
            ended_at=_time(data, "ended_at"),
            expires_at=_time(data, "expires_at"),
            network=NetworkInfo.from_json(network) if isinstance(network, Mapping) else None,
            ports=[PortInfo.from_json(p) for p in ports if isinstance(p, Mapping)],
            access_token=_opt_str(data, "access_token"),
            volumes=_str_map(data, "volumes"),
            idle_timeout=_opt_num(data, "idle_timeout"),
            on_timeout=_str(data, "on_timeout", "terminate"),
            auto_resume=bool(data.get("auto_resume", False)),
            paused_at=_time(data, "paused_at"),
            snapshot=_opt_str(data, "snapshot"),
            name=_opt_str(data, "name"),
            user=_opt_str(data, "user"),
        )

    def to_json(self) -> dict[str, Any]:
        """The record in the API's JSON shape (times as ISO 8601 strings)."""
        result: dict[str, Any] = _to_json(dataclasses.asdict(self))
        return result


@dataclass(frozen=True)
class FileInfo:
    """One entry of a sandbox's filesystem.

    ``type`` is ``file``, ``dir``, ``symlink`` or ``other``; ``size_bytes`` is its size in
    bytes (the API's ``size``); ``mode`` holds the permission bits (``0o644`` = 420);
    ``mtime`` is seconds since the epoch; ``target`` is a symlink's target.

    Example::

        for entry in sb.files.list("/etc"):
            print(entry.name, entry.type, entry.size_bytes, oct(entry.mode))
    """

    path: str
    name: str
    type: str
    size_bytes: int = 0
    mode: int = 0
    mtime: float = 0.0
    target: str | None = None

    @property
    def is_file(self) -> bool:
        """Whether this is a regular file."""
        return self.type == "file"

    @property
    def is_dir(self) -> bool:
        """Whether this is a directory."""
        return self.type == "dir"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileInfo:
        """Parse the API's ``FileInfo`` object."""
        path = _str(data, "path")
        return cls(
            path=path,
            name=_str(data, "name", path.rstrip("/").rsplit("/", 1)[-1] or "/"),
            type=_str(data, "type", "other"),
            size_bytes=int(_num(data, "size", 0)),
            mode=int(_num(data, "mode", 0)),
            mtime=_num(data, "mtime", 0.0),
            target=_opt_str(data, "target"),
        )

    def to_json(self) -> dict[str, Any]:
        """The record in the API's JSON shape (where ``size_bytes`` is ``size``)."""
        data = dataclasses.asdict(self)
        return {("size" if key == "size_bytes" else key): value for key, value in data.items()}


@dataclass(frozen=True)
class FileEvent:
    """One change seen by ``files.watch``, as it happened.

    ``type`` is ``create``, ``modify``, ``delete`` or ``rename`` (then ``dest`` is the new
    path), each with the ``path`` and whether it ``is_dir``; or ``overflow`` (the sandbox
    made events faster than they were read: some were lost) or ``limit`` (part of a large
    tree is not watched), with a ``message`` saying so.

    Example::

        with sb.files.watch("/app", recursive=True) as events:
            for event in events:
                print(event.type, event.path, event.dest or "")
    """

    type: str
    path: str | None = None
    dest: str | None = None
    is_dir: bool = False
    message: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileEvent:
        """Parse one event of the API's watch stream."""
        return cls(
            type=_str(data, "type"),
            path=_opt_str(data, "path"),
            dest=_opt_str(data, "dest"),
            is_dir=data.get("dir") is True,
            message=_opt_str(data, "message"),
        )


@dataclass(frozen=True)
class ImageInfo:
    """An image sandboxes can start from: a base image (``kind="base"``; ``ready`` says
    whether it is built yet) or a pulled registry image (``kind="registry"``, with its
    manifest ``digest``).

    Example::

        from stockade import Client

        with Client() as client:
            for image in client.images():
                print(image.name, image.ready, image.description)
    """

    name: str
    ready: bool
    description: str = ""
    size_mib: int | None = None
    kind: str = "base"
    digest: str | None = None
    pinned: str | None = None  # registry/repository@digest, or a built image's img-… ID
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageInfo:
        """Parse the API's ``ImageInfo`` object."""
        ready = data.get("ready", False)
        if not isinstance(ready, bool):
            raise TypeError(f"ready must be a boolean, got {ready!r}")
        size = data.get("size_mib")
        return cls(
            name=_str(data, "name"),
            ready=ready,
            description=_str(data, "description", ""),
            size_mib=None if size is None else int(_num(data, "size_mib", 0)),
            kind=_str(data, "kind", "base"),
            digest=_opt_str(data, "digest"),
            pinned=_opt_str(data, "pinned"),
            created_at=_time(data, "created_at"),
        )

    def to_json(self) -> dict[str, Any]:
        """The record in the API's JSON shape (times as ISO 8601 strings)."""
        result: dict[str, Any] = _to_json(dataclasses.asdict(self))
        return result


@dataclass(frozen=True)
class SnapshotInfo:
    """A memory snapshot as the server describes it: ``size_bytes`` is what it takes on disk
    in bytes, memory checkpoint and files (the API's ``size``); ``sandbox_id`` is the
    sandbox it was taken of."""

    id: str
    sandbox_id: str
    size_bytes: int
    image: str = ""
    name: str | None = None
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SnapshotInfo:
        return cls(
            id=_str(data, "id"),
            sandbox_id=_str(data, "sandbox_id"),
            size_bytes=int(_num(data, "size", 0)),
            image=_str(data, "image", ""),
            name=_opt_str(data, "name"),
            created_at=_time(data, "created_at"),
        )


@dataclass(frozen=True)
class TenantUsage:
    """What one tenant used over a usage report's window (see :class:`UsageReport`).

    ``sandbox_seconds`` is the wall time its sandboxes ran (from create, or hand-out by a
    warm pool, or resume, to their end or pause); ``cpu_seconds`` the CPU time the host
    charged to them; ``memory_gib_seconds`` their memory limit in GiB times the time they
    ran (memory is billed as allocated); ``snapshot_gib_hours`` and ``volume_gib_hours``
    each snapshot's size on disk and each volume's size in GiB times the time it was
    kept; ``execs`` the commands run.
    """

    tenant: str
    sandbox_seconds: float = 0.0
    cpu_seconds: float = 0.0
    memory_gib_seconds: float = 0.0
    snapshot_gib_hours: float = 0.0
    volume_gib_hours: float = 0.0
    execs: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TenantUsage:
        return cls(
            tenant=_str(data, "tenant"),
            sandbox_seconds=_num(data, "sandbox_seconds", 0.0),
            cpu_seconds=_num(data, "cpu_seconds", 0.0),
            memory_gib_seconds=_num(data, "memory_gib_seconds", 0.0),
            snapshot_gib_hours=_num(data, "snapshot_gib_hours", 0.0),
            volume_gib_hours=_num(data, "volume_gib_hours", 0.0),
            execs=_opt_int(data, "execs") or 0,
        )


@dataclass(frozen=True)
class UsageReport:
    """Usage per tenant over the whole minutes from ``since`` up to ``until``: a key's
    report holds its own tenant only; the admin token's every tenant that used anything,
    or the one it named.

    Example::

        from stockade import Client

        with Client() as client:
            for used in client.usage(since="2026-12-01").tenants:
                print(used.tenant, used.sandbox_seconds, used.cpu_seconds)
    """

    since: datetime
    until: datetime
    tenants: list[TenantUsage]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageReport:
        since, until = _time(data, "since"), _time(data, "until")
        if since is None or until is None:
            raise KeyError("since" if since is None else "until")
        tenants = data.get("tenants")
        if not isinstance(tenants, list):
            raise TypeError(f"tenants must be a list, got {tenants!r}")
        return cls(since=since, until=until, tenants=[TenantUsage.from_json(t) for t in tenants])

    def to_json(self) -> dict[str, Any]:
        """The report in the API's JSON shape (times as ISO 8601 strings)."""
        result: dict[str, Any] = _to_json(dataclasses.asdict(self))
        return result


class FileChange(NamedTuple):
    """A path that changed in a sandbox since its image (or a snapshot), and how:
    ``kind`` is ``added``, ``modified`` or ``deleted``.

    Example::

        for path, kind in sb.files.changes():
            print(kind[0].upper(), path)
    """

    path: str
    kind: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileChange:
        """Parse one entry of the API's ``changes`` list."""
        return cls(path=_str(data, "path"), kind=_str(data, "kind"))


class FileChanges(list[FileChange]):
    """What :meth:`~stockade.Files.changes` returns: a list of :class:`FileChange`, in tree
    order, with ``truncated`` set when it is incomplete (more than the 100 000 paths the
    server lists changed, or directories nest more than 128 deep).

    Example::

        changes = sb.files.changes()
        added = [path for path, kind in changes if kind == "added"]
        if changes.truncated:
            print("and more")
    """

    truncated: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileChanges:
        """Parse the API's ``{"changes": [...], "truncated": bool}``."""
        items = data["changes"]
        if not isinstance(items, list):
            raise TypeError(f"changes must be a list, got {items!r}")
        truncated = data.get("truncated", False)
        if not isinstance(truncated, bool):
            raise TypeError(f"truncated must be a boolean, got {truncated!r}")
        result = cls(FileChange.from_json(item) for item in items)
        result.truncated = truncated
        return result
