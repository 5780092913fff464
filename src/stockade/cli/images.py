"""``stockade images``, and building a base image with a progress display before first use."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable

import click
from rich.console import Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from stockade import Client, ImageInfo
from stockade.cli._common import (
    CliState,
    age,
    pass_state,
    print_json,
    stderr_console,
    stdout_console,
)

# How many of the builder's latest log lines stay on screen under the spinner.
_TAIL_LINES = 6


def ensure_image(client: Client, name: str) -> str:
    """Build base image ``name``, or pull registry image ``name``, first if it is not
    ready, showing progress on stderr; returns the image to create from.

    Without this, ``create`` would block silently while the server builds the image.
    """
    if any(image.name == name and image.ready for image in client.images()):
        return name  # a base image that is built, a named image or a pulled one
    if any(c in name for c in ":/@"):
        info = _with_progress(client, f"pulling {name}", name, pull=True)
        return info.pinned or name
    title = f"building image {name} (first use; this takes a minute or so)"
    _with_progress(client, title, name, pull=False)
    return name


def _with_progress(client: Client, title: str, name: str, *, pull: bool) -> ImageInfo:
    def work(on_log: Callable[[str], object]) -> ImageInfo:
        if pull:
            return client.pull_image(name, on_log=on_log)
        return client.build_image(name, on_log=on_log)

    console = stderr_console()
    if not console.is_terminal:
        # A log file or CI: plain lines, which survive where a live display would not.
        console.print(title)
        info = work(lambda line: console.print(f"  {line}"))
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

            info = work(on_log)
    size = f" ({info.size_mib} MiB)" if info.size_mib is not None else ""
    console.print(Text(f"image {info.name} is ready{size}", style="green"))
    return info


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
    for column in ("NAME", "KIND", "READY", "SIZE", "AGE", "ID / DIGEST", "DESCRIPTION"):
        # The short columns never shrink; long names and descriptions give way.
        short = column in ("KIND", "READY", "SIZE", "AGE")
        table.add_column(column, no_wrap=column != "DESCRIPTION", min_width=9 if short else None)
    for info in found:
        size = f"{info.size_mib} MiB" if info.size_mib is not None else "-"
        ready = Text("yes", style="green") if info.ready else Text("no (built on first use)")
        ident = info.digest[:19] + "…" if info.digest else (info.pinned or "-")
        when = age(info.created_at) if info.created_at else "-"
        table.add_row(info.name, info.kind, ready, size, when, ident, info.description)
    return table


@click.group("image")
def image() -> None:
    """Images: build them from code or a Dockerfile, pull them from registries, list,
    export, delete and garbage-collect them."""


@image.command("pull")
@click.argument("ref")
@click.option("--username", help="Registry user name (the password is read from stdin).")
@pass_state
def image_pull(state: CliState, ref: str, username: str | None) -> None:
    """Pull a registry image (e.g. python:3.12-slim) so sandboxes start from it at once."""
    auth = None
    if username:
        password = sys.stdin.readline().rstrip("\n")
        auth = (username, password)
    client = state.client()
    console = stderr_console()

    def show(line: str) -> None:
        console.print(f"  {line}")

    info = client.pull_image(ref, auth=auth, on_log=show)
    click.echo(info.pinned or info.name)


@image.command("rm")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@pass_state
def image_rm(state: CliState, names: tuple[str, ...]) -> None:
    """Delete named images (name:tag) or forget pulled ones; `image gc` frees the space."""
    client = state.client()
    for name in names:
        client.delete_image(name)
        click.echo(name)


@image.command("gc")
@click.option(
    "--min-age",
    type=float,
    default=60.0,
    show_default=True,
    help="Keep layers younger than this many seconds (builds in progress).",
)
@pass_state
def image_gc(state: CliState, min_age: float) -> None:
    """Remove the layers no image or running sandbox needs, and report the space freed."""
    removed, freed = state.client().gc_images(min_age=min_age)
    click.echo(f"removed {removed} layers and files, freed {freed / (1 << 20):.1f} MiB")


@image.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def image_ls(state: CliState, as_json: bool) -> None:
    """List the base images and the pulled registry images."""
    found = state.client().images()
    if as_json:
        print_json([i.to_json() for i in found])
        return
    stdout_console().print(_table(found))


# At the end: image_export's command joins the `image` group defined above.
from stockade.cli.image_export import export as _export  # noqa: E402

image.add_command(_export)
from stockade.cli.image_build import build as _build  # noqa: E402

image.add_command(_build)
