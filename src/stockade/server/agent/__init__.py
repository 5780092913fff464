"""The in-sandbox agent: its C source, how it is built, and the codec of its protocol.

See docs/agent-protocol.md. ``stockade-agent.c`` ships inside this package; the server
compiles it once per source version into its cache with :func:`agent_binary`.
"""

from __future__ import annotations

from .build import AgentBuildError, agent_binary, agent_source, ensure_agent

__all__ = ["AgentBuildError", "agent_binary", "agent_source", "ensure_agent"]
