"""File routes. Bodies stream both ways; the server never holds a whole file."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field, StrictInt

from ...errors import AuthenticationError, StockadeError
from ..service.changes import sandbox_changes
from ..service.files import WatchEvent
from ..service.owners import owner_for
from ..service.users import USER_PATTERN
from . import ndjson
from .deps import Caller, Services, services
from .params import (
    ABS_PATH,
    MAX_PATH,
    SNAPSHOT_ID,
    AbsPathQ,
    RemovablePathQ,
    SandboxIdP,
    documented,
    documented_optional,
)
from .schemas import FileChangeOut, FileChanges, FileInfoOut, FileList, MkdirRequest, _Strict

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])
Svc = Annotated[Services, Depends(services)]
PathQ = AbsPathQ
# Who owns what the call makes: a user of the image or uid[:gid] (default: the sandbox's).
UserQ = Annotated[
    str | None,
    Query(
        description="Owner of what is made: a user of the image or `uid[:gid]` (default: "
        "the sandbox's user).",
        json_schema_extra=documented_optional(pattern=USER_PATTERN),
    ),
]


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
    sandbox_id: SandboxIdP, path: PathQ, request: Request, svc: Svc, user: UserQ = None
) -> FileInfoOut:
    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    owner = await owner_for(svc.execs, sandbox_id, user)
    info = await svc.files.write(sandbox_id, path, body(), owner=owner)
    return FileInfoOut.of(info)


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
async def make_dir(
    sandbox_id: SandboxIdP, body: MkdirRequest, svc: Svc, user: UserQ = None
) -> FileInfoOut:
    owner = await owner_for(svc.execs, sandbox_id, user)
    info = await svc.files.mkdir(sandbox_id, body.path, parents=body.parents, owner=owner)
    return FileInfoOut.of(info)


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


class RenameRequest(_Strict):
    # check_path answers a bad path itself, naming it.
    src: str = Field(
        ..., description="The path to move.",
        json_schema_extra=documented(pattern=ABS_PATH, maxLength=MAX_PATH),
    )  # fmt: skip
    dst: str = Field(
        ..., description="Its new path; its parent directory must exist. A file there is "
        "replaced, as by rename(2).",
        json_schema_extra=documented(pattern=ABS_PATH, maxLength=MAX_PATH),
    )  # fmt: skip


class ChmodRequest(_Strict):
    path: str = Field(
        ..., description="Absolute path inside the sandbox (a symlink's target is changed).",
        json_schema_extra=documented(pattern=ABS_PATH, maxLength=MAX_PATH),
    )  # fmt: skip
    # Strict: a string such as "755" would otherwise be read as decimal 755 (0o1363).
    mode: StrictInt = Field(..., description="Permission bits, 0..4095 (0o7777), e.g. 493 (0o755).")


@router.post("/rename", response_model=FileInfoOut, summary="Move or rename a path")
async def rename_path(sandbox_id: SandboxIdP, body: RenameRequest, svc: Svc) -> FileInfoOut:
    return FileInfoOut.of(await svc.files.rename(sandbox_id, body.src, body.dst))


@router.post("/chmod", response_model=FileInfoOut, summary="Change a path's permission bits")
async def chmod_path(sandbox_id: SandboxIdP, body: ChmodRequest, svc: Svc) -> FileInfoOut:
    return FileInfoOut.of(await svc.files.chmod(sandbox_id, body.path, body.mode))


# A blank line this often keeps proxies and the SDK's read timeout from closing a quiet watch.
WATCH_HEARTBEAT_S = 15.0


@router.get(
    "/watch",
    summary="Watch a path: create, modify, delete and rename events as NDJSON, as they happen",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def watch_path(
    sandbox_id: SandboxIdP, path: PathQ, svc: Svc, who: Caller, recursive: bool = False
) -> StreamingResponse:
    # Opened before the answer starts: a missing path is a 404, not an event.
    events = await svc.files.watch(sandbox_id, path, recursive=recursive)
    # Set when the key this watch was opened with is revoked: the stream ends there, with
    # the reason as its last line, and nothing seen after it is sent (as exec's streams).
    cut: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def revoked(key_id: str) -> None:
        if key_id == who.key_id and not cut.done():
            cut.set_result(key_id)

    async def lines() -> AsyncIterator[bytes]:
        # Starlette cancels this when the client goes away; closing `events` then closes
        # the agent's channel, and the sandbox's inotify descriptor with it.
        pending: asyncio.Task[WatchEvent] | None = None
        svc.access.on_revoke.append(revoked)
        try:
            if who.key_id is not None:
                try:
                    svc.access.holder(who.key_id)
                except StockadeError:  # revoked before the listener above was in place
                    revoked(who.key_id)
            while True:
                if cut.done():
                    error = AuthenticationError(f"API key {cut.result()} was revoked")
                    yield ndjson.line({"type": "error", **error.to_body()})
                    return
                if pending is None:
                    pending = asyncio.ensure_future(anext(events))
                waiting: set[asyncio.Future[Any]] = {pending, cut}
                done, _ = await asyncio.wait(
                    waiting, timeout=WATCH_HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED
                )
                if cut.done():
                    continue
                if not done:
                    yield b"\n"
                    continue
                try:
                    event = pending.result()
                except StopAsyncIteration:
                    return
                except StockadeError as err:
                    # Headers are gone already (the sandbox ended, its agent went away):
                    # the error travels as the stream's last event, as exec's does.
                    yield ndjson.line({"type": "error", **err.to_body()})
                    return
                finally:
                    pending = None
                yield ndjson.line(event.to_json())
        finally:
            svc.access.on_revoke.remove(revoked)
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await events.aclose()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
