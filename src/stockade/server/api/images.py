"""Image routes: list the images, build a base image and pull a registry image, with
their progress streamed as NDJSON events."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from ...errors import InvalidArgumentError, StockadeError
from ..images.built import BuiltImage
from ..images.tags import parse_tag
from ..service.builder import parse_spec
from ..service.images import RegistryAuth, check_reference
from . import ndjson
from .deps import Caller, Services, services
from .openapi import inline_body, raw_body
from .params import IMAGE_REF, MAX_REFERENCE, DigestP, ImageNameP, documented
from .schemas import BuildRequest, ImageList, ImageOut, PullImage

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MAX_MIN_AGE = 86400 * 365
# Log lines of a build or pull waiting for a slow client (each at most 16 KiB + prefix).
_LOG_BACKLOG = 1000

router = APIRouter(prefix="/v1/images", tags=["images"])
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=ImageList, summary="List images")
async def list_images(svc: Svc, caller: Caller) -> ImageList:
    found = await svc.image_service.listing(caller.tenant)
    base = [ImageOut.of(i) for i in found.base]
    named = [ImageOut.of_built(built, name) for name, built in found.named]
    pulled = [ImageOut.of_pulled(i) for i in found.pulled]
    return ImageList(images=[*base, *named, *pulled])


@router.post("/gc", summary="Remove the layers no image or sandbox needs")
async def collect_garbage(
    svc: Svc,
    min_age: Annotated[
        float,
        Query(
            description="Seconds: younger entries are kept.",
            # Checked below, with a message naming the range.
            json_schema_extra=documented(minimum=0, maximum=_MAX_MIN_AGE),
        ),
    ] = 60.0,
) -> dict[str, int]:
    if not 0 <= min_age <= _MAX_MIN_AGE:
        raise InvalidArgumentError(f"min_age must be between 0 and {_MAX_MIN_AGE} seconds")
    result = await svc.image_service.collect_garbage(min_age)
    return {"removed": result.removed, "freed_bytes": result.freed}


@router.delete("/{name:path}", summary="Delete a named image (name:tag) or a pulled one")
async def delete_image(
    name: Annotated[
        str,
        Path(
            description="A built image's `name:tag` (`name` alone: `name:latest`) or a pulled "
            "registry reference; one that names no image is a 404.",
            json_schema_extra=documented(pattern=IMAGE_REF, maxLength=MAX_REFERENCE),
        ),
    ],
    svc: Svc,
    caller: Caller,
) -> dict[str, str]:
    """Only the name goes: the layers stay until `image gc`, so a running sandbox of the
    image never loses its files."""
    return {"deleted": name, "image": await svc.image_service.delete(name, caller.tenant)}


@router.put(
    "/contexts/{digest}",
    status_code=204,
    summary="Upload the files of a copy step (a tar named by its sha256)",
    openapi_extra=raw_body("The tar; its SHA-256 must be the one in the path."),
)
async def put_context(digest: DigestP, request: Request, svc: Svc) -> Response:
    await svc.image_service.put_context(digest, request.stream())
    return Response(status_code=204)


@router.head("/contexts/{digest}", summary="Whether the files of a copy step are uploaded")
async def has_context(digest: DigestP, svc: Svc) -> Response:
    found = await svc.image_service.has_context(digest)
    return Response(status_code=200 if found else 404)


@router.post(
    "/builds",
    summary="Build an image from steps, streaming its log as NDJSON events",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
    # parse_spec validates the body (naming the step that is wrong); BuildRequest says what
    # it accepts.
    openapi_extra=inline_body(BuildRequest),
)
async def build_steps(body: dict[str, Any], svc: Svc, caller: Caller) -> StreamingResponse:
    spec = dataclasses.replace(parse_spec(body), tenant=caller.tenant)
    tag = body.get("tag")
    if tag is not None:
        if not isinstance(tag, str):
            raise InvalidArgumentError("tag must be a string such as agent:v1")
        parse_tag(tag)
    return _stream(
        lambda say: svc.builder.build(spec, say),
        lambda built: _built_out(svc, built, tag),
        what="the build",
    )


@router.post(
    "/pull",
    summary="Pull a registry image, streaming progress as NDJSON events",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def pull_image(body: PullImage, svc: Svc) -> StreamingResponse:
    check_reference(body.ref)  # 422 for a malformed reference, before streaming starts
    auth = RegistryAuth(body.auth.username, body.auth.password) if body.auth else None
    return _stream(
        lambda say: svc.images.pull(body.ref, auth=auth, on_progress=say),
        ImageOut.of_pulled,
        what=f"pulling {body.ref}",
    )


def _stream(
    work: Callable[[Callable[[str], None]], Coroutine[Any, Any, _T]],
    done: Callable[[_T], ImageOut],
    *,
    what: str,
) -> StreamingResponse:
    """Run ``work`` (given a log function) while streaming its log lines as NDJSON ``log``
    events, then a ``done`` event with the image, or an ``error`` event."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    dropped = 0

    def say(line: str) -> None:
        # A build step's output comes from a sandbox and the client may read slowly: past
        # a fixed backlog, lines are counted instead of kept, and the count is logged.
        nonlocal dropped
        if lines.qsize() >= _LOG_BACKLOG:
            dropped += 1
        else:
            lines.put_nowait(line)

    async def events() -> AsyncIterator[bytes]:
        nonlocal dropped
        task: asyncio.Task[_T] = asyncio.create_task(work(say))
        task.add_done_callback(lambda _: lines.put_nowait(None))
        try:
            while (line := await lines.get()) is not None:
                if dropped:
                    note = f"[{dropped} lines dropped: the client read too slowly]"
                    dropped = 0
                    yield ndjson.line({"type": "log", "line": note})
                yield ndjson.line({"type": "log", "line": line})
            result = await task
            out = done(result)
        except StockadeError as exc:
            yield ndjson.line({"type": "error", "error": exc.to_body()["error"]})
            return
        except Exception:
            log.exception("%s failed", what)
            message = f"{what} failed unexpectedly; the server log has details"
            yield ndjson.line({"type": "error", "error": {"code": "internal", "message": message}})
            return
        finally:
            if not task.done():  # the client went away: stop working for it
                task.cancel()
        yield ndjson.line({"type": "done", "image": out.model_dump()})

    return StreamingResponse(events(), media_type="application/x-ndjson")


def _built_out(svc: Services, built: BuiltImage, tag: str | None) -> ImageOut:
    return ImageOut.of_built(built, svc.image_service.name_build(built, tag))


@router.post(
    "/{name}/build",
    summary="Build an image, streaming its log as NDJSON events",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def build_image(name: ImageNameP, svc: Svc) -> StreamingResponse:
    info = svc.images.info(name)  # 404 naming the known images

    async def events() -> AsyncIterator[bytes]:
        if not info.ready:
            job = svc.images.start_build(name)
            async for line in job.follow():
                yield ndjson.line({"type": "log", "line": line})
            if job.error:
                error = {"code": "internal", "message": job.error}
                yield ndjson.line({"type": "error", "error": error})
                return
        done = ImageOut.of(svc.images.info(name)).model_dump()
        yield ndjson.line({"type": "done", "image": done})

    return StreamingResponse(events(), media_type="application/x-ndjson")
