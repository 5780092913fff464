"""``stockade code`` and ``stockade code-context``: rendering, the prompt, and the commands."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from stockade import Client, ExecutionError, NotFoundError, Sandbox
from stockade import Result as CodeResult
from stockade.cli._common import CliState
from stockade.cli.code import (
    Renderer,
    _language_of,
    base64_size,
    error_text,
    human_size,
    needs_more,
    png_dimensions,
    read_cell,
    repl,
    result_lines,
    save,
    summary,
)
from stockade.cli.main import cli
from tests.unit.fake_code import PNG, PNG_B64, FakeCodeApi, tiny_png
from tests.unit.fakes import TOKEN, FakeExecServer

Invoke = Callable[..., Result]


@pytest.fixture
def api(isolated_env: object) -> FakeCodeApi:
    return FakeCodeApi()


@pytest.fixture
def invoke(api: FakeCodeApi, exec_server: FakeExecServer) -> Invoke:
    def factory(url: str | None, token: str | None) -> Client:
        return Client(url or exec_server.url, token or TOKEN, transport=api.transport)

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, list(args), obj=CliState(client_factory=factory),
                                  input=input)  # fmt: skip

    return run


# -- rendering -----------------------------------------------------------------------------


def test_png_dimensions_and_sizes() -> None:
    big = base64.b64encode(tiny_png(1000, 700)).decode()
    assert png_dimensions(big) == (1000, 700)
    assert png_dimensions(PNG_B64) == (40, 30)
    # base64 broken into lines, as some encoders write it
    wrapped = base64.encodebytes(tiny_png(3, 2)).decode()
    assert png_dimensions(wrapped) == (3, 2)
    assert base64_size(wrapped) == len(tiny_png(3, 2))
    assert png_dimensions(base64.b64encode(b"GIF89a" + bytes(40)).decode()) is None
    assert png_dimensions("not base64!") is None
    assert png_dimensions("") is None
    for n in range(6):
        assert base64_size(base64.b64encode(bytes(n)).decode()) == n
    assert [human_size(n) for n in (0, 1023, 34 * 1024 + 100, 3 * 1024 * 1024 // 2)] == [
        "0 B", "1023 B", "34 KiB", "1.5 MiB",
    ]  # fmt: skip


def test_summary() -> None:
    big = base64.b64encode(tiny_png(1000, 1000)).decode()
    size = human_size(len(base64.b64decode(big)))
    assert summary("image/png", big) == f"[image/png 1000x1000, {size}]"
    assert summary("text/html", "<b>é</b>") == "[text/html, 9 B]"
    assert summary("application/json", {"a": 1}) == "[application/json, 8 B]"
    assert summary("image/svg+xml", "<svg/>", Path("out/result-1.svg")) == (
        "[image/svg+xml, 6 B] -> out/result-1.svg"
    )


def test_result_lines() -> None:
    main = CodeResult({"text/plain": "42"}, True)
    assert result_lines(main) == ["42"]
    frame = CodeResult({"text/plain": "   a\n0  1", "text/html": "<table/>"}, True)
    assert result_lines(frame) == ["   a\n0  1"]
    figure = CodeResult({"text/plain": "<Figure size 40x30 with 1 Axes>", "image/png": PNG_B64})
    assert result_lines(figure) == [f"[image/png 40x30, {human_size(len(PNG))}]"]
    html = CodeResult({"text/plain": "<IPython.core.display.HTML object>", "text/html": "<b/>"})
    assert result_lines(html) == ["[text/html, 4 B]"]
    assert result_lines(CodeResult({"text/html": "<b/>"})) == ["[text/html, 4 B]"]
    # A placeholder with nothing better is still shown as the text it is.
    bare = CodeResult({"text/plain": "<object object at 0x7f00>"})
    assert result_lines(bare) == ["<object object at 0x7f00>"]


def test_save_writes_images_without_overwriting(tmp_path: Path) -> None:
    result = CodeResult({"image/png": PNG_B64, "image/svg+xml": "<svg/>", "text/plain": "x"})
    first = save(result, tmp_path / "out")
    second = save(result, tmp_path / "out")
    assert first == {"image/png": tmp_path / "out/result-1.png",
                     "image/svg+xml": tmp_path / "out/result-1.svg"}  # fmt: skip
    assert second["image/png"] == tmp_path / "out/result-2.png"
    assert (tmp_path / "out/result-2.png").read_bytes() == PNG
    assert (tmp_path / "out/result-1.svg").read_text() == "<svg/>"
    assert save(CodeResult({"text/plain": "x"}), tmp_path / "none") == {}
    assert not (tmp_path / "none").exists()


def test_error_text() -> None:
    error = ExecutionError("E", "v", "\x1b[0;31mE\x1b[0m: v")
    assert error_text(error, color=False) == "E: v"
    assert error_text(error, color=True) == "\x1b[0;31mE\x1b[0m: v"
    assert error_text(ExecutionError("KernelDied", "exit 1", ""), color=False) == (
        "KernelDied: exit 1"
    )


def test_renderer_keeps_lines_apart() -> None:
    out, err = io.StringIO(), io.StringIO()
    r = Renderer(out, err)
    r.stdout("no newline")
    r.result(CodeResult({"text/plain": "42"}, True))
    r.stdout("again")
    r.finish()
    r.finish()
    r.error(ExecutionError("E", "v", "tb"))
    assert out.getvalue() == "no newline\n42\nagain\n"
    assert err.getvalue() == "tb\n"


# -- the prompt ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "lines", "more"),
    [
        ("python", ["x = 1"], False),
        ("python", ["for i in range(3):"], True),
        ("python", ["for i in range(3):", "    print(i)"], True),
        ("python", ["for i in range(3):", "    print(i)", ""], False),
        ("python", ["f(1,"], True),
        ("python", ["f(1,", "  2)"], False),
        ("python", ['s = """'], True),
        ("python", ["%timeit x"], False),
        ("python", ["!ls"], False),
        ("python", ["1 +* 2"], False),
        ("bash", ["ls /bin"], False),
        ("bash", ["for f in *; do"], True),
        ("bash", ["for f in *; do", "  echo $f", "done"], True),
        ("bash", ["for f in *; do", "  echo $f", "done", ""], False),
        ("bash", ["echo a \\"], True),
        ("bash", ["echo a \\", "b"], False),
        ("bash", ["f() {"], True),
    ],
)
def test_needs_more(language: str, lines: list[str], more: bool) -> None:
    assert needs_more(language, lines) is more


