"""The parts of stockade.integrations that need no server: tool schemas and argument
checks, the text a model gets, bounds, the extras' import errors, and the ``stockade``
command without its extra. (tests/integration/test_integrations.py drives the adapters
against a real server.)"""

from __future__ import annotations

import base64
import importlib
import io
import sys
from importlib import metadata

import PIL.Image
import pytest
from agents.strict_schema import ensure_strict_json_schema

import stockade
from stockade import _cli
from stockade.commands import CommandResult
from stockade.errors import InvalidArgumentError
from stockade.execution import Execution, ExecutionError, Logs, Result
from stockade.integrations import TOOL_NAMES, ManagedSandbox, tool_schema
from stockade.integrations._session import clip

# A port nothing listens on: a test that reached the network would fail loudly.
NOWHERE = "http://127.0.0.1:9"

ADAPTERS = {
    "stockade.integrations.langchain": ("langchain", "langchain_core.tools"),
    "stockade.integrations.openai_agents": ("openai-agents", "agents"),
    "stockade.integrations.smolagents": ("smolagents", "smolagents.remote_executors"),
    "stockade.integrations.pydantic_ai": ("pydantic-ai", "pydantic_ai"),
}


def box(**options: object) -> ManagedSandbox:
    return ManagedSandbox(url=NOWHERE, token="sk_unused", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_schemas_are_strict_as_openai_requires(name: str) -> None:
    schema = tool_schema(name)
    assert ensure_strict_json_schema(tool_schema(name)) == schema
    assert schema["required"] == list(schema["properties"])


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("run_command", {}, "missing argument 'command'"),
        ("run_command", {"command": 3}, "argument 'command' must be a string"),
        ("write_file", {"path": "/a", "content": "x", "mode": 1}, "unknown argument 'mode'"),
        ("rm_rf", {"path": "/"}, "no tool 'rm_rf'; the tools are run_command, run_python"),
        ("run_command", {"command": "  "}, "command must be a non-empty shell command line"),
    ],
)
def test_bad_calls_answer_the_model_without_starting_a_sandbox(
    name: str, args: dict[str, object], expected: str
) -> None:
    managed = box()
    answer = managed.call_tool(name, args)
    assert answer.startswith("error: ") and expected in answer
    assert managed.sandbox_id is None


def test_a_closed_box_refuses_without_reaching_the_server() -> None:
    with box() as managed:
        pass
    assert managed.closed
    answer = managed.call_tool("run_command", {"command": "ls"})
    assert answer.startswith("error: this sandbox tool set was closed")


@pytest.mark.parametrize(
    "options",
    [
        {"idle_timeout": 0},
        {"command_timeout": -1},
        {"max_output": 10},
        {"create_options": {"image": "x"}},
    ],
)
def test_bad_options_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        box(**options)


def test_clip_keeps_head_and_tail_within_the_bound() -> None:
    assert clip("short", 100) == "short"
    text = "".join(f"{i}\n" for i in range(10_000))
    cut = clip(text, 200)
    assert cut.startswith("0\n1\n") and cut.endswith("9998\n9999\n")
    assert len(cut) < 260 and f"{len(text) - 200} characters cut" in cut


def test_command_text() -> None:
    result = CommandResult(["sh"], 137, b"partial", b"x" * 5000, oom=True)
    text = box(max_output=1000).result_text(result)
    assert text.startswith("exit_code: 137\n(the sandbox ran out of memory")
    assert "stdout:\npartial\nstderr:\n" in text and len(text) < 1200


def test_execution_text() -> None:
    ex = Execution(
        results=[
            Result({"image/png": "iVBO", "text/plain": "<Figure>"}),
            Result({"text/plain": "42"}, is_main_result=True),
        ],
        logs=Logs(stdout=["a\n", "b\n"], stderr=["warn\n"]),
        error=ExecutionError("ValueError", "bad", "\x1b[31mTraceback\x1b[0m line 1"),
        timed_out=True,
    )
    assert box(command_timeout=5).execution_text(ex) == (
        "stdout:\na\nb\n\nstderr:\nwarn\n\ndisplayed: text, png\nresult: 42\n"
        "(interrupted after timeout=5s)\nerror: ValueError: bad\nTraceback line 1"
    )
    assert box().execution_text(Execution()) == "(no output)"


def test_smolagents_main_output_follows_e2b() -> None:
    from stockade.integrations.smolagents import StockadeExecutor

    png = io.BytesIO()
    PIL.Image.new("RGB", (3, 2)).save(png, format="PNG")
    image = Result({"image/png": base64.b64encode(png.getvalue()).decode()}, is_main_result=True)
    output = StockadeExecutor._main_output(Execution(results=[image]))
    assert isinstance(output, PIL.Image.Image) and output.size == (3, 2)
    shown = Result({"text/plain": "1"})  # displayed, not the value: not the output
    assert StockadeExecutor._main_output(Execution(results=[shown])) is None


@pytest.mark.parametrize("module", sorted(ADAPTERS))
def test_adapters_export_what_they_define(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert getattr(mod, name).__module__ == module, name


@pytest.mark.parametrize("module", sorted(ADAPTERS))
def test_a_missing_framework_names_the_extra(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    extra, framework = ADAPTERS[module]
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.setitem(sys.modules, framework, None)  # as if it were not installed
    with pytest.raises(ImportError, match=rf"pip install 'stockade\[{extra}\]'"):
        importlib.import_module(module)


def test_the_command_without_its_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_cli, "CLI_MODULES", ("click", "stockade_no_such_module"))
    assert _cli.missing_cli_modules() == ["stockade_no_such_module"]
    with pytest.raises(SystemExit) as exit_:
        _cli.main()
    assert exit_.value.code == 1
    assert "pip install 'stockade[cli]'" in capsys.readouterr().err


def test_one_version_source() -> None:
    # hatch reads src/stockade/_version.py into the metadata that pip installed.
    assert metadata.version("stockade") == stockade.__version__
