"""Volume routes: create, list, get and delete named persistent volumes (VolumeService)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Response

from ..state.records import VolumeRecord
from .deps import Caller, Services, services
from .params import VolumeRefP
from .schemas import VolumeCreate, VolumeList, VolumeOut, _iso

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])
Svc = Annotated[Services, Depends(services)]


def _out(record: VolumeRecord, used_by: Sequence[str]) -> VolumeOut:
    return VolumeOut(
        id=record.id,
        name=record.name,
        size=record.size,
        created_at=_iso(record.created_at),
        used_by=list(used_by),
    )


@router.post(
    "",
    status_code=201,
    response_model=VolumeOut,
    summary="Create a volume",
    responses={200: {"model": VolumeOut, "description": "It existed (create_if_missing)"}},
)
async def create_volume(
    body: VolumeCreate, svc: Svc, caller: Caller, response: Response
) -> VolumeOut:
    if body.create_if_missing:
        record, created = await svc.volumes.get_or_create(
            body.name, body.size, tenant=caller.tenant
        )
        if not created:
            response.status_code = 200
            return _out(record, await svc.volumes.users_of(record.id))
    else:
        record = await svc.volumes.create(body.name, body.size, tenant=caller.tenant)
    return _out(record, [])


@router.get("", response_model=VolumeList, summary="List volumes")
async def list_volumes(svc: Svc, caller: Caller) -> VolumeList:
    users = await svc.volumes.users()
    found = [r for r in await svc.volumes.list() if caller.sees(r.tenant)]
    return VolumeList(volumes=[_out(r, users.get(r.id, [])) for r in found])


@router.get("/{name_or_id}", response_model=VolumeOut, summary="Get a volume by name or ID")
async def get_volume(name_or_id: VolumeRefP, svc: Svc, caller: Caller) -> VolumeOut:
    # A name is the caller's tenant's (the operator's own: default); an ID is anyone's
    # the caller may see (require_token checked that).
    record = await svc.volumes.get(name_or_id, caller.tenant)
    return _out(record, await svc.volumes.users_of(record.id))


@router.delete(
    "/{name_or_id}",
    status_code=204,
    response_class=Response,
    summary="Delete a volume and its files (409 while a sandbox has it mounted)",
)
async def delete_volume(name_or_id: VolumeRefP, svc: Svc, caller: Caller) -> Response:
    await svc.volumes.delete(name_or_id, caller.tenant)
    return Response(status_code=204)
