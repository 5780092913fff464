"""The one encoding of the API's streamed answers (``application/x-ndjson``)."""

from __future__ import annotations

import json

__all__ = ["line"]


def line(obj: object) -> bytes:
    """One event: compact JSON and a newline."""
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()
