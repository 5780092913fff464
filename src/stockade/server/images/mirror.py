"""Which Debian mirror to use: the one this host's own apt sources name."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["debian_mirror"]

_FALLBACK = "http://deb.debian.org/debian"


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """``$STOCKADE_DEBIAN_MIRROR``, else the first main Debian archive in apt's sources."""
    override = os.environ.get("STOCKADE_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    candidates: list[str] = []
    sources_d = apt_dir / "sources.list.d"
    for f in sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []:
        for m in re.finditer(r"^URIs:\s*(\S+)", f.read_text(errors="replace"), re.M):
            candidates.append(m.group(1))
    lists = [apt_dir / "sources.list", *sorted(sources_d.glob("*.list"))]
    for f in lists:
        if f.is_file():
            for m in re.finditer(
                r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", f.read_text(errors="replace"), re.M
            ):
                candidates.append(m.group(1))
    for uri in candidates:
        # Skip the security archive and third-party repositories.
        if "security" not in uri and uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return _FALLBACK
