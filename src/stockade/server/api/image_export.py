"""Image export route: an image as an OCI image layout tarball, for other tools to import.

``GET /v1/images/export?ref=…&tag=…`` answers ``application/x-tar``: the tarball that
``service/image_export.py`` packs whole before the answer starts, so that a failure is
still a JSON 4xx/5xx rather than a cut-off download, and the answer carries a
Content-Length by which a client can tell a complete download from a truncated one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Annotated, BinaryIO

import anyio.to_thread
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .deps import Caller, Services, services
from .params import IMAGE_REF, MAX_REFERENCE, documented, documented_optional

__all__ = ["router"]

router = APIRouter(prefix="/v1/images", tags=["images"])
Svc = Annotated[Services, Depends(services)]
RefQ = Annotated[
    str,
    Query(
        min_length=1,
        description="A base image (`debian`, `python`) or a pulled registry reference, "
        "as `GET /v1/images` lists it (or pinned by digest).",
        # parse_reference answers a malformed one itself, saying what is wrong with it.
        json_schema_extra=documented(
            pattern=IMAGE_REF, maxLength=MAX_REFERENCE, examples=["debian", "python"]
        ),
    ),
]
TagQ = Annotated[
    str | None,
    Query(
        description="The tag inside the tarball [default: the reference's tag, or latest].",
        # export_layout answers a bad one itself.
        json_schema_extra=documented_optional(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"),
    ),
]

_CHUNK = 1024 * 1024


@router.get(
    "/export",
    summary="Export an image as an OCI image layout tarball",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}}},
)
async def export_image(
    svc: Svc, caller: Caller, ref: RefQ, tag: TagQ = None
) -> StreamingResponse:
    """Pack ``ref`` into a tarball, then stream it; 404 for an image not on this server."""
    exported = await svc.exporter.export(ref, tag, tenant=caller.tenant)
    return _FileStream(exported.file, filename=exported.filename)


class _FileStream(StreamingResponse):
    """Streams an open file and closes it however the response ends.

    The close is here rather than in the body iterator because the iterator's cleanup never
    runs when it was never started, or when ``send`` fails while it waits at a ``yield``
    (a client gone under ASGI 2.4).
    """

    def __init__(self, file: BinaryIO, *, filename: str) -> None:
        self._file = file
        size = os.fstat(file.fileno()).st_size
        headers = {
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        }
        super().__init__(self._chunks(), media_type="application/x-tar", headers=headers)

    async def _chunks(self) -> AsyncIterator[bytes]:
        # anyio's worker threads are not abandoned on cancellation (unlike asyncio.to_thread):
        # a cancelled stream waits for the read in flight, so the file is never closed under
        # a thread still reading it.
        while chunk := await anyio.to_thread.run_sync(self._file.read, _CHUNK):
            yield chunk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._file.close()
