"""Image routes: list the images, build a base image and pull a registry image, with
their progress streamed as NDJSON events."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from ...errors import StockadeError
from ..images.oci import RegistryAuth, parse_reference
from .deps import Services, services
from .schemas import ImageList, ImageOut, PullImage

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/images", tags=["images"])
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=ImageList, summary="List images")
async def list_images(svc: Svc) -> ImageList:
    base = [ImageOut.of(svc.images.info(n)) for n in svc.images.names()]
    pulled = [ImageOut.of_pulled(i) for i in await asyncio.to_thread(svc.images.pulled)]
    return ImageList(images=[*base, *pulled])


@router.post(
    "/pull",
    summary="Pull a registry image, streaming progress as NDJSON events",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def pull_image(body: PullImage, svc: Svc) -> StreamingResponse:
    parse_reference(body.ref)  # 422 for a malformed reference, before streaming starts
    auth = RegistryAuth(body.auth.username, body.auth.password) if body.auth else None
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    async def events() -> AsyncIterator[bytes]:
        task = asyncio.create_task(
            svc.images.pull(body.ref, auth=auth, on_progress=lines.put_nowait)
        )
        task.add_done_callback(lambda _: lines.put_nowait(None))
        try:
            while (line := await lines.get()) is not None:
                yield _line({"type": "log", "line": line})
            image = await task
        except StockadeError as exc:
            yield _line({"type": "error", "error": exc.to_body()["error"]})
            return
        except Exception:
            log.exception("pulling %s failed", body.ref)
            message = f"pulling {body.ref} failed unexpectedly; the server log has details"
            yield _line({"type": "error", "error": {"code": "internal", "message": message}})
            return
        finally:
            if not task.done():  # the client went away: stop pulling for it
                task.cancel()
        yield _line({"type": "done", "image": ImageOut.of_pulled(image).model_dump()})

    return StreamingResponse(events(), media_type="application/x-ndjson")


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
