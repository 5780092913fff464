"""LangChain tools that run commands and code in a Stockade sandbox.

``pip install 'stockade[langchain]'`` (it needs ``langchain-core`` only). A
:class:`SandboxToolkit` is a LangChain ``BaseToolkit``: ``get_tools()`` gives
``StructuredTool`` s (``run_command``, ``run_python``, ``write_file``, ``read_file``) that
work with ``invoke``/``ainvoke``, tool calls from a chat model, and any agent that takes
LangChain tools. They share one sandbox, made on the first call and terminated when the
toolkit closes (``with`` block, or :meth:`SandboxToolkit.close`); the server ends it after
``idle_timeout`` seconds without a call if nobody does.

Example::

    from stockade.integrations.langchain import SandboxToolkit

    with SandboxToolkit(idle_timeout=120) as toolkit:
        run_command, run_python, *_ = toolkit.get_tools()
        print(run_command.invoke({"command": "echo hi"}))
        print(run_python.invoke({"code": "6 * 7"}))
"""

from __future__ import annotations

import asyncio
from typing import Any

from stockade.integrations._session import (
    TOOL_DESCRIPTIONS,
    TOOL_NAMES,
    ManagedSandbox,
    missing_extra,
    tool_schema,
)

try:
    from langchain_core.tools import BaseTool, BaseToolkit, StructuredTool
    from pydantic import ConfigDict
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise missing_extra("langchain", "langchain-core") from exc

__all__ = ["SandboxToolkit", "sandbox_tools"]


def sandbox_tools(sandbox: ManagedSandbox) -> list[BaseTool]:
    """The four LangChain tools, all on ``sandbox`` (whose lifetime stays the caller's).

    Example::

        box = ManagedSandbox(image="python")
        tools = sandbox_tools(box)
        ...
        box.close()
    """

    def make(name: str) -> BaseTool:
        def run(**kwargs: Any) -> str:
            return sandbox.call_tool(name, kwargs)

        async def arun(**kwargs: Any) -> str:
            # The sandbox's calls are sync; a worker thread keeps the event loop free.
            return await asyncio.to_thread(sandbox.call_tool, name, kwargs)

        return StructuredTool.from_function(
            func=run,
            coroutine=arun,
            name=name,
            description=TOOL_DESCRIPTIONS[name],
            args_schema=tool_schema(name),
        )

    return [make(name) for name in TOOL_NAMES]


class SandboxToolkit(BaseToolkit):
    """LangChain tools on one Stockade sandbox whose lifetime the toolkit manages.

    Takes a :class:`~stockade.integrations.ManagedSandbox`, or its arguments (``image``,
    ``idle_timeout``, ``timeout``, ``command_timeout``, ``max_output``,
    ``create_options``, ``client``, ``url``, ``token``) to make one.

    Example::

        with SandboxToolkit(image="code-interpreter") as toolkit:
            agent = create_agent(model, tools=toolkit.get_tools())
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    sandbox: ManagedSandbox

    def __init__(self, sandbox: ManagedSandbox | None = None, **options: Any) -> None:
        box = sandbox if sandbox is not None else ManagedSandbox(**options)
        # mypy reads the pydantic fields of BaseToolkit's own class only, not this one's.
        super().__init__(sandbox=box)  # type: ignore[call-arg]

    def get_tools(self) -> list[BaseTool]:
        """``run_command``, ``run_python``, ``write_file`` and ``read_file``."""
        return sandbox_tools(self.sandbox)

    def close(self) -> None:
        """Terminate the sandbox (if a tool started one)."""
        self.sandbox.close()

    def __enter__(self) -> SandboxToolkit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
