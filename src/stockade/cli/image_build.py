"""``stockade image build``: build an image from a Dockerfile or a Python file, and name it.

Why a CLI verb when ``Image.tag`` exists: a Makefile or CI job wants to build the image
once, before any sandbox starts, see why a step failed, and pass the name on
(``TAG=$(stockade image build image.py --tag app:v1)``). So stdout carries only the tag
(or the image ID), and everything else (progress, the summary, errors) goes to stderr.

FILE is read in one of two ways:

- a Dockerfile (named ``Dockerfile``, ``*.Dockerfile`` or ``Dockerfile.*``, or anything not
  ending in ``.py``) goes through :meth:`Image.from_dockerfile`;
- a Python file is run (``__name__`` is not ``"__main__"``, so a ``main`` block that starts
  sandboxes does not run) and its module-level ``Image`` is built: the one named ``image``,
  or else the only ``Image`` it defines.

Example::

    $ stockade image build ci/image.py --tag agent:v1
    $ stockade image build Dockerfile --build-arg BASE=debian --tag app:v2
    $ stockade run --image agent:v1 -- python3 -m pytest
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import runpy
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from stockade import BuildError, Image, ImageInfo, StockadeError
from stockade.cli._common import CliState, fail, parse_pairs, pass_state, stderr_console
from stockade.image import LocalCopy

__all__ = ["build", "is_dockerfile", "load_image"]

# How many of the running step's latest output lines stay on screen under the steps.
_TAIL_LINES = 6
# The builder announces each step as "[2/5] run …", with " (cached)" when its layer exists.
_STEP = re.compile(r"^\[(\d+)/(\d+)\] ")
_CACHED = " (cached)"
# What a Python file's ``__name__`` is while it runs: anything but "__main__".
_RUN_NAME = "__stockade_build__"


@click.command("build")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--tag", "-t", metavar="NAME:TAG",
    help="Name the image (e.g. agent:v1) [default: unnamed; its ID is printed].",
)  # fmt: skip
@click.option(
    "--timeout", type=click.FloatRange(min=1), metavar="SECONDS",
    help="Stop the build after this long [server: 1800].",
)  # fmt: skip
@click.option(
    "--build-arg", "build_args", multiple=True, callback=parse_pairs, metavar="KEY=VALUE",
    help="A Dockerfile ARG value (repeatable; Dockerfiles only).",
)  # fmt: skip
@click.option(
    "--context", type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Where a Dockerfile's COPY sources are read [default: the Dockerfile's directory].",
)  # fmt: skip
@pass_state
def build(
    state: CliState,
    file: Path,
    tag: str | None,
    timeout: float | None,
    build_args: dict[str, str],
    context: Path | None,
) -> None:
    """Build an image from a Dockerfile or a Python file, and name it.

    FILE is a Dockerfile (Dockerfile, *.Dockerfile, Dockerfile.*, or any name not ending
    in .py), or a Python file: its module-level `image` is built, or else the only Image
    it defines. Steps already built come from the cache. The tag (or, without --tag, the
    image ID) is printed on stdout.

    \b
    For example:
      stockade image build image.py --tag agent:v1
      stockade image build Dockerfile --build-arg VERSION=2 --tag app:v2
      stockade run --image agent:v1 -- python3 -V
    """
    image = load_image(file, context=context, build_args=build_args)
    client = state.client()
    console = stderr_console()
    title = f"building {file}" + (f" as {tag}" if tag else "")
    progress = _Progress(title)
    started = time.monotonic()
    try:
        with progress.shown_on(console):
            info = client.build(image, tag=tag, on_log=progress.feed, timeout=timeout)
    except BuildError as exc:
        # The server's message names the command, its exit code and its last lines; the
        # step number is only in the log, which a user of plain output may not have kept.
        step = progress.current
        where = f"build failed at step {step.number}: " if step is not None else ""
        fail(where + exc.message)
    took = time.monotonic() - started
    click.echo(info.name)
    console.print(Text(f"built {_describe(info)} in {took:.1f}s", style="green"))


def load_image(
    file: Path, *, context: Path | None = None, build_args: Mapping[str, str] | None = None
) -> Image:
    """The ``Image`` that ``file`` describes: a Dockerfile, or a Python file defining one.

    Raises :class:`click.exceptions.Exit` (after printing why) for a Python file that
    does not define exactly one usable ``Image``, or given Dockerfile-only options.

    Example::

        image = load_image(Path("ci/image.py"))
    """
    if is_dockerfile(file):
        return Image.from_dockerfile(
            file, context=context if context is not None else file.parent, build_args=build_args
        )
    for given, option in ((build_args, "--build-arg"), (context, "--context")):
        if given:
            fail(
                f"{option} applies to Dockerfiles only; {file} is a Python file (pass values "
                "to it through environment variables instead)"
            )
    return _from_python(file)


def is_dockerfile(file: Path) -> bool:
    """Whether ``file`` is read as a Dockerfile rather than run as Python."""
    name = file.name
    return (
        name == "Dockerfile"
        or name.endswith(".Dockerfile")
        or name.startswith("Dockerfile.")
        or file.suffix != ".py"
    )


def _from_python(file: Path) -> Image:
    """Run ``file`` and pick its ``Image``, with local paths made absolute.

    The file runs in its own directory, with that directory first on ``sys.path``, so it
    imports its neighbours and names files relative to itself, as it would when run
    with ``python image.py`` from there. Its prints go to stderr: stdout is for the tag.
    """
    path = file.resolve()
    directory = path.parent
    saved_cwd, saved_path = os.getcwd(), list(sys.path)
    try:
        sys.path.insert(0, str(directory))
        os.chdir(directory)
        with contextlib.redirect_stdout(sys.stderr):
            namespace = runpy.run_path(str(path), run_name=_RUN_NAME)
    except StockadeError:
        raise  # an Image method's own message (a missing file, say) says it best
    except (Exception, SystemExit) as exc:
        # SystemExit too: a file that calls sys.exit() would otherwise end the CLI silently.
        _print_traceback(exc, path)
        fail(f"running {file} raised {type(exc).__name__}; its traceback is above")
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
    image = _pick(namespace, file)
    # ``add_local_*`` keep the path as given and read it when the image is built, after
    # the working directory is restored: anchor relative ones to the file's directory.
    copies = tuple((index, _anchored(copy, directory)) for index, copy in image.copies)
    return dataclasses.replace(image, copies=copies)


def _anchored(copy: LocalCopy, directory: Path) -> LocalCopy:
    if copy.source.is_absolute():
        return copy
    return dataclasses.replace(copy, source=directory / copy.source)


def _pick(namespace: Mapping[str, object], file: Path) -> Image:
    """The variable ``image`` if it is an ``Image``, else the only ``Image`` defined."""
    named = namespace.get("image")
    if isinstance(named, Image):
        return named
    found = sorted(name for name, value in namespace.items() if isinstance(value, Image))
    if len(found) == 1:
        return namespace[found[0]]  # type: ignore[return-value]  # checked just above
    if found:
        fail(
            f"{file} defines several images ({', '.join(found)}); name the one to build "
            "`image` (e.g. `image = " + found[0] + "`)"
        )
    also = f" (its `image` is a {type(named).__name__})" if "image" in namespace else ""
    fail(
        f"{file} defines no Image at module level{also}; assign one, e.g. "
        '`image = Image.from_name("debian").run_commands("...")`'
    )


def _print_traceback(exc: BaseException, path: Path) -> None:
    """The traceback from the user's file on, without runpy's and this module's frames."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != str(path):
        tb = tb.tb_next
    # None (a SyntaxError, which has no frame in the file) leaves just the error's lines.
    lines = traceback.format_exception(type(exc), exc, tb)
    sys.stderr.write("".join(lines))


