"""File routes. Bodies stream both ways; the server never holds a whole file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from ..service.changes import sandbox_changes
from .deps import Services, services
from .params import SNAPSHOT_ID, AbsPathQ, RemovablePathQ, SandboxIdP, documented_optional
from .schemas import FileChangeOut, FileChanges, FileInfoOut, FileList, MkdirRequest

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])
Svc = Annotated[Services, Depends(services)]
PathQ = AbsPathQ


@router.put(
    "",
    response_model=FileInfoOut,
    summary="Write a file (raw body, streamed; parents are created)",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        }
    },
)
async def write_file(
    sandbox_id: SandboxIdP, path: PathQ, request: Request, svc: Svc
) -> FileInfoOut:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    return FileInfoOut.of(await svc.files.write(sandbox_id, path, body()))


@router.get(
    "",
    summary="Read a file (raw bytes, streamed)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def read_file(sandbox_id: SandboxIdP, path: PathQ, svc: Svc) -> StreamingResponse:
    chunks = await svc.files.read(sandbox_id, path)
    return StreamingResponse(chunks, media_type="application/octet-stream")


class FileListing(FileList):
    truncated: bool = Field(
        False,
        description="The listing is incomplete: the directory has more entries than one "
        "listing returns (100 000, or 8 MiB of them); these are the first by name.",
    )


@router.get("/list", response_model=FileListing, summary="List a directory")
async def list_dir(sandbox_id: SandboxIdP, path: PathQ, svc: Svc) -> Response:
    listing = await svc.files.listing(sandbox_id, path)
    entries = [FileInfoOut.of(f) for f in listing.entries]
    body = FileListing(entries=entries, truncated=listing.truncated).model_dump()
    # ASCII JSON: a name that is not UTF-8 travels as its \udc80-\udcff escapes (as on the
    # agent's channel), which the default UTF-8 encoding of a response cannot carry.
    return Response(json.dumps(body, ensure_ascii=True), media_type="application/json")


@router.get("/stat", response_model=FileInfoOut, summary="Stat a path")
async def stat_path(sandbox_id: SandboxIdP, path: PathQ, svc: Svc) -> FileInfoOut:
    return FileInfoOut.of(await svc.files.stat(sandbox_id, path))


@router.post("/mkdir", response_model=FileInfoOut, summary="Make a directory")
async def make_dir(sandbox_id: SandboxIdP, body: MkdirRequest, svc: Svc) -> FileInfoOut:
    return FileInfoOut.of(await svc.files.mkdir(sandbox_id, body.path, parents=body.parents))


@router.delete("", status_code=204, summary="Remove a file or directory")
async def remove_path(
    sandbox_id: SandboxIdP, path: RemovablePathQ, svc: Svc, recursive: bool = False
) -> Response:
    await svc.files.remove(sandbox_id, path, recursive=recursive)
    return Response(status_code=204)


@router.get(
    "/changes",
    response_model=FileChanges,
    summary="What changed: paths added, modified or deleted since the image or a snapshot",
)
async def list_changes(
    sandbox_id: SandboxIdP,
    svc: Svc,
    since: Annotated[
        str | None,
        Query(
            description="A memory snapshot (`sn-…`) to compare with instead of the image.",
            # sandbox_changes answers a malformed one itself, quoting it.
            json_schema_extra=documented_optional(pattern=SNAPSHOT_ID),
        ),
    ] = None,
) -> FileChanges:
    # Read on the host from the overlay's layers: works on a paused sandbox too, and does
    # not wake one (nor count as activity for its idle timeout).
    result = await sandbox_changes(svc.sandboxes, svc.snapshots, sandbox_id, since)
    return FileChanges(
        changes=[FileChangeOut(path=c.path, kind=c.kind) for c in result.changes],
        truncated=result.truncated,
    )
