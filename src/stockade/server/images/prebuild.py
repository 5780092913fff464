"""Build the agent and the base images ahead of time.

``python -m stockade.server.images.prebuild NAME…``

``make run`` and ``make test`` use this so that the first sandbox does not wait for a
debootstrap. Already-built images cost nothing.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from ..config import DEFAULT_CACHE_DIR
from ..runtime.agent_layer import ensure_agent_layer
from .catalog import ImageCatalog


async def _prebuild(names: list[str]) -> int:
    cache = Path(os.environ.get("STOCKADE_CACHE_DIR") or DEFAULT_CACHE_DIR)
    layer = await ensure_agent_layer(cache)
    print(f"agent: {layer}")
    catalog = ImageCatalog(cache)
    for name in names or catalog.names():
        info = catalog.info(name)
        if info.ready:
            print(f"image {name}: ready ({info.size_mib} MiB)")
            continue
        job = catalog.start_build(name)
        async for line in job.follow():
            print(f"  [{name}] {line}", flush=True)
        if job.error:
            print(f"error: building image {name} failed: {job.error}", file=sys.stderr)
            return 1
    return 0


def main() -> None:
    raise SystemExit(asyncio.run(_prebuild(sys.argv[1:])))


if __name__ == "__main__":
    main()
