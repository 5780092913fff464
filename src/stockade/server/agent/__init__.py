"""The in-sandbox agent: its C sources, how they are built, and the codec of its protocol.

See docs/agent-protocol.md. The agent's C sources (``main.c`` and the other ``*.c`` and
``*.h`` files) ship inside this package; the server compiles them once per source version
into its cache with :func:`agent_binary`.
"""

from __future__ import annotations

from .build import AgentBuildError, agent_binary, agent_sources, ensure_agent, sources_digest

__all__ = [
    "AgentBuildError",
    "agent_binary",
    "agent_sources",
    "ensure_agent",
    "sources_digest",
]
