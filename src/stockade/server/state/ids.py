"""Identifiers of the records the server keeps: ``<prefix>-<16 hex digits>``."""

from __future__ import annotations

import secrets

__all__ = ["new_id"]


def new_id(prefix: str) -> str:
    """A new ID such as ``sb-3f9a0c1d2e4b5a69``: 64 random bits, so IDs never collide and
    cannot be guessed from one another."""
    return f"{prefix}-{secrets.token_hex(8)}"
