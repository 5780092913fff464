"""The framework adapters of stockade.integrations against a real server and real runsc.

Each test drives the framework's own tool objects the way that framework does (LangChain's
``invoke``/``ainvoke`` with tool calls, the OpenAI Agents ``on_invoke_tool`` with JSON
text, smolagents' executor protocol, a pydantic-ai ``Agent`` run by a scripted
``FunctionModel``), with no model and no network but the test server. Each checks that
the sandbox is made on the first call only and terminated when the adapter closes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from agents.tool_context import ToolContext
from langchain_core.messages import ToolMessage
from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from smolagents import CodeAgent
from smolagents.default_tools import FinalAnswerTool
from smolagents.models import ChatMessage, MessageRole, Model
from smolagents.monitoring import AgentLogger, LogLevel
from smolagents.utils import AgentError

from stockade import Sandbox
from stockade.integrations import ManagedSandbox
from stockade.integrations.langchain import SandboxToolkit
from stockade.integrations.openai_agents import SandboxTools
from stockade.integrations.pydantic_ai import SandboxToolset
from stockade.integrations.smolagents import StockadeExecutor

from .conftest import REPO, LiveServer

# The code-interpreter image is built on first use, in the fixture's time.
pytestmark = [pytest.mark.runsc, pytest.mark.timeout(240, func_only=True)]


@pytest.fixture(scope="module", autouse=True)
def code_image(server: LiveServer) -> Iterator[None]:
    """Build (or find) the code-interpreter image before the tests' time limit starts."""
    Sandbox.create(image="code-interpreter", timeout=60).terminate()
    yield


def assert_terminated(sandbox_id: str | None) -> None:
    assert sandbox_id is not None
    assert Sandbox.from_id(sandbox_id).info().status == "terminated"


def test_langchain_tools_share_one_lazy_sandbox_and_close_it() -> None:
    with SandboxToolkit(idle_timeout=60) as toolkit:
        tools = {tool.name: tool for tool in toolkit.get_tools()}
        assert toolkit.sandbox.sandbox_id is None  # nothing started before a call

        out = tools["run_command"].invoke({"command": "echo out; echo err >&2; exit 3"})
        assert out.splitlines()[0] == "exit_code: 3"
        assert "stdout:\nout\n" in out and "stderr:\nerr\n" in out
        sandbox_id = toolkit.sandbox.sandbox_id

        # A tool call from a chat model comes back as a ToolMessage answering that call.
        message = tools["write_file"].invoke(
            {
                "type": "tool_call",
                "id": "call-7",
                "name": "write_file",
                "args": {"path": "/tmp/notes/a.txt", "content": "héllo\n"},
            }
        )
        assert isinstance(message, ToolMessage) and message.tool_call_id == "call-7"
        assert message.content == "wrote 7 bytes to /tmp/notes/a.txt"
        assert tools["read_file"].invoke({"path": "/tmp/notes/a.txt"}) == "héllo\n"
        missing = tools["read_file"].invoke({"path": "/tmp/nope"})
        assert missing.startswith("error: ") and "/tmp/nope" in missing
        assert toolkit.sandbox.sandbox_id == sandbox_id  # still the same sandbox
    assert_terminated(sandbox_id)


async def test_langchain_async_python_keeps_state() -> None:
    with SandboxToolkit() as toolkit:
        run_python = next(t for t in toolkit.get_tools() if t.name == "run_python")
        first = await run_python.ainvoke({"code": "x = 6 * 7\nprint('set')\nx"})
        assert first == "stdout:\nset\n\nresult: 42"
        assert await run_python.ainvoke({"code": "x + 1"}) == "result: 43"
        failed = await run_python.ainvoke({"code": "1 / 0"})
        assert failed.startswith("error: ZeroDivisionError: division by zero")
        assert "\x1b[" not in failed  # the kernel's colours are stripped for the model
        sandbox_id = toolkit.sandbox.sandbox_id
    assert_terminated(sandbox_id)
    assert toolkit.sandbox.closed


async def test_openai_agents_function_tools() -> None:
    async with SandboxTools(max_output=400) as sandbox:
        tools = {tool.name: tool for tool in sandbox.tools}
        assert set(tools) == {"run_command", "run_python", "write_file", "read_file"}
        assert tools["run_command"].params_json_schema["additionalProperties"] is False

        async def call(name: str, arguments: str) -> Any:
            # What the Runner does with a function call from the model.
            ctx = ToolContext(
                context=None, tool_name=name, tool_call_id="call-1", tool_arguments=arguments
            )
            return await tools[name].on_invoke_tool(ctx, arguments)

        out = await call("run_command", json.dumps({"command": "seq 1 5000"}))
        # 5000 lines of output, cut to the bound with the head and the tail kept.
        assert len(out) < 600 and "characters cut" in out
        assert "stdout:\n1\n2\n" in out and out.endswith("4999\n5000\n")

        assert "bytes to /w/s.py" in await call(
            "write_file", json.dumps({"path": "/w/s.py", "content": "print(sum(range(10)))"})
        )
        ran = await call("run_command", json.dumps({"command": "python3 /w/s.py"}))
        assert ran == "exit_code: 0\nstdout:\n45\n"

        # A file of 64 MiB is read only as far as the answer's bound needs.
        await call("run_command", json.dumps({"command": "head -c 64M /dev/zero > /w/big"}))
        big = await call("read_file", json.dumps({"path": "/w/big"}))
        assert len(big) < 600 and "the file is longer" in big

        assert (await call("run_command", "{not json")).startswith("error: the arguments")
        wrong = await call("run_command", json.dumps({"cmd": "ls"}))
        assert "unknown argument 'cmd'" in wrong and "missing argument 'command'" in wrong
        sandbox_id = sandbox.sandbox.sandbox_id
    assert_terminated(sandbox_id)


