"""Image routes: list the images, and build one with a streamed log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from .deps import Services, services
from .schemas import ImageList, ImageOut

router = APIRouter(prefix="/v1/images", tags=["images"])
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=ImageList, summary="List images")
async def list_images(svc: Svc) -> ImageList:
    return ImageList(images=[ImageOut.of(svc.images.info(n)) for n in svc.images.names()])


@router.post(
    "/{name}/build",
    summary="Build an image, streaming its log as NDJSON events",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def build_image(name: str, svc: Svc) -> StreamingResponse:
    info = svc.images.info(name)  # 404 naming the known images

    async def events() -> AsyncIterator[bytes]:
        if not info.ready:
            job = svc.images.start_build(name)
            async for line in job.follow():
                yield _line({"type": "log", "line": line})
            if job.error:
                yield _line({"type": "error", "error": {"code": "internal", "message": job.error}})
                return
        yield _line({"type": "done", "image": ImageOut.of(svc.images.info(name)).model_dump()})

    return StreamingResponse(events(), media_type="application/x-ndjson")


def _line(obj: object) -> bytes:
    return (json.dumps(obj) + "\n").encode()
