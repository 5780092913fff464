"""``stockade images``, and building a base image with a progress display before first use."""

from __future__ import annotations

from collections import deque

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from stockade import Client, ImageInfo
from stockade.cli._common import CliState, pass_state, print_json, stderr_console, stdout_console

# How many of the builder's latest log lines stay on screen under the spinner.
_TAIL_LINES = 6


def ensure_image(client: Client, name: str) -> None:
    """Build image ``name`` first if it is not ready, showing progress on stderr.

    Without this, ``create`` would block silently while the server builds the image.
    """
    if any(image.name == name and image.ready for image in client.images()):
        return
    console = stderr_console()
    title = f"building image {name} (first use; this takes a minute or so)"
    if not console.is_terminal:
        # A log file or CI: plain lines, which survive where a live display would not.
        console.print(title)
        info = client.build_image(name, on_log=lambda line: console.print(f"  {line}"))
    else:
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        spinner = Spinner("dots", text=Text(title))

        def render() -> RenderableType:
            lines = [
                Text(f"  {line}", style="dim", no_wrap=True, overflow="ellipsis") for line in tail
            ]
            return Group(spinner, *lines)

        with Live(render(), console=console, refresh_per_second=12, transient=True) as live:

            def on_log(line: str) -> None:
                tail.append(line)
                live.update(render())

            info = client.build_image(name, on_log=on_log)
    size = f" ({info.size_mib} MiB)" if info.size_mib is not None else ""
    console.print(Text(f"image {info.name} is ready{size}", style="green"))


@click.command("images")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def images(state: CliState, as_json: bool) -> None:
    """List the base images and whether each is built."""
    found = state.client().images()
    if as_json:
        print_json([image.to_json() for image in found])
        return
    stdout_console().print(_table(found))


def _table(found: list[ImageInfo]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "READY", "SIZE", "DESCRIPTION"):
        table.add_column(column, no_wrap=column != "DESCRIPTION")
    for image in found:
        size = f"{image.size_mib} MiB" if image.size_mib is not None else "-"
        ready = Text("yes", style="green") if image.ready else Text("no (built on first use)")
        table.add_row(image.name, ready, size, image.description)
    return table