def scripted(*lines: str | BaseException) -> tuple[Callable[[str], str], list[str]]:
    """An input() stand-in that answers ``lines`` in turn, then end-of-file."""
    prompts: list[str] = []
    queue: Iterator[str | BaseException] = iter(lines)

    def read(prompt: str) -> str:
        prompts.append(prompt)
        item = next(queue, EOFError())
        if isinstance(item, BaseException):
            raise item
        return item

    return read, prompts


def test_read_cell_blocks() -> None:
    read, prompts = scripted("def f(x):", "    return x * 2", "", "f(2)")
    assert read_cell(read, "python") == "def f(x):\n    return x * 2"
    assert read_cell(read, "python") == "f(2)"
    assert prompts == [">>> ", "... ", "... ", ">>> "]
    read, prompts = scripted("ls")
    assert read_cell(read, "bash") == "ls" and prompts == ["$ "]


def test_repl_runs_cells_until_eof(sb: Sandbox, api: FakeCodeApi) -> None:
    out, err = io.StringIO(), io.StringIO()
    read, _ = scripted("print('hi'); 6*7", "", KeyboardInterrupt(), "1/0", "plot")
    repl(sb, Renderer(out, err), language=None, context=None, timeout=3, read=read)
    assert out.getvalue() == f"hi\n42\ndrawing\n[image/png 40x30, {human_size(len(PNG))}]\n"
    assert "Ctrl-D" in err.getvalue() and "KeyboardInterrupt" in err.getvalue()
    assert "ZeroDivisionError: division by zero" in err.getvalue()
    assert [b["code"] for b in api.run_bodies] == ["print('hi'); 6*7", "1/0", "plot"]
    assert {b["timeout"] for b in api.run_bodies} == {3}


def test_repl_ctrl_c_during_a_run_abandons_it(sb: Sandbox, api: FakeCodeApi) -> None:
    def interrupt(i: int) -> None:
        if i == 1:
            raise KeyboardInterrupt

    api.on_pull = interrupt
    out, err = io.StringIO(), io.StringIO()
    read, prompts = scripted("print('hi'); 6*7")
    repl(sb, Renderer(out, err), language=None, context=None, timeout=None, read=read)
    assert out.getvalue() == "hi\n"
    assert "the run was abandoned" in err.getvalue()
    assert prompts == [">>> ", ">>> "]  # back at the prompt, then end-of-file


