"""The agent as a read-only image layer: ``/.stockade/agent`` in every sandbox.

The layer sits on top of the image's layers in each sandbox's overlay, so the agent is
present in every image without writing into the sandbox's own upper directory (which a
filesystem snapshot captures) and without a bind mount.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from ..agent.build import agent_binary

__all__ = ["AGENT_PATH", "agent_layer", "ensure_agent_layer"]

AGENT_PATH = "/.stockade/agent"


def agent_layer(cache_dir: Path) -> Path:
    """The layer directory holding the current agent build (made once per build)."""
    binary = agent_binary(cache_dir)
    layer = binary.parent / f"layer-{binary.name.rsplit('-', 1)[-1]}"
    if (layer / AGENT_PATH.lstrip("/")).is_file():
        return layer
    tmp = Path(tempfile.mkdtemp(dir=binary.parent, prefix=".layer-"))
    target = tmp / AGENT_PATH.lstrip("/")
    target.parent.mkdir(parents=True)
    os.chmod(target.parent, 0o755)
    os.chmod(tmp, 0o755)
    shutil.copy2(binary, target)
    os.chmod(target, 0o755)
    try:
        os.rename(tmp, layer)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return layer


async def ensure_agent_layer(cache_dir: Path) -> Path:
    return await asyncio.to_thread(agent_layer, cache_dir)
