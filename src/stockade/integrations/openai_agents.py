"""OpenAI Agents SDK function tools that run commands and code in a Stockade sandbox.

``pip install 'stockade[openai-agents]'``. :class:`SandboxTools` holds ``FunctionTool`` s
(``run_command``, ``run_python``, ``write_file``, ``read_file``) for
``Agent(tools=...)``, with strict JSON schemas. They share one sandbox, made on the first
call and terminated when the tool set closes (``async with``/``with``, or
:meth:`SandboxTools.aclose`); the server ends it after ``idle_timeout`` seconds without a
call if nobody does.

Example::

    from agents import Agent, Runner
    from stockade.integrations.openai_agents import SandboxTools

    async with SandboxTools(idle_timeout=120) as sandbox:
        agent = Agent(name="coder", tools=sandbox.tools)
        result = await Runner.run(agent, "How many CPUs does the sandbox have?")
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from stockade.integrations._session import (
    TOOL_DESCRIPTIONS,
    TOOL_NAMES,
    ManagedSandbox,
    missing_extra,
    tool_schema,
)

try:
    from agents import FunctionTool
    from agents.tool_context import ToolContext
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("openai-agents", "openai-agents") from exc

__all__ = ["SandboxTools", "sandbox_function_tools"]


def sandbox_function_tools(sandbox: ManagedSandbox) -> list[FunctionTool]:
    """The four function tools, all on ``sandbox`` (whose lifetime stays the caller's).

    Example::

        box = ManagedSandbox()
        agent = Agent(name="coder", tools=sandbox_function_tools(box))
    """

    def make(name: str) -> FunctionTool:
        async def invoke(ctx: ToolContext[Any], raw: str) -> str:
            # The model's arguments arrive as JSON text; bad JSON is the model's to fix.
            try:
                args = json.loads(raw) if raw else {}
            except ValueError as exc:
                return f"error: the arguments of {name} are not JSON: {exc}"
            # The sandbox's calls are sync; a worker thread keeps the event loop free.
            return await asyncio.to_thread(sandbox.call_tool, name, args)

        return FunctionTool(
            name=name,
            description=TOOL_DESCRIPTIONS[name],
            params_json_schema=tool_schema(name),
            on_invoke_tool=invoke,
            strict_json_schema=True,
        )

    return [make(name) for name in TOOL_NAMES]


class SandboxTools:
    """OpenAI Agents function tools on one Stockade sandbox whose lifetime this manages.

    Takes a :class:`~stockade.integrations.ManagedSandbox`, or its arguments (``image``,
    ``idle_timeout``, ``timeout``, ``command_timeout``, ``max_output``,
    ``create_options``, ``client``, ``url``, ``token``) to make one. ``tools`` is the list
    to give ``Agent(tools=...)``.

    Example::

        async with SandboxTools(create_options={"block_network": True}) as sandbox:
            agent = Agent(name="coder", tools=sandbox.tools)
    """

    def __init__(self, sandbox: ManagedSandbox | None = None, **options: Any) -> None:
        self.sandbox = sandbox if sandbox is not None else ManagedSandbox(**options)
        self.tools: list[FunctionTool] = sandbox_function_tools(self.sandbox)

    def __repr__(self) -> str:
        return f"<SandboxTools {self.sandbox!r}>"

    def close(self) -> None:
        """Terminate the sandbox (if a tool started one)."""
        self.sandbox.close()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await asyncio.to_thread(self.sandbox.close)

    def __enter__(self) -> SandboxTools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SandboxTools:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