def test_repl_reports_request_errors_and_goes_on(
    sb: Sandbox, api: FakeCodeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    out, err = io.StringIO(), io.StringIO()
    read, _ = scripted("x", "y")
    repl(sb, Renderer(out, err), language="bash", context="ctx-9", timeout=None, read=read)
    assert capsys.readouterr().err.count("ctx-9") == 2
    assert "context ctx-9" in err.getvalue()


def test_repl_prompts_in_the_contexts_language(sb: Sandbox, api: FakeCodeApi) -> None:
    ctx = sb.create_code_context("bash")
    assert _language_of(sb, ctx.id) == "bash"
    with pytest.raises(NotFoundError, match="code-context ls"):
        _language_of(sb, "ctx-9")
    err = io.StringIO()
    read, prompts = scripted("for f in a b; do", "echo $f", "done", "")
    repl(sb, Renderer(io.StringIO(), err), language=None, context=ctx.id, timeout=None,
         prompt_language="bash", read=read)  # fmt: skip
    assert prompts == ["$ ", "> ", "> ", "> ", "$ "]
    assert api.run_bodies[-1] == {"code": "for f in a b; do\necho $f\ndone", "language": None,
                                  "context": ctx.id, "timeout": None}  # fmt: skip
    assert err.getvalue().startswith(f"bash in sandbox sb-1, context {ctx.id};")


def test_repl_stops_when_the_sandbox_ends(sb: Sandbox, api: FakeCodeApi) -> None:
    read, _ = scripted("gone", "never run")
    with pytest.raises(Exception, match="ran out of memory"):
        repl(sb, Renderer(io.StringIO(), io.StringIO()), language=None, context=None,
             timeout=None, read=read)  # fmt: skip
    assert [b["code"] for b in api.run_bodies] == ["gone"]


# -- the commands --------------------------------------------------------------------------


def test_code_c_prints_output_and_main_result(invoke: Invoke, api: FakeCodeApi) -> None:
    result = invoke("code", "sb-1", "-c", "print('hi'); 6*7")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hi\n42\n"
    assert api.run_bodies[-1] == {"code": "print('hi'); 6*7", "language": "python",
                                  "context": None, "timeout": None}  # fmt: skip


def test_code_error_is_a_traceback_and_exit_1(invoke: Invoke) -> None:
    result = invoke("code", "sb-1", "-c", "1/0")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "warn\n" in result.stderr
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert "\x1b[" not in result.stderr  # not a terminal: no colors


def test_code_timeout_exits_124(invoke: Invoke, api: FakeCodeApi) -> None:
    result = invoke("code", "sb-1", "--timeout", "2", "-c", "slow")
    assert result.exit_code == 124
    assert result.stdout == "tick\n" and "KeyboardInterrupt" in result.stderr
    assert api.run_bodies[-1]["timeout"] == 2.0


def test_code_images_summarized_and_saved(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("code", "sb-1", "-c", "plot", "--save-dir", str(tmp_path / "plots"))
    assert result.exit_code == 0, result.output
    saved = tmp_path / "plots" / "result-1.png"
    assert result.stdout == f"drawing\n[image/png 40x30, {human_size(len(PNG))}] -> {saved}\n"
    assert saved.read_bytes() == PNG


def test_code_json(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("code", "sb-1", "-c", "plot", "--json", "--save-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["logs"] == {"stdout": ["drawing"], "stderr": []}
    assert data["results"][0]["data"]["image/png"] == PNG_B64
    assert (data["execution_count"], data["context_id"], data["error"]) == (1, "ctx-1", None)
    assert (tmp_path / "result-1.png").read_bytes() == PNG
    failed = invoke("code", "sb-1", "-c", "1/0", "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["error"]["name"] == "ZeroDivisionError"


def test_code_reads_a_piped_script(invoke: Invoke, api: FakeCodeApi) -> None:
    result = invoke("code", "sb-1", "--language", "bash", input="echo one\necho two\n")
    assert result.exit_code == 0, result.output
    assert api.run_bodies[-1]["code"] == "echo one\necho two\n"
    assert api.run_bodies[-1]["language"] == "bash"


def test_code_context_commands(invoke: Invoke, api: FakeCodeApi) -> None:
    created = invoke("code-context", "create", "sb-1", "--language", "bash", "--workdir", "/tmp")
    assert (created.exit_code, created.stdout) == (0, "ctx-1\n")
    assert json.loads(api.last("POST").content) == {"language": "bash", "workdir": "/tmp"}
    as_json = invoke("code-context", "create", "sb-1", "--json")
    assert json.loads(as_json.stdout)["id"] == "ctx-2"
    ran = invoke("code", "sb-1", "--context", "ctx-1", "-c", "pwd")
    assert ran.exit_code == 0, ran.output
    assert (api.run_bodies[-1]["context"], api.run_bodies[-1]["language"]) == ("ctx-1", None)
    listed = invoke("code-context", "ls", "sb-1")
    for text in ("ID", "LANGUAGE", "WORKDIR", "ctx-1", "bash", "/tmp", "ctx-2", "idle"):
        assert text in listed.stdout
    assert [c["id"] for c in json.loads(invoke("code-context", "ls", "sb-1", "--json").stdout)] == [
        "ctx-1", "ctx-2",
    ]  # fmt: skip
    restarted = invoke("code-context", "restart", "sb-1", "ctx-1")
    assert (restarted.exit_code, restarted.stdout) == (0, "ctx-1\n")
    removed = invoke("code-context", "rm", "sb-1", "ctx-9", "ctx-1")
    assert removed.exit_code == 1
    assert removed.stdout == "ctx-1\n" and "ctx-9" in removed.stderr
    assert list(api.contexts) == ["ctx-2"]


def test_code_errors_before_the_run(invoke: Invoke, api: FakeCodeApi) -> None:
    missing = invoke("code", "sb-1", "--context", "ctx-9", "-c", "x")
    assert missing.exit_code == 1 and "ctx-9" in missing.stderr
    invoke("create", "--image", "python")
    plain = invoke("code", "sb-2", "-c", "x")
    assert plain.exit_code == 1 and "code-interpreter" in plain.stderr
