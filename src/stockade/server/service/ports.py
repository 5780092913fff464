"""What the port proxy needs to reach a sandbox's exposed port."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PortTarget"]


@dataclass(frozen=True)
class PortTarget:
    """Where an exposed sandbox port is reached, and who may reach it.

    ``host`` is the sandbox's address (e.g. ``10.213.0.2``); ``public`` means the port was
    exposed with ``public=True`` and needs no access token.
    """

    host: str
    port: int
    public: bool
    access_token: str
