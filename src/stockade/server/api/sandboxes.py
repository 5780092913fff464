"""Sandbox lifecycle routes: thin wrappers over SandboxService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from ...errors import InvalidArgumentError
from ..service.sandboxes import CreateRequest
from .deps import Services, services
from .limits import check_create_ranges
from .schemas import CreateSandbox, SandboxList, SandboxOut

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])

_STATUSES = ("starting", "running", "terminated", "failed")

Svc = Annotated[Services, Depends(services)]


def _parse_tags(tags: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"tag filter {t!r} must look like key=value")
        out[key] = value
    return out


@router.post("", status_code=201, response_model=SandboxOut, summary="Create a sandbox")
async def create_sandbox(body: CreateSandbox, svc: Svc) -> SandboxOut:
    check_create_ranges(body.cpu, body.memory, body.disk, body.timeout)
    if body.workdir is not None and not body.workdir.startswith("/"):
        raise InvalidArgumentError(f"workdir {body.workdir!r} must be an absolute path")
    if body.entrypoint is not None and not body.entrypoint:
        raise InvalidArgumentError(
            "entrypoint must be a non-empty list, e.g. ['python3', 'app.py']"
        )
    svc.images.info(body.image)  # 404 naming the images, before any work
    req = CreateRequest(
        image=body.image, cpu=body.cpu, memory=body.memory, disk=body.disk,
        timeout=body.timeout, env=body.env, workdir=body.workdir, tags=body.tags,
        entrypoint=body.entrypoint,
    )  # fmt: skip
    record = await svc.pools.take(req)
    if record is None:
        await svc.pools.make_room(req.memory)
        record = await svc.sandboxes.create(req)
    return SandboxOut.of(record)


@router.get("", response_model=SandboxList, summary="List sandboxes")
async def list_sandboxes(
    svc: Svc,
    status: Annotated[str | None, Query(description="Only sandboxes in this status.")] = None,
    tag: Annotated[list[str], Query(description="key=value; repeat to require several.")] = [],  # noqa: B006
) -> SandboxList:
    if status is not None and status not in _STATUSES:
        raise InvalidArgumentError(f"status must be one of {', '.join(_STATUSES)}")
    records = await svc.sandboxes.list(status=status, tags=_parse_tags(tag))
    return SandboxList(sandboxes=[SandboxOut.of(r) for r in records])


@router.get("/{sandbox_id}", response_model=SandboxOut, summary="Get a sandbox")
async def get_sandbox(sandbox_id: str, svc: Svc) -> SandboxOut:
    return SandboxOut.of(await svc.sandboxes.get(sandbox_id))


@router.delete("/{sandbox_id}", response_model=SandboxOut, summary="Terminate a sandbox")
async def terminate_sandbox(sandbox_id: str, svc: Svc) -> SandboxOut:
    return SandboxOut.of(await svc.sandboxes.terminate(sandbox_id))


@router.get(
    "/{sandbox_id}/logs",
    summary="The entrypoint's output",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def sandbox_logs(sandbox_id: str, svc: Svc, follow: bool = False) -> StreamingResponse:
    await svc.sandboxes.get(sandbox_id)
    path = svc.sandboxes.log_path(sandbox_id)

    async def chunks() -> AsyncIterator[bytes]:
        offset = 0
        while True:
            data = await asyncio.to_thread(_read_from, path, offset)
            if data:
                offset += len(data)
                yield data
                continue
            if not follow:
                return
            record = await svc.sandboxes.get(sandbox_id)
            if not record.alive:
                tail = await asyncio.to_thread(_read_from, path, offset)
                if tail:
                    yield tail
                return
            await asyncio.sleep(0.2)

    return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")


def _read_from(path: object, offset: int, limit: int = 1 << 20) -> bytes:
    try:
        with open(path, "rb") as f:  # type: ignore[call-overload]
            f.seek(offset)
            data: bytes = f.read(limit)
            return data
    except FileNotFoundError:
        return b""
