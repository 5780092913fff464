"""Built images as stored: ``<cache>/layers/builds/<key>.json`` names an image's layers
(top-first) and config. Written by the builder, read by the catalog to start sandboxes."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .resolved import ResolvedImage

__all__ = ["BuiltImage", "load_built", "tree_size", "write_json_atomic"]


@dataclass
class BuiltImage:
    """A built image: its layers (top-first, for ``lowerdir``) and config."""

    key: str
    lowerdirs: list[Path]
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    created_at: float = 0.0
    size: int = 0  # bytes in all its layers
    # Whose build it is: another tenant's image answers as one that does not exist.
    tenant: str = "default"

    @property
    def id(self) -> str:
        return f"img-{self.key[:16]}"

    def resolved(self) -> ResolvedImage:
        return ResolvedImage(
            tuple(self.lowerdirs), dict(self.env), self.workdir, self.user,
            (*(self.entrypoint or ()), *(self.cmd or ())),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "lowerdirs": [str(p) for p in self.lowerdirs], "env": self.env,
            "workdir": self.workdir, "user": self.user, "entrypoint": self.entrypoint,
            "cmd": self.cmd, "created_at": self.created_at, "size": self.size,
            "tenant": self.tenant,
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BuiltImage:
        return cls(
            key=str(data["key"]), lowerdirs=[Path(p) for p in data["lowerdirs"]],
            env=dict(data.get("env") or {}), workdir=data.get("workdir"),
            user=data.get("user"), entrypoint=data.get("entrypoint"), cmd=data.get("cmd"),
            created_at=float(data.get("created_at") or 0.0),
            size=int(data.get("size") or 0), tenant=str(data.get("tenant") or "default"),
        )  # fmt: skip


def load_built(builds: Path, image_id: str) -> BuiltImage | None:
    """A built image by ID (``img-<16 hex>``) or full key, if all its layers still exist."""
    key = image_id.removeprefix("img-")
    if not re.fullmatch(r"[0-9a-f]{16,64}", key):
        return None
    for path in sorted(builds.glob(f"{key}*.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            image = BuiltImage.from_json(json.loads(path.read_text()))
            if all(p.is_dir() for p in image.lowerdirs):
                return image
    return None


def tree_size(roots: Sequence[Path]) -> int:
    """Bytes in the regular files under ``roots`` (hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                with contextlib.suppress(OSError):
                    st = os.lstat(os.path.join(dirpath, name))
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_blocks * 512
    return total


def write_json_atomic(path: Path, value: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
