"""Image names with versions: ``agent:v1`` → a built image's ID.

Tagging ``name:tag`` also moves ``name:latest``, so ``latest`` always follows the newest
build, as E2B users expect of templates. Stored as one JSON file in the data directory,
replaced atomically; every change happens under a lock.

Names are per tenant: the default tenant's are stored as ``name:tag`` (as before tenants
existed), another tenant's as ``tenant/name:tag``, which no name a caller gives can spell
(a name has no ``/``).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from ...errors import InvalidArgumentError

__all__ = ["DEFAULT", "TagStore", "parse_tag"]

DEFAULT = "default"  # the tenant whose names are stored bare

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def parse_tag(text: str) -> tuple[str, str]:
    """``name:tag`` (``name`` alone means ``name:latest``); raises for anything else."""
    name, sep, tag = text.partition(":")
    tag = tag if sep else "latest"
    if not _NAME.match(name) or not _TAG.match(tag):
        raise InvalidArgumentError(
            f"invalid image name {text!r}: use name:tag with a lower-case name and a tag of "
            "letters, digits, '_', '.' or '-', e.g. agent:v1"
        )
    return name, tag


class TagStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def get(self, text: str, tenant: str = DEFAULT) -> str | None:
        """The image ID ``tenant`` tagged ``text``, or None (also for text that is no tag)."""
        try:
            name, tag = parse_tag(text)
        except InvalidArgumentError:
            return None
        entry = self._read().get(_key(tenant, name, tag))
        return str(entry["id"]) if isinstance(entry, dict) and "id" in entry else None

    def set(self, text: str, image_id: str, tenant: str = DEFAULT) -> str:
        name, tag = parse_tag(text)
        now = time.time()
        with self._lock:
            data = self._read()
            data[_key(tenant, name, tag)] = {"id": image_id, "created_at": now}
            data[_key(tenant, name, "latest")] = {"id": image_id, "created_at": now}
            self._write(data)
        return f"{name}:{tag}"

    def remove(self, text: str, tenant: str = DEFAULT) -> str | None:
        """Untag; returns the ID it named. ``latest`` falls back to the newest other tag."""
        name, tag = parse_tag(text)
        prefix, latest = _key(tenant, name, ""), _key(tenant, name, "latest")
        with self._lock:
            data = self._read()
            entry = data.pop(_key(tenant, name, tag), None)
            if entry is None:
                return None
            if tag != "latest" and data.get(latest, {}).get("id") == entry["id"]:
                others = [
                    (v["created_at"], v["id"]) for k, v in data.items()
                    if k.startswith(prefix) and k != latest
                ]  # fmt: skip
                if others:
                    data[latest] = {"id": max(others)[1], "created_at": max(others)[0]}
                else:
                    data.pop(latest, None)
            self._write(data)
        return str(entry["id"])

    def all(self, tenant: str | None = DEFAULT) -> dict[str, tuple[str, float]]:
        """``name:tag`` → (image ID, when tagged), of ``tenant`` (None: of every tenant,
        keyed as stored)."""
        out = {}
        for k, v in self._read().items():
            if not (isinstance(v, dict) and "id" in v):
                continue
            owner, sep, name = k.rpartition("/")
            if tenant is None:
                out[k] = (str(v["id"]), float(v.get("created_at", 0)))
            elif (owner if sep else DEFAULT) == tenant:
                out[name] = (str(v["id"]), float(v.get("created_at", 0)))
        return out


def _key(tenant: str, name: str, tag: str) -> str:
    return f"{name}:{tag}" if tenant == DEFAULT else f"{tenant}/{name}:{tag}"