def _describe(info: ImageInfo) -> str:
    if info.pinned and info.pinned != info.name:
        return f"{info.name} ({info.pinned})"
    return info.name


@dataclass
class _Step:
    """One build step as the log announced it."""

    label: str  # "[2/5] run echo hi", without " (cached)"
    cached: bool
    state: str = "running"  # running, done or failed
    spinner: Spinner | None = None

    @property
    def number(self) -> str:
        return self.label.split("]", 1)[0] + "]"

    def renderable(self) -> RenderableType:
        text = Text(self.label, no_wrap=True, overflow="ellipsis")
        if self.cached:
            text.append(_CACHED, style="dim")
        if self.state == "running":
            if self.spinner is None:
                self.spinner = Spinner("dots", text=text)
            return self.spinner
        mark = Text("✓ ", style="green") if self.state == "done" else Text("✗ ", style="red")
        return Text.assemble(mark, text)


@dataclass
class _Progress:
    """The build log turned into a display: one line per step, and the running step's
    last output lines under them.

    The builder announces a step when it starts it, so a step is done once the next one
    (or the end) is announced. Thread-unsafe: ``feed`` is called from the one thread
    that reads the build's event stream.
    """

    title: str
    steps: list[_Step] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    _live: Live | None = None
    _plain: Console | None = None
    _over: bool = False
    _waiting: Spinner = field(init=False)

    def __post_init__(self) -> None:
        self._waiting = Spinner("dots", text=Text(self.title))

    @property
    def current(self) -> _Step | None:
        """The step being built, or the last one announced."""
        return self.steps[-1] if self.steps else None

    @contextlib.contextmanager
    def shown_on(self, console: Console) -> Iterator[None]:
        """Show progress on ``console`` while the block runs: live on a terminal, plain
        lines elsewhere (a log file or CI keeps every line; a live display would not)."""
        if not console.is_terminal:
            console.print(self.title)
            self._plain = console
            yield
            return
        with Live(self.render(), console=console, refresh_per_second=12) as live:
            self._live = live
            ok = False
            try:
                yield
                ok = True
            finally:
                # Left on screen (not transient): the steps and their cache marks are the
                # record of what this build did. The output tail is dropped; on failure
                # the error message repeats its last lines.
                self._finish(ok)
                self._over = True
                self.tail.clear()
                live.update(self.render(), refresh=True)
                self._live = None

    def feed(self, line: str) -> None:
        """Take one line of the build log."""
        if self._plain is not None:
            self._plain.print(line, markup=False)
            if _STEP.match(line):
                self._announce(line)
            return
        if _STEP.match(line):
            self._announce(line)
            self.tail.clear()
        elif line.strip():
            self.tail.append(line.strip())
        if self._live is not None:
            self._live.update(self.render())

    def _announce(self, line: str) -> None:
        self._finish(True)
        cached = line.endswith(_CACHED)
        label = line[: -len(_CACHED)] if cached else line
        self.steps.append(_Step(label, cached))

    def _finish(self, ok: bool) -> None:
        step = self.current
        if step is not None and step.state == "running":
            step.state = "done" if ok else "failed"

    def render(self) -> RenderableType:
        waiting = not self.steps and not self._over
        head: RenderableType = self._waiting if waiting else Text(self.title, style="bold")
        tail = [
            Text(f"  {line}", style="dim", no_wrap=True, overflow="ellipsis") for line in self.tail
        ]
        return Group(head, *(step.renderable() for step in self.steps), *tail)
