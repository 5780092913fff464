"""``stockade code`` (run code in a sandbox's stateful kernel) and ``stockade code-context``
(list, create, restart and remove the kernels).

``stockade code ID -c CODE`` runs one snippet; with code on a pipe (``stockade code ID <
script.py``) it runs all of it; otherwise it opens an interactive prompt. Either way,
stdout and stderr are copied here as the code prints them, each result is shown as it
is displayed: its text when it has readable text, else a summary such as ``[image/png
640x480, 21 KiB]`` (``--save-dir`` writes images to files), and an exception as its
traceback on stderr. The exit code is 1 when the code raised, 124 when it ran past
``--timeout``.

At the prompt, a line that opens a block (``for x in y:``) continues until a blank line,
as in the Python REPL; Ctrl-C interrupts a run by abandoning it (and clears a half-typed
block); Ctrl-D leaves.

    stockade code sb-… -c 'import math; math.pi'
    stockade code sb-… --language bash
    stockade code-context create sb-… --language bash --workdir /tmp    # prints ctx-…
    stockade code sb-… --context ctx-… -c 'ls'
    stockade code-context ls sb-…
"""

from __future__ import annotations

import base64
import binascii
import codeop
import contextlib
import importlib
import json
import re
import struct
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click
from rich.table import Table

from stockade import (
    Execution,
    ExecutionError,
    NotFoundError,
    Result,
    Sandbox,
    SandboxTerminatedError,
    StockadeConnectionError,
    StockadeError,
)
from stockade.cli._common import CliState, pass_state, print_error, print_json, stdout_console

_EXIT_ERROR = 1
_EXIT_TIMED_OUT = 124

