"""Image routes: list the images, build a base image and pull a registry image, with
their progress streamed as NDJSON events."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from ...errors import ConflictError, InvalidArgumentError, NotFoundError, StockadeError
from ..images.built import BuiltImage
from ..images.catalog import is_reference
from ..images.gc import collect
from ..images.oci import RegistryAuth, parse_reference
from ..images.oci.image import forget_pulled
from ..images.tags import parse_tag
from ..service.builder import parse_spec
from . import ndjson
from .deps import Services, services
from .openapi import inline_body, raw_body
from .params import IMAGE_REF, MAX_REFERENCE, DigestP, ImageNameP, documented
from .schemas import BuildRequest, ImageList, ImageOut, PullImage

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CONTEXT_LIMIT = 4 << 30
_MAX_MIN_AGE = 86400 * 365
# Log lines of a build or pull waiting for a slow client (each at most 16 KiB + prefix).
_LOG_BACKLOG = 1000

router = APIRouter(prefix="/v1/images", tags=["images"])
Svc = Annotated[Services, Depends(services)]


@router.get("", response_model=ImageList, summary="List images")
async def list_images(svc: Svc) -> ImageList:
    base = [ImageOut.of(svc.images.info(n)) for n in svc.images.names()]
    pulled = [ImageOut.of_pulled(i) for i in await asyncio.to_thread(svc.images.pulled)]
    named = []
    for name, (image_id, _when) in sorted(svc.images.tags.all().items()):
        built = svc.images.built(image_id)
        if built is not None:
            named.append(ImageOut.of_built(built, name))
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
    # Paused sandboxes and snapshots mount their layers again when they come back.
    in_use = await svc.snapshots.layers_in_use()
    result = await asyncio.to_thread(collect, svc.images, min_age=min_age, in_use=in_use)
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
) -> dict[str, str]:
    """Only the name goes: the layers stay until `image gc`, so a running sandbox of the
    image never loses its files."""
    if name in svc.images.names():
        raise ConflictError(f"{name!r} is a base image; base images cannot be deleted")
    if svc.images.tags.get(name) is not None:
        image_id = svc.images.tags.remove(name if ":" in name else f"{name}:latest")
        return {"deleted": name, "image": image_id or ""}
    if is_reference(name) and await asyncio.to_thread(forget_pulled, svc.images.layers, name):
        return {"deleted": name, "image": name}
    raise NotFoundError(f"image {name!r} does not exist; `stockade image ls` lists the images")


@router.put(
    "/contexts/{digest}",
    status_code=204,
    summary="Upload the files of a copy step (a tar named by its sha256)",
    openapi_extra=raw_body("The tar; its SHA-256 must be the one in the path."),
)
async def put_context(digest: DigestP, request: Request, svc: Svc) -> Response:
    path = svc.builder.context_path(digest)
    if path.exists():
        return Response(status_code=204)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    h = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as out:  # noqa: ASYNC230  (chunks are written as they come)
            async for chunk in request.stream():
                size += len(chunk)
                if size > _CONTEXT_LIMIT:
                    raise InvalidArgumentError(
                        f"the files of a copy step are over {_CONTEXT_LIMIT >> 30} GiB"
                    )
                h.update(chunk)
                out.write(chunk)
        if f"sha256:{h.hexdigest()}" != digest:
            raise InvalidArgumentError(
                f"the upload's sha256 is sha256:{h.hexdigest()}, not {digest}; upload again"
            )
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return Response(status_code=204)


@router.head("/contexts/{digest}", summary="Whether the files of a copy step are uploaded")
async def has_context(digest: DigestP, svc: Svc) -> Response:
    found = await asyncio.to_thread(svc.builder.context_path(digest).exists)
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
async def build_steps(body: dict[str, Any], svc: Svc) -> StreamingResponse:
    spec = parse_spec(body)
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
    parse_reference(body.ref)  # 422 for a malformed reference, before streaming starts
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
    name = svc.images.tags.set(tag, built.id) if tag else built.id
    return ImageOut.of_built(built, name)


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
