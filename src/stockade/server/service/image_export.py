"""Image export: an image packed as an OCI image layout tarball, for other tools to import.

The tarball (see ``images/oci/export.py`` for the layout) is what
``skopeo copy oci-archive:FILE:TAG …``, ``podman load`` and ``umoci`` read.

The whole tarball is packed before anything is answered, into a file under the cache
directory: packing can fail (a layer the format cannot express), and a failure must still
be an error rather than a cut-off download; the size is then known too, so a client can
tell a complete download from a truncated one.

The file is unlinked as soon as it is opened, so it leaves nothing behind however its
reader ends (complete, gone, or the server killed); its space is freed when the reader
closes its descriptor.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ...errors import ConflictError, ImageNotFoundError, NotFoundError
from ..images.catalog import ImageCatalog
from ..images.oci import ImageConfig, export_layout, parse_reference, pull
from ..runtime.bundle import DEFAULT_ENV

__all__ = ["ExportedImage", "ImageExporter"]

# Leftovers of a server that died while packing (export_layout's staging directories) are
# removed by later exports once they are this old: no export takes a day, so nothing that is
# still being written is touched, even by another server sharing the cache directory.
_STALE_S = 24 * 3600


@dataclass(frozen=True)
class ExportedImage:
    """A packed tarball, open for reading and already unlinked: closing it frees its space."""

    file: BinaryIO
    filename: str  # what to call it: `<repository's last component or base name>-<tag>.tar`


@dataclass(frozen=True)
class _Source:
    """What goes into the tarball, and what it is called when nobody says."""

    layers: list[Path]
    config: ImageConfig
    default_tag: str
    stem: str  # the file name's start: the repository's last component, or the base name


class ImageExporter:
    """Packs the images of ``catalog`` into tarballs under ``cache_dir/exports``."""

    def __init__(self, catalog: ImageCatalog, cache_dir: Path) -> None:
        self.catalog = catalog
        self.exports = cache_dir / "exports"

    async def export(
        self, ref: str, tag: str | None = None, *, tenant: str = "default"
    ) -> ExportedImage:
        """Pack ``ref``, tagged ``tag`` inside (default: the reference's tag, or latest);
        404 for an image not on this server."""
        source = await _source(self.catalog, ref, tenant)
        tag = tag or source.default_tag
        await asyncio.to_thread(_sweep_stale, self.exports)
        out = self.exports / f"export-{secrets.token_hex(8)}.tar"
        await _pack(source, out, tag)
        file = await asyncio.to_thread(_open_unlinked, out)
        return ExportedImage(file, filename=f"{source.stem}-{tag}.tar")


async def _source(catalog: ImageCatalog, ref: str, tenant: str) -> _Source:
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
    built = catalog.built(ref, tenant)
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
    """Run export_layout to ``out``; if the caller is cancelled meanwhile, the packing
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