def test_smolagents_executor_runs_an_agents_protocol() -> None:
    logger = AgentLogger(level=LogLevel.OFF)
    executor = StockadeExecutor([], logger, idle_timeout=60)
    assert executor.sandbox.sandbox_id is None
    # What CodeAgent.run does first: define its tools and state in the interpreter.
    executor.send_tools({"final_answer": FinalAnswerTool()})
    executor.send_variables({"base": 40, "names": ["a", "b"]})

    step = executor("y = base + len(names)\nprint('y is', y)\ny")
    assert (step.output, step.logs, step.is_final_answer) == ("42", "y is 42\n", False)

    with pytest.raises(AgentError, match="ZeroDivisionError"):
        executor("y / 0")
    assert executor("y").output == "42"  # state survives the error

    final = executor("final_answer({'answer': y * 2})")
    assert final.is_final_answer and final.output == {"answer": 84}
    sandbox_id = executor.sandbox.sandbox_id
    executor.cleanup()
    assert_terminated(sandbox_id)


class ScriptedSmolModel(Model):  # type: ignore[misc]  # smolagents is untyped
    """A smolagents model that replies with the given texts in turn."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(model_id="scripted")
        self.replies = list(replies)

    def generate(self, messages: list[ChatMessage], **kwargs: Any) -> ChatMessage:
        return ChatMessage(role=MessageRole.ASSISTANT, content=self.replies.pop(0))


def test_smolagents_code_agent_runs_its_steps_in_the_sandbox() -> None:
    model = ScriptedSmolModel(
        [
            "Thought: build the sequence.\n<code>\nfib = [0, 1]\nfor _ in range(18):\n"
            "    fib.append(fib[-1] + fib[-2])\n"
            "open('/tmp/ran-here', 'w').write('yes')\nprint(len(fib))\n</code>",
            "Thought: answer.\n<code>\nfinal_answer(fib[-1])\n</code>",
        ]
    )
    executor = StockadeExecutor([], AgentLogger(level=LogLevel.OFF), idle_timeout=60)
    with CodeAgent(tools=[], model=model, executor=executor, verbosity_level=LogLevel.OFF) as agent:
        assert agent.run("What is the 20th Fibonacci number?") == 4181
        sandbox_id = executor.sandbox.sandbox_id
        assert sandbox_id is not None
        # The steps ran in the sandbox, not in this process.
        assert Sandbox.from_id(sandbox_id).files.read_text("/tmp/ran-here") == "yes"
    assert_terminated(sandbox_id)


def _scripted(steps: list[ModelResponse]) -> FunctionModel:
    """A model that answers with ``steps`` in turn: an agent loop with no model behind it.
    It records the tool returns and retry prompts the agent sent back."""
    remaining = list(steps)

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        assert {t.name for t in info.function_tools} >= {"run_command", "run_python"}
        return remaining.pop(0)

    return FunctionModel(respond)


async def test_pydantic_ai_agent_run_uses_the_toolset() -> None:
    toolset = SandboxToolset(idle_timeout=60, max_retries=2)
    model = _scripted(
        [
            ModelResponse(parts=[ToolCallPart("run_command", {"command": "echo hi > /tmp/x"})]),
            ModelResponse(parts=[ToolCallPart("run_python", {"code": 5}, tool_call_id="bad")]),
            ModelResponse(
                parts=[ToolCallPart("run_python", {"code": "open('/tmp/x').read().upper()"})]
            ),
            ModelResponse(parts=[TextPart("done")]),
        ]
    )
    agent = Agent(model, toolsets=[toolset])
    result = await agent.run("shout the file")
    assert result.output == "done"
    parts = [p for m in result.all_messages() if isinstance(m, ModelRequest) for p in m.parts]
    tool_returns = [p for p in parts if isinstance(p, ToolReturnPart)]
    returns = [p.content for p in tool_returns if p.outcome == "success"]
    assert returns == ["exit_code: 0\nstdout:\n", "result: 'HI\\n'"]
    # The argument that was not a string went back to the model as a retry, unrun.
    retried = [p.tool_call_id for p in tool_returns if p.outcome == "retried"]
    assert retried == ["bad"]
    # The run entered and left the toolset: its sandbox is gone.
    assert toolset.sandbox.closed


def test_an_idle_sandbox_ends_by_itself_and_the_next_call_starts_anew() -> None:
    with ManagedSandbox(image="debian", idle_timeout=2) as box:
        assert box.run_command("echo keep > /root/f").startswith("exit_code: 0")
        first = box.sandbox_id
        deadline = time.monotonic() + 30
        while Sandbox.from_id(first or "").info().status == "running":
            assert time.monotonic() < deadline, "the idle sandbox did not end"
            time.sleep(0.5)
        ended = box.run_command("cat /root/f")
        assert ended.startswith("error: ") and "the next call starts a new one" in ended
        assert box.sandbox_id is None
        fresh = box.run_command("cat /root/f")
        assert fresh.startswith("exit_code: 1") and "No such file" in fresh
        assert box.sandbox_id not in (None, first)
        second = box.sandbox_id
    assert_terminated(second)
    assert box.run_command("true").startswith("error: this sandbox tool set was closed")


def test_the_scripted_agent_example_runs(server: LiveServer) -> None:
    # As a user runs it: its own process, finding the server through the environment.
    example = REPO / "examples" / "python" / "scripted_agent.py"
    env = {**os.environ, "STOCKADE_URL": server.url, "STOCKADE_TOKEN": server.token}
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "-> write_file: wrote 86 bytes to /work/primes.py"
    assert lines[1] == "-> run_command: exit_code: 0"
    assert lines[-1] == "The primes below 100 add up to 1060."
