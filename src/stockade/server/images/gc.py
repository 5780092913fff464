"""``stockade image gc``: remove the layers no image or sandbox needs, and say how much.

Kept: the layers of every named image, of the built-in images made from recipes, of every
pulled registry image, and of every overlay mounted on this host (a running sandbox's
image, whichever server started it); the base images are not layers of the store and are
never touched. Everything else in the layer store goes: unnamed build results and the
layers only they used, and the uploaded files of copy steps. Entries younger than
``min_age`` are kept, so a build running meanwhile keeps what it has just made.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .built import BuiltImage, load_built
from .catalog import ImageCatalog
from .oci.image import pulled_images

__all__ = ["GcResult", "collect"]


@dataclass(frozen=True)
class GcResult:
    removed: int  # layers and files removed
    freed: int  # bytes


def _mounted_lowerdirs() -> set[Path]:
    found: set[Path] = set()
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[2] == "overlay":
                for opt in fields[3].split(","):
                    if opt.startswith("lowerdir="):
                        found |= {Path(p) for p in opt.removeprefix("lowerdir=").split(":")}
    return found


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def collect(
    catalog: ImageCatalog, *, min_age: float = 60.0, in_use: Iterable[Path] = ()
) -> GcResult:
    """Blocking: run it in a thread. ``in_use``: layers that nothing mounts right now but
    that must stay (those of paused sandboxes and of snapshots)."""
    store = catalog.layers.root
    keep: set[Path] = set(_mounted_lowerdirs()) | set(in_use)
    kept_builds: set[str] = set()
    for image_id, _when in catalog.tags.all(tenant=None).values():  # every tenant's names
        built = load_built(catalog.builds, image_id)
        if built is not None:
            keep |= set(built.lowerdirs)
            kept_builds.add(built.key)
    for name in catalog.names():
        made = catalog.recipe_image(name) if catalog.is_recipe(name) else None
        if made is not None:
            keep |= set(made.lowerdirs)
            kept_builds.add(made.key)
    for pulled in pulled_images(catalog.layers):
        keep |= set(pulled.layers)
    cutoff = time.time() - min_age
    removed = freed = 0

    def drop(path: Path) -> None:
        nonlocal removed, freed
        with contextlib.suppress(OSError):
            if path.lstat().st_mtime > cutoff:
                return
            size = _size(path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
            freed += size

    for layer in sorted(store.iterdir()) if store.is_dir() else []:
        if layer.name.startswith(("build-", "sha256-")) and layer not in keep:
            drop(layer)
    for record in sorted(catalog.builds.glob("*.json")) if catalog.builds.is_dir() else []:
        with contextlib.suppress(OSError, ValueError, KeyError):
            built = BuiltImage.from_json(json.loads(record.read_text()))
            if built.key not in kept_builds and not all(p.is_dir() for p in built.lowerdirs):
                drop(record)
    contexts = catalog.layers.root.parent / "contexts"
    for item in sorted(contexts.glob("*.tar")) if contexts.is_dir() else []:
        drop(item)
    return GcResult(removed, freed)
