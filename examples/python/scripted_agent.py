"""An agent loop over Stockade's LangChain tools, with a script in place of the model.

A chat model answers each turn with tool calls; the loop runs them and sends the results
back, until the model answers in words. Here the "model" is a list of turns written in
advance, the last of which reads what the tools returned, so the loop is exactly the one
a real model would drive (swap ``ScriptedModel`` for ``ChatOpenAI(...).bind_tools(tools)``
and nothing else changes), and it runs with no API key.

Run it against a Stockade server (``make run``, or STOCKADE_URL and STOCKADE_TOKEN)::

    pip install 'stockade[langchain]'
    python examples/python/scripted_agent.py
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool

from stockade.integrations.langchain import SandboxToolkit

Turn = Callable[[Sequence[BaseMessage]], AIMessage]


def call(name: str, **args: str) -> dict[str, object]:
    """A tool call as a chat model sends it."""
    return {"name": name, "args": args, "id": f"call-{name}-{len(args)}", "type": "tool_call"}


def answer_from_history(history: Sequence[BaseMessage]) -> AIMessage:
    """The last turn: read the sum that run_python printed, as a model would."""
    last = history[-1]
    assert isinstance(last, ToolMessage)
    found = re.search(r"total=(\d+)", str(last.content))
    total = found.group(1) if found else "unknown"
    return AIMessage(content=f"The primes below 100 add up to {total}.")


SCRIPT: list[Turn] = [
    lambda history: AIMessage(
        content="",
        tool_calls=[
            call(
                "write_file",
                path="/work/primes.py",
                content=(
                    "def primes(n):\n"
                    "    return [p for p in range(2, n) if all(p % d for d in range(2, p))]\n"
                ),
            )
        ],
    ),
    lambda history: AIMessage(
        content="", tool_calls=[call("run_command", command="python3 -m py_compile primes.py")]
    ),
    lambda history: AIMessage(
        content="",
        tool_calls=[
            call(
                "run_python",
                code="import sys; sys.path.insert(0, '/work')\n"
                "from primes import primes\nprint(f'total={sum(primes(100))}')",
            )
        ],
    ),
    answer_from_history,
]


class ScriptedModel:
    """Stands in for a chat model: each ``invoke`` plays the next turn of the script."""

    def __init__(self, script: Sequence[Turn]) -> None:
        self._turns = iter(script)

    def invoke(self, history: Sequence[BaseMessage]) -> AIMessage:
        return next(self._turns)(history)


def run_agent(model: ScriptedModel, tools: Sequence[BaseTool], task: str) -> str:
    """The agent loop: ask the model, run the tools it calls, repeat until it answers."""
    by_name = {tool.name: tool for tool in tools}
    history: list[BaseMessage] = [HumanMessage(content=task)]
    for _ in range(10):  # a bound, as every agent loop needs
        message = model.invoke(history)
        history.append(message)
        if not message.tool_calls:
            return str(message.content)
        for tool_call in message.tool_calls:
            result = by_name[tool_call["name"]].invoke(tool_call)  # a ToolMessage
            print(f"-> {tool_call['name']}: {str(result.content).strip()[:200]}")
            history.append(result)
    raise RuntimeError("the agent did not finish in 10 turns")


def main() -> int:
    # The sandbox is made on the first tool call and terminated when the block ends.
    with SandboxToolkit(idle_timeout=120, create_options={"workdir": "/work"}) as toolkit:
        answer = run_agent(ScriptedModel(SCRIPT), toolkit.get_tools(), "Sum the primes below 100.")
    print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
