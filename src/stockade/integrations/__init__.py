"""Stockade sandboxes as tools for agent frameworks, each behind an optional extra.

=========================================  ===========================  =================
Module                                     What the framework gets      Install
=========================================  ===========================  =================
``stockade.integrations.langchain``        ``SandboxToolkit`` of tools  ``stockade[langchain]``
``stockade.integrations.openai_agents``    ``SandboxTools`` (function   ``stockade[openai-agents]``
                                           tools)
``stockade.integrations.smolagents``       ``StockadeExecutor`` (a      ``stockade[smolagents]``
                                           ``CodeAgent``'s executor)
``stockade.integrations.pydantic_ai``      ``SandboxToolset``           ``stockade[pydantic-ai]``
=========================================  ===========================  =================

Every adapter drives one :class:`ManagedSandbox`: created on the first tool call, reused
by the later ones (files and Python variables carry over), terminated on ``close()`` or at
the end of a ``with`` block, and ended by the server after ``idle_timeout`` seconds
without a call if nobody closes it. The tools are ``run_command``, ``run_python``,
``write_file`` and ``read_file``; each answers with bounded text for the model.

Importing this package needs none of the frameworks; importing an adapter without its
framework raises ImportError naming the extra to install.

Example::

    from stockade.integrations.langchain import SandboxToolkit

    with SandboxToolkit(idle_timeout=120) as toolkit:
        tools = toolkit.get_tools()  # hand these to a LangChain agent
        print(tools[0].invoke({"command": "echo hi"}))
"""

from stockade.integrations._session import (
    DEFAULT_IMAGE,
    TOOL_DESCRIPTIONS,
    TOOL_NAMES,
    ManagedSandbox,
    tool_schema,
)

__all__ = ["DEFAULT_IMAGE", "TOOL_DESCRIPTIONS", "TOOL_NAMES", "ManagedSandbox", "tool_schema"]
