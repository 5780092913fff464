"""Request and response bodies of the HTTP API (they make up the OpenAPI document)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..images.catalog import ImageInfo
from ..service.files import FileInfo
from ..state.records import SandboxRecord

__all__ = [
    "CreateSandbox",
    "ErrorBody",
    "ExecRequest",
    "FileInfoOut",
    "FileList",
    "ImageList",
    "ImageOut",
    "MkdirRequest",
    "SandboxList",
    "SandboxOut",
    "WsExecRequest",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSandbox(_Strict):
    image: str = Field("python", description="Name of a built image, e.g. `python` or `debian`.")
    cpu: float = Field(1.0, description="CPU cores (fractional allowed).")
    memory: int = Field(512, description="Memory limit in MiB.")
    disk: int = Field(1024, description="Writable disk space in MiB.")
    timeout: float = Field(300.0, description="Lifetime in seconds; the sandbox ends after it.")
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = Field(None, description="Absolute working directory.")
    tags: dict[str, str] = Field(default_factory=dict)
    entrypoint: list[str] | None = Field(
        None, description="Main process; its output is the sandbox log."
    )


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SandboxOut(BaseModel):
    id: str
    status: Literal["starting", "running", "terminated", "failed"]
    reason: Literal["terminated", "timeout", "oom", "error", "exited"] | None
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

    @classmethod
    def of(cls, r: SandboxRecord) -> SandboxOut:
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
            expires_at=_iso(r.expires_at if r.alive else None),
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
    name: str
    description: str
    ready: bool
    size_mib: int | None

    @classmethod
    def of(cls, i: ImageInfo) -> ImageOut:
        return cls(name=i.name, description=i.description, ready=i.ready, size_mib=i.size_mib)


class ImageList(BaseModel):
    images: list[ImageOut]


class _ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: _ErrorDetail
