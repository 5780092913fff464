"""The images a server holds, as its clients manage them: list them, name a build, delete
a name, collect the layers nothing needs, and take in the files of a build's copy steps.

The registry types a caller needs (:class:`PulledImage`, :class:`RegistryAuth`) are
re-exported here, so that the HTTP edge reaches ``images/oci`` only through this layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterable
from dataclasses import dataclass

from ...errors import ConflictError, ForbiddenError, InvalidArgumentError, NotFoundError
from ..images.built import BuiltImage
from ..images.catalog import ImageCatalog, ImageInfo, is_reference
from ..images.gc import GcResult, collect
from ..images.oci import PulledImage, RegistryAuth, parse_reference
from ..images.oci.image import forget_pulled
from .builder import ImageBuilder
from .snapshots import SnapshotService

__all__ = [
    "ImageListing",
    "ImageService",
    "PulledImage",
    "RegistryAuth",
    "check_reference",
]

# The most a copy step's files (one uploaded tar) may weigh.
_CONTEXT_LIMIT = 4 << 30


@dataclass(frozen=True)
class ImageListing:
    """Every image there is: base and built-in ones, named builds, pulled registry images."""

    base: list[ImageInfo]
    named: list[tuple[str, BuiltImage]]  # (name:tag, the build it names)
    pulled: list[PulledImage]


def check_reference(ref: str) -> None:
    """Raise InvalidArgumentError (422) for a malformed registry reference, saying what is
    wrong with it."""
    parse_reference(ref)


class ImageService:
    def __init__(
        self, catalog: ImageCatalog, builder: ImageBuilder, snapshots: SnapshotService
    ) -> None:
        self.catalog = catalog
        self.builder = builder
        self.snapshots = snapshots

    async def listing(self, tenant: str = "default") -> ImageListing:
        """The images ``tenant`` may use: the shared base and pulled ones, and its names."""
        base = [self.catalog.info(n) for n in self.catalog.names()]
        pulled = await asyncio.to_thread(self.catalog.pulled)
        named = []
        for name, (image_id, _when) in sorted(self.catalog.tags.all(tenant).items()):
            built = self.catalog.built(image_id, tenant)
            if built is not None:
                named.append((name, built))
        return ImageListing(base=base, named=named, pulled=pulled)

    def name_build(self, built: BuiltImage, tag: str | None) -> str:
        """The name of a finished build: ``tag``, now naming it (among its tenant's
        names), or else the build's ID."""
        return self.catalog.tags.set(tag, built.id, built.tenant) if tag else built.id

    async def delete(self, name: str, tenant: str = "default") -> str:
        """Delete the name of a built image (`name:tag`; `name` alone: `name:latest`) or a
        pulled one; returns what it named (the image ID, or the reference). Only the name
        goes: the layers stay until garbage collection."""
        if name in self.catalog.names():
            raise ConflictError(f"{name!r} is a base image; base images cannot be deleted")
        if self.catalog.tags.get(name, tenant) is not None:
            tagged = name if ":" in name else f"{name}:latest"
            return self.catalog.tags.remove(tagged, tenant) or ""
        if tenant != "default" and is_reference(name):
            # Pulled images are shared: only the operator forgets one.
            raise ForbiddenError(f"forgetting the pulled image {name!r} needs the admin token")
        if is_reference(name) and await asyncio.to_thread(forget_pulled, self.catalog.layers, name):
            return name
        raise NotFoundError(f"image {name!r} does not exist; `stockade image ls` lists the images")

    async def collect_garbage(self, min_age: float) -> GcResult:
        """Remove the layers no image or sandbox needs that are older than ``min_age`` s."""
        # Paused sandboxes and snapshots mount their layers again when they come back.
        in_use = await self.snapshots.layers_in_use()
        return await asyncio.to_thread(collect, self.catalog, min_age=min_age, in_use=in_use)

    async def put_context(self, digest: str, chunks: AsyncIterable[bytes]) -> None:
        """Keep the files of a copy step: a tar whose SHA-256 must be ``digest``. One that
        is already here is kept as it is, and ``chunks`` is then not read."""
        path = self.builder.context_path(digest)
        if path.exists():
            return
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        h = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:  # noqa: ASYNC230  (chunks are written as they come)
                async for chunk in chunks:
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

    async def has_context(self, digest: str) -> bool:
        """Whether the files of a copy step named by ``digest`` are uploaded."""
        return await asyncio.to_thread(self.builder.context_path(digest).exists)
