"""Snapshot, pause/resume and fork routes: thin wrappers over SnapshotService and
SandboxService. Restoring a snapshot is ``POST /v1/sandboxes`` with ``snapshot``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from ..state.records import SandboxRecord
from .deps import Caller, Services, services
from .params import SANDBOX_ID, SandboxIdP, SnapshotIdP, documented_optional
from .schemas import (
    ForkIn,
    FsSnapshotIn,
    ImageOut,
    SandboxList,
    SandboxOut,
    SnapshotIn,
    SnapshotList,
    SnapshotOut,
)

router = APIRouter(tags=["snapshots"])

Svc = Annotated[Services, Depends(services)]


def _out(svc: Services, record: SandboxRecord) -> SandboxOut:
    return SandboxOut.of(record, svc.config.tunnel_domain)


@router.post(
    "/v1/sandboxes/{sandbox_id}/snapshots",
    status_code=201,
    response_model=SnapshotOut,
    summary="Snapshot a sandbox's memory and files (it keeps running)",
)
async def snapshot(sandbox_id: SandboxIdP, svc: Svc, body: SnapshotIn | None = None) -> SnapshotOut:
    record = await svc.snapshots.create(sandbox_id, body.name if body else None)
    return SnapshotOut.of(record)


@router.post(
    "/v1/sandboxes/{sandbox_id}/filesystem-snapshots",
    status_code=201,
    response_model=ImageOut,
    summary="Save a sandbox's files as a new image (it keeps running)",
)
async def filesystem_snapshot(
    sandbox_id: SandboxIdP, svc: Svc, body: FsSnapshotIn | None = None
) -> ImageOut:
    image, name = await svc.snapshots.filesystem(sandbox_id, body.name if body else None)
    return ImageOut.of_built(image, name)


@router.post(
    "/v1/sandboxes/{sandbox_id}/pause",
    response_model=SandboxOut,
    summary="Pause: save the sandbox's memory to disk and stop it",
)
async def pause(sandbox_id: SandboxIdP, svc: Svc) -> SandboxOut:
    return _out(svc, await svc.sandboxes.pause(sandbox_id))


@router.post(
    "/v1/sandboxes/{sandbox_id}/resume",
    response_model=SandboxOut,
    summary="Resume a paused sandbox: same ID, files and processes",
)
async def resume(sandbox_id: SandboxIdP, svc: Svc) -> SandboxOut:
    return _out(svc, await svc.sandboxes.resume(sandbox_id))


@router.post(
    "/v1/sandboxes/{sandbox_id}/fork",
    status_code=201,
    response_model=SandboxList,
    summary="Fork a running sandbox into independent copies of it",
)
async def fork(sandbox_id: SandboxIdP, svc: Svc, body: ForkIn | None = None) -> SandboxList:
    records = await svc.creator.fork(sandbox_id, body.count if body else 1)
    return SandboxList(sandboxes=[_out(svc, r) for r in records])


@router.get("/v1/snapshots", response_model=SnapshotList, summary="List snapshots")
async def list_snapshots(
    svc: Svc,
    caller: Caller,
    sandbox_id: Annotated[
        str | None,
        Query(
            description="Only snapshots of this sandbox (an ID that names none: none).",
            json_schema_extra=documented_optional(pattern=SANDBOX_ID),
        ),
    ] = None,
) -> SnapshotList:
    found = [s for s in await svc.snapshots.list(sandbox_id) if caller.sees(s.tenant)]
    return SnapshotList(snapshots=[SnapshotOut.of(s) for s in found])


@router.get("/v1/snapshots/{snapshot_id}", response_model=SnapshotOut, summary="Get a snapshot")
async def get_snapshot(snapshot_id: SnapshotIdP, svc: Svc) -> SnapshotOut:
    return SnapshotOut.of(await svc.snapshots.get(snapshot_id))


@router.delete("/v1/snapshots/{snapshot_id}", status_code=204, summary="Delete a snapshot")
async def delete_snapshot(snapshot_id: SnapshotIdP, svc: Svc) -> Response:
    await svc.snapshots.delete(snapshot_id)
    return Response(status_code=204)