# Escape sequences that color IPython's tracebacks; kept on a terminal, dropped elsewhere.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# The text/plain of an object with no useful text, e.g. "<IPython.core.display.HTML object>".
_PLACEHOLDER = re.compile(r"<[\w.]+ object( at 0x[0-9a-f]+)?>")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Formats written to files by --save-dir, and their file extensions.
_SAVED = {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg", "application/pdf": "pdf"}
_BINARY = frozenset({"image/png", "image/jpeg", "application/pdf"})


# -- rendering -----------------------------------------------------------------------------


def human_size(size: int) -> str:
    """``size`` bytes as ``512 B``, ``34 KiB`` or ``1.5 MiB``."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{round(size / 1024)} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


def base64_size(text: str) -> int:
    """How many bytes base64 ``text`` decodes to, without decoding it."""
    digits = len(text) - sum(text.count(c) for c in " \t\r\n")
    return digits * 3 // 4 - text.rstrip().count("=", -2)


def png_dimensions(encoded: str) -> tuple[int, int] | None:
    """Width and height from the IHDR header of a base64 PNG; None when it is not one."""
    # The signature (8 bytes) and the IHDR chunk's length, type, width and height (16):
    # the first 32 base64 digits hold exactly those 24 bytes.
    head = "".join(encoded[:128].split())[:32]
    try:
        raw = base64.b64decode(head, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 24 or not raw.startswith(_PNG_SIGNATURE) or raw[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", raw[16:24])
    return width, height


def summary(mime: str, value: Any, saved: Path | None = None) -> str:
    """One format of a result in brackets: ``[image/png 640x480, 21 KiB]``."""
    if isinstance(value, str):
        size = base64_size(value) if mime in _BINARY else len(value.encode("utf-8"))
    else:
        size = len(json.dumps(value).encode("utf-8"))
    dims = png_dimensions(value) if mime == "image/png" and isinstance(value, str) else None
    shape = f" {dims[0]}x{dims[1]}" if dims else ""
    where = f" -> {saved}" if saved is not None else ""
    return f"[{mime}{shape}, {human_size(size)}]{where}"


def _free_path(directory: Path, extension: str) -> Path:
    number = 1
    while (path := directory / f"result-{number}.{extension}").exists():
        number += 1
    return path


def save(result: Result, directory: Path) -> dict[str, Path]:
    """Write the result's images (PNG, JPEG, SVG, PDF) to new files in ``directory``
    (``result-N.png``, never overwriting one); returns MIME type -> file."""
    written: dict[str, Path] = {}
    for mime, extension in _SAVED.items():
        value = result.data.get(mime)
        if not isinstance(value, str):
            continue
        directory.mkdir(parents=True, exist_ok=True)
        path = _free_path(directory, extension)
        if mime in _BINARY:
            path.write_bytes(base64.b64decode(value))
        else:
            path.write_text(value, encoding="utf-8")
        written[mime] = path
    return written


def result_lines(result: Result, saved: dict[str, Path] | None = None) -> list[str]:
    """How the CLI shows a result: its text when that is readable, otherwise (and for
    images) a summary of each format."""
    saved = saved or {}
    images = [m for m in result.data if m.startswith("image/") or m == "application/pdf"]
    if images:
        return [summary(m, result.data[m], saved.get(m)) for m in images]
    text = result.text
    others = [m for m in result.data if m != "text/plain"]
    if text is not None and not (others and _PLACEHOLDER.fullmatch(text.strip())):
        return [text]
    return [summary(m, result.data[m], saved.get(m)) for m in others or result.data]


def error_text(error: ExecutionError, *, color: bool) -> str:
    """The traceback as the kernel wrote it (just ``name: value`` when it has none)."""
    text = error.traceback or f"{error.name}: {error.value}"
    return text if color else _ANSI.sub("", text)


class Renderer:
    """Shows a run's output as it arrives: the callbacks of ``run_code``."""

    def __init__(
        self, out: TextIO, err: TextIO, *, save_dir: Path | None = None, color: bool = False
    ) -> None:
        self.out = out
        self.err = err
        self.save_dir = save_dir
        self.color = color
        self._line_open = False  # the last stdout text did not end with a newline

    def stdout(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self._line_open = not text.endswith("\n")

    def stderr(self, text: str) -> None:
        self.err.write(text)
        self.err.flush()

    def result(self, result: Result) -> None:
        saved = save(result, self.save_dir) if self.save_dir is not None else None
        if self._line_open:
            self.out.write("\n")
        for line in result_lines(result, saved):
            self.out.write(line if line.endswith("\n") else line + "\n")
        self.out.flush()
        self._line_open = False

    def error(self, error: ExecutionError) -> None:
        text = error_text(error, color=self.color)
        self.err.write(text if text.endswith("\n") else text + "\n")
        self.err.flush()

    def finish(self) -> None:
        """End a line the code left open, so the next prompt starts on its own line."""
        if self._line_open:
            self.out.write("\n")
            self.out.flush()
            self._line_open = False


def run_shown(
    sb: Sandbox,
    renderer: Renderer,
    source: str,
    *,
    language: str | None,
    context: str | None,
    timeout: float | None,
) -> Execution:
    """Run ``source`` with its output shown by ``renderer`` as it arrives."""
    try:
        return sb.run_code(
            source, language=language, context=context, timeout=timeout,
            on_stdout=renderer.stdout, on_stderr=renderer.stderr, on_result=renderer.result,
            on_error=renderer.error,
        )  # fmt: skip
    finally:
        renderer.finish()


def exit_code(execution: Execution) -> int:
    """0, 1 when the code raised, 124 when it ran past its timeout."""
    if execution.timed_out:
        return _EXIT_TIMED_OUT
    return _EXIT_ERROR if execution.error is not None else 0


# -- the prompt ----------------------------------------------------------------------------

# A line ending so opens a multi-line block in a language without a parser here (bash).
_OPENERS = re.compile(r"(?:[:{(|]|&&|(?:^|[\s;])(?:do|then))\s*$")


def needs_more(language: str, lines: list[str]) -> bool:
    """Whether the lines typed so far are an unfinished block that wants another line."""
    if language == "python":
        source = "\n".join(lines)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # As the Python REPL decides: None means "incomplete". IPython syntax
                # (%magic, !cmd) does not compile and so is complete: the kernel reads it.
                return codeop.compile_command(source, "<input>", "single") is None
        except (SyntaxError, ValueError, OverflowError):
            return False
    if lines[-1].endswith("\\"):
        return True
    # Other languages: a block opened by its first line runs to a blank line.
    return len(lines) > 0 and bool(_OPENERS.search(lines[0])) and lines[-1].strip() != ""


def read_cell(read: Callable[[str], str], language: str) -> str:
    """One cell from the prompt: a line, or a block of lines (see :func:`needs_more`)."""
    first, more = (">>> ", "... ") if language == "python" else ("$ ", "> ")
    lines = [read(first)]
    while needs_more(language, lines):
        lines.append(read(more))
    return "\n".join(lines).rstrip("\n")


def _enable_line_editing() -> None:
    # Importing readline is what gives input() history and line editing.
    with contextlib.suppress(ImportError):
        importlib.import_module("readline")


def _language_of(sb: Sandbox, context: str) -> str:
    for found in sb.list_code_contexts():
        if found.id == context:
            return found.language
    raise NotFoundError(
        f"code context {context!r} does not exist in sandbox {sb.id}; "
        f"`stockade code-context ls {sb.id}` lists them"
    )


def repl(
    sb: Sandbox,
    renderer: Renderer,
    *,
    language: str | None,
    context: str | None,
    timeout: float | None,
    prompt_language: str | None = None,
    read: Callable[[str], str] = input,
) -> None:
    """The interactive prompt: read a cell, run it, show its output, until end-of-file.

    ``prompt_language`` decides how lines continue (default: ``language``, else python).
    """
    prompt_language = prompt_language or language or "python"
    where = f"context {context}" if context else "the default context"
    renderer.err.write(
        f"{prompt_language} in sandbox {sb.id}, {where}; Ctrl-C interrupts, Ctrl-D exits\n"
    )
    while True:
        try:
            code = read_cell(read, prompt_language)
        except EOFError:
            renderer.err.write("\n")
            return
        except KeyboardInterrupt:
            renderer.err.write("\nKeyboardInterrupt\n")
            continue
        if not code.strip():
            continue
        try:
            run_shown(sb, renderer, code, language=language, context=context, timeout=timeout)
        except KeyboardInterrupt:
            renderer.err.write("KeyboardInterrupt: the run was abandoned\n")
        except (SandboxTerminatedError, StockadeConnectionError):
            raise  # nothing more can run
        except StockadeError as exc:
            print_error(str(exc))  # e.g. a dead context: the next cell may work again


# -- the commands --------------------------------------------------------------------------


@click.command("code")
@click.argument("sandbox_id", metavar="ID")
@click.option("-c", "--code", "source", metavar="CODE", help="Run CODE, print its output, exit.")
@click.option(
    "--language", metavar="python|bash",
    help="The kernel's language [default: python, or the --context's].",
)  # fmt: skip
@click.option("--context", "context", metavar="CTX", help="Run in this context (see code-context).")
@click.option("--timeout", type=float, help="Interrupt code running longer (exit code 124).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole execution as JSON.")
@click.option(
    "--save-dir", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
    help="Write image results (PNG, JPEG, SVG, PDF) to files in DIR.",
)  # fmt: skip
@pass_state
@click.pass_context
def code(
    ctx: click.Context,
    state: CliState,
    sandbox_id: str,
    source: str | None,
    language: str | None,
    context: str | None,
    timeout: float | None,
    as_json: bool,
    save_dir: Path | None,
) -> None:
    """Run code in a sandbox's stateful kernel, or open a prompt to it.

    The sandbox needs an image with Jupyter kernels: `--image code-interpreter`.
    Variables, imports and the working directory persist between runs of a context.

    \b
    Examples:
      ID=$(stockade create --image code-interpreter)
      stockade code $ID -c 'import math; math.pi'
      stockade code $ID -c 'import matplotlib.pyplot as plt; plt.plot([1, 3]); plt.show()' \\
          --save-dir plots/
      stockade code $ID < analysis.py
      stockade code $ID --language bash          # an interactive prompt
    """
    sb = state.sandbox(sandbox_id)
    if source is None and not sys.stdin.isatty():
        source = sys.stdin.read()
    renderer = Renderer(
        sys.stdout, sys.stderr, save_dir=save_dir, color=sys.stderr.isatty() and not as_json
    )
    if source is None:
        prompt_language = language
        if prompt_language is None and context is not None:
            # The prompt continues lines as the context's language does; this also
            # fails early, before anything is typed, on a context that does not exist.
            prompt_language = _language_of(sb, context)
        _enable_line_editing()
        repl(
            sb, renderer, language=language, context=context, timeout=timeout,
            prompt_language=prompt_language,
        )  # fmt: skip
        return
    if as_json:
        execution = sb.run_code(source, language=language, context=context, timeout=timeout)
        if save_dir is not None:
            for result in execution.results:
                save(result, save_dir)
        print_json(execution.to_json())
    else:
        execution = run_shown(
            sb, renderer, source, language=language, context=context, timeout=timeout
        )
    ctx.exit(exit_code(execution))


@click.group("code-context")
def code_context() -> None:
    """Code contexts: the kernels of `stockade code`, each with its own state."""


@code_context.command("ls")
@click.argument("sandbox_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def context_ls(state: CliState, sandbox_id: str, as_json: bool) -> None:
    """List a sandbox's code contexts and their kernels' status."""
    found = state.sandbox(sandbox_id).list_code_contexts()
    if as_json:
        print_json([c.to_json() for c in found])
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "LANGUAGE", "STATUS", "WORKDIR", "DEFAULT"):
        table.add_column(column, no_wrap=True)
    for c in found:
        table.add_row(c.id, c.language, c.status, c.workdir or "-", "yes" if c.default else "")
    stdout_console().print(table)


@code_context.command("create")
@click.argument("sandbox_id", metavar="ID")
@click.option("--language", default="python", show_default=True, metavar="python|bash")
@click.option(
    "--workdir", metavar="DIR",
    help="Working directory (absolute) of the kernel [default: the sandbox's].",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the context as JSON.")
@pass_state
def context_create(
    state: CliState, sandbox_id: str, language: str, workdir: str | None, as_json: bool
) -> None:
    """Start a new context and print its ID (for `stockade code --context`)."""
    created = state.sandbox(sandbox_id).create_code_context(language, workdir=workdir)
    if as_json:
        print_json(created.to_json())
    else:
        click.echo(created.id)


@code_context.command("restart")
@click.argument("sandbox_id", metavar="ID")
@click.argument("context_id", metavar="CTX")
@pass_state
def context_restart(state: CliState, sandbox_id: str, context_id: str) -> None:
    """Give a context a fresh kernel (its state is lost); revives a dead one."""
    click.echo(state.sandbox(sandbox_id).restart_code_context(context_id).id)


@code_context.command("rm")
@click.argument("sandbox_id", metavar="ID")
@click.argument("context_ids", metavar="CTX...", nargs=-1, required=True)
@pass_state
@click.pass_context
def context_rm(
    ctx: click.Context, state: CliState, sandbox_id: str, context_ids: tuple[str, ...]
) -> None:
    """Stop contexts' kernels and remove them."""
    sb = state.sandbox(sandbox_id)
    failed = False
    for context_id in context_ids:
        try:
            sb.remove_code_context(context_id)
        except StockadeError as exc:
            print_error(str(exc))
            failed = True
            continue
        click.echo(context_id)
    if failed:
        ctx.exit(1)
