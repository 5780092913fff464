"""Image export route: an image as an OCI image layout tarball, for other tools to import.

``GET /v1/images/export?ref=…&tag=…`` answers ``application/x-tar`` (see
``images/oci/export.py`` for the layout), which ``skopeo copy oci-archive:FILE:TAG …``,
``podman load`` and ``umoci`` read.

The server packs the whole tarball before it answers, into a file under the cache directory:
packing can fail (a layer the format cannot express), and a failure must still be a JSON
4xx/5xx rather than a cut-off download; the size is then known too, so the answer carries a
Content-Length and a client can tell a complete download from a truncated one.

The file is unlinked as soon as it is opened, so it leaves nothing behind however the
response ends (complete, client gone, or server killed); its space is freed when the stream
closes its descriptor.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, BinaryIO

import anyio.to_thread
from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ...errors import ConflictError, ImageNotFoundError, NotFoundError
from ..images.catalog import ImageCatalog
from ..images.oci import ImageConfig, export_layout, parse_reference, pull
from ..runtime.bundle import DEFAULT_ENV
from .deps import Services, services
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
# Leftovers of a server that died while packing (export_layout's staging directories) are
# removed by later exports once they are this old: no export takes a day, so nothing that is
# still being written is touched, even by another server sharing the cache directory.
_STALE_S = 24 * 3600


@dataclass(frozen=True)
class _Source:
    """What goes into the tarball, and what it is called when nobody says."""

    layers: list[Path]
    config: ImageConfig
    default_tag: str
    stem: str  # the file name's start: the repository's last component, or the base name


@router.get(
    "/export",
    summary="Export an image as an OCI image layout tarball",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}}},
)
async def export_image(svc: Svc, ref: RefQ, tag: TagQ = None) -> StreamingResponse:
    """Pack ``ref`` into a tarball, then stream it; 404 for an image not on this server."""
    source = await _source(svc.images, ref)
    tag = tag or source.default_tag
    exports = svc.config.cache_dir / "exports"
    await asyncio.to_thread(_sweep_stale, exports)
    out = exports / f"export-{secrets.token_hex(8)}.tar"
    await _pack(source, out, tag)
    file = await asyncio.to_thread(_open_unlinked, out)
    return _FileStream(file, filename=f"{source.stem}-{tag}.tar")


async def _source(catalog: ImageCatalog, ref: str) -> _Source:
    if catalog.is_recipe(ref):
        # A built-in image made by the builder exports like any built image.
        await catalog.made(ref)
    elif ref in catalog.names():
        info = catalog.info(ref)
        if not info.ready:
            raise ConflictError(
                f"base image {ref!r} is not built yet, so there is nothing to export: build it "
                f"first (`POST /v1/images/{ref}/build`, or start a sandbox from it once)"
            )
        # A base image has no config of its own; sandboxes get this PATH, so should its users.
        config = ImageConfig(env=(f"PATH={DEFAULT_ENV['PATH']}",))
        return _Source(list(info.layers), config, "latest", ref)
    built = catalog.built(ref)
    if built is not None:
        name, _, tag = ref.partition(":")
        config = ImageConfig(
            env=tuple(f"{k}={v}" for k, v in {**DEFAULT_ENV, **built.env}.items()),
            working_dir=built.workdir or "",
            entrypoint=tuple(built.entrypoint or ()),
            cmd=tuple(built.cmd or ()),
            user=built.user or "",
        )
        # Layers bottom-first, as an image manifest lists them.
        return _Source(list(reversed(built.lowerdirs)), config, tag or "latest", name)
    parsed = parse_reference(ref)  # 422 for a malformed reference
    try:
        # offline: only what was pulled before counts; an export never asks a registry.
        image = await pull(ref, catalog.layers, offline=True)
    except ImageNotFoundError as exc:
        raise NotFoundError(
            f"image {ref!r} is not on this server: `stockade image ls` lists the images that "
            f"can be exported; pull it first with `stockade image pull {ref}`"
        ) from exc
    stem = parsed.repository.rsplit("/", 1)[-1]
    return _Source(image.layers, image.config, parsed.tag or "latest", stem)


async def _pack(source: _Source, out: Path, tag: str) -> None:
    """Run export_layout to ``out``; if this request is cancelled meanwhile, the packing
    thread runs on regardless, so ``out`` is removed once it finishes instead."""
    job = asyncio.ensure_future(export_layout(source.layers, source.config, out, tag=tag))
    try:
        await asyncio.shield(job)
    except asyncio.CancelledError:
        job.add_done_callback(lambda done: _discard(done, out))
        raise


def _discard(job: asyncio.Future[str], out: Path) -> None:
    if not job.cancelled():
        job.exception()  # retrieved, so asyncio does not log it as lost: nobody waits for it
    out.unlink(missing_ok=True)


def _open_unlinked(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    finally:
        path.unlink(missing_ok=True)


def _sweep_stale(exports: Path) -> None:
    try:
        entries = list(exports.iterdir())
    except FileNotFoundError:
        return
    cutoff = time.time() - _STALE_S
    for entry in entries:
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        except OSError:
            continue  # gone meanwhile, or another server's: the next sweep tries again


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
