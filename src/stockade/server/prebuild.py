"""Build the agent, the base images and the built-in images ahead of time.

``python -m stockade.server.prebuild NAME…`` (no name: all of them)

``make run`` and ``make test`` use this so that the first sandbox does not wait for a
debootstrap or a build. Already-built images cost nothing.

A built-in image (``code-interpreter``) is made by the image builder in gVisor sandboxes,
as the server would make it; here by a builder of its own, with a throwaway data directory
and no sandbox networking, so that it never meets a running server's sandboxes. Its wheels
are downloaded first in any case: test servers build the image again in caches of their
own, from the machine's wheels.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from .config import DEFAULT_CACHE_DIR, ServerConfig
from .images.catalog import ImageCatalog
from .images.wheelhouse import ensure_wheelhouse
from .runtime.agent_layer import ensure_agent_layer
from .service.recipes import RECIPE_NAMES, WHEELHOUSES
from .service.wiring import Services, open_services


def _say(name: str) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(f"  [{name}] {line}", flush=True)

    return say


async def _prebuild(names: list[str]) -> int:
    cache = Path(os.environ.get("STOCKADE_CACHE_DIR") or DEFAULT_CACHE_DIR)
    layer = await ensure_agent_layer(cache)
    print(f"agent: {layer}")
    catalog = ImageCatalog(cache)
    for name in names or [*catalog.names(), *RECIPE_NAMES]:
        if name in RECIPE_NAMES:
            if not await _prebuild_recipe(cache, name):
                return 1
            continue
        info = catalog.info(name)
        if info.ready:
            print(f"image {name}: ready ({info.size_mib} MiB)")
            continue
        job = catalog.start_build(name)
        async for line in job.follow():
            _say(name)(line)
        if job.error:
            print(f"error: building image {name} failed: {job.error}", file=sys.stderr)
            return 1
    return 0


async def _prebuild_recipe(cache: Path, name: str) -> bool:
    say = _say(name)
    try:
        for wheelhouse in WHEELHOUSES.get(name, ()):
            path = await ensure_wheelhouse(cache, wheelhouse, on_log=say)
            print(f"wheelhouse {wheelhouse.dirname}: ready ({path})")
        async with _services(cache) as services:
            info = services.images.info(name)
            if not info.ready:
                info = await services.images.ensure(name, say)
    except Exception as exc:
        print(f"error: building image {name} failed: {exc}", file=sys.stderr)
        return False
    print(f"image {name}: ready ({info.size_mib} MiB)")
    return True


@contextlib.asynccontextmanager
async def _services(cache: Path) -> AsyncIterator[Services]:
    """The server's own wiring over a throwaway data directory, without sandbox networking
    or pools, so that it never meets a running server's sandboxes."""
    data = Path(tempfile.mkdtemp(prefix="stockade-prebuild-"))
    config = ServerConfig.load(data_dir=data, cache_dir=cache, network=False, pools="")
    try:
        async with open_services(config) as services:
            yield services
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main() -> None:
    raise SystemExit(asyncio.run(_prebuild(sys.argv[1:])))


if __name__ == "__main__":
    main()
