"""A pydantic-ai toolset that runs commands and code in a Stockade sandbox.

``pip install 'stockade[pydantic-ai]'`` (``pydantic-ai-slim`` is enough).
:class:`SandboxToolset` gives an agent ``run_command``, ``run_python``, ``write_file`` and
``read_file`` on one sandbox. Like pydantic-ai's MCP toolsets it is entered by each agent
run (or by the caller, around several runs); the sandbox is made on the first tool call
and terminated when the outermost ``async with`` ends, and the server ends it after
``idle_timeout`` seconds without a call if nobody does. Arguments the model gets wrong are
sent back to it for a retry, as pydantic-ai does for its own tools.

Example::

    from pydantic_ai import Agent
    from stockade.integrations.pydantic_ai import SandboxToolset

    toolset = SandboxToolset(idle_timeout=120)
    agent = Agent("openai:gpt-5", toolsets=[toolset])
    async with toolset:  # one sandbox for both runs
        await agent.run("Write /tmp/a.txt with the word hi")
        await agent.run("What does /tmp/a.txt say?")
"""

from __future__ import annotations

import asyncio
from typing import Any

from stockade.integrations._session import (
    TOOL_DESCRIPTIONS,
    TOOL_NAMES,
    TOOL_PARAMS,
    ManagedSandbox,
    missing_extra,
    tool_schema,
)

try:
    from pydantic_ai import RunContext
    from pydantic_ai.tools import ToolDefinition
    from pydantic_ai.toolsets import AbstractToolset, ToolsetTool
    from pydantic_core import SchemaValidator, core_schema
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("pydantic-ai", "pydantic-ai-slim") from exc

__all__ = ["SandboxToolset"]


def _validator(name: str) -> SchemaValidator:
    """Checks a call's arguments before it runs: every parameter a string, no others."""
    fields = {
        param: core_schema.typed_dict_field(core_schema.str_schema(strict=True))
        for param in TOOL_PARAMS[name]
    }
    return SchemaValidator(core_schema.typed_dict_schema(fields, extra_behavior="forbid"))


_VALIDATORS = {name: _validator(name) for name in TOOL_NAMES}


class SandboxToolset(AbstractToolset[Any]):
    """pydantic-ai tools on one Stockade sandbox whose lifetime the toolset manages.

    Takes a :class:`~stockade.integrations.ManagedSandbox` (``sandbox=``), or its
    arguments (``image``, ``idle_timeout``, ``timeout``, ``command_timeout``,
    ``max_output``, ``create_options``, ``client``, ``url``, ``token``) to make one;
    ``id`` names the toolset among an agent's others, ``max_retries`` is how often the
    model may retry a call with bad arguments.

    A closed toolset (its outermost ``async with`` ended) makes a fresh sandbox when it
    is entered again, so one toolset serves run after run.

    Example::

        agent = Agent(model, toolsets=[SandboxToolset(image="code-interpreter")])
    """

    def __init__(
        self,
        sandbox: ManagedSandbox | None = None,
        *,
        id: str | None = None,
        max_retries: int = 1,
        **options: Any,
    ) -> None:
        self._options = options
        self.sandbox = sandbox if sandbox is not None else ManagedSandbox(**options)
        self._own_sandbox = sandbox is None
        self._id = id
        self.max_retries = max_retries
        self._entered = 0
        self._enter_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<SandboxToolset {self.sandbox!r}>"

    @property
    def id(self) -> str | None:
        return self._id

    async def __aenter__(self) -> SandboxToolset:
        async with self._enter_lock:
            if self._entered == 0 and self.sandbox.closed and self._own_sandbox:
                self.sandbox = ManagedSandbox(**self._options)
            self._entered += 1
        return self

    async def __aexit__(self, *args: Any) -> bool | None:
        async with self._enter_lock:
            self._entered -= 1
            if self._entered == 0:
                await self.aclose()
        return None

    async def aclose(self) -> None:
        """Terminate the sandbox (if a tool started one)."""
        await asyncio.to_thread(self.sandbox.close)

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        return {
            name: ToolsetTool(
                toolset=self,
                tool_def=ToolDefinition(
                    name=name,
                    description=TOOL_DESCRIPTIONS[name],
                    parameters_json_schema=tool_schema(name),
                ),
                max_retries=self.max_retries,
                args_validator=_VALIDATORS[name],
            )
            for name in TOOL_NAMES
        }

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> str:
        # The sandbox's calls are sync; a worker thread keeps the event loop free.
        return await asyncio.to_thread(self.sandbox.call_tool, name, tool_args)
