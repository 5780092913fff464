"""``stockade volume``: create, list and delete named persistent volumes."""

from __future__ import annotations

import click
from rich.table import Table

from stockade import Volume
from stockade.cli._common import CliState, age, pass_state, print_json, stdout_console


@click.group("volume")
def volume() -> None:
    """Persistent volumes: create, list and delete them.

    \b
    Mount one in the SDK with
      Sandbox.create(volumes={"/data": Volume.from_name("data")})
    """


@volume.command("create")
@click.argument("name")
@click.option(
    "--size",
    type=click.IntRange(min=1),
    metavar="MiB",
    help="The most it may hold, in MiB [server: 1024].",
)
@pass_state
def volume_create(state: CliState, name: str, size: int | None) -> None:
    """Create an empty volume NAME and print its ID."""
    vol = Volume.create(name, size=size, client=state.client())
    click.echo(vol.id)


@volume.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def volume_ls(state: CliState, as_json: bool) -> None:
    """List the volumes and the sandboxes using them."""
    found = Volume.list(client=state.client())
    if as_json:
        print_json([v.to_json() for v in found])
        return
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "ID", "SIZE", "AGE", "USED BY"):
        table.add_column(column, no_wrap=column != "USED BY")
    for v in found:
        users = ", ".join(v.used_by) or "-"
        table.add_row(v.name, v.id, f"{v.size} MiB", age(v.created_at), users)
    stdout_console().print(table)


@volume.command("rm")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@pass_state
def volume_rm(state: CliState, names: tuple[str, ...]) -> None:
    """Delete volumes and their files, for good (not while a sandbox has one mounted)."""
    client = state.client()
    for name in names:
        Volume.delete(name, client=client)
        click.echo(name)
