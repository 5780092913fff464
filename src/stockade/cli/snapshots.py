"""``stockade snapshot|pause|resume|fork``: memory and filesystem snapshots, sleep, forks."""

from __future__ import annotations

import click
from rich.table import Table

from stockade import Snapshot, StockadeError
from stockade.cli._common import CliState, age, pass_state, print_error, print_json, stdout_console

_SUBCOMMANDS = ("ls", "rm")


class _SnapshotGroup(click.Group):
    """``stockade snapshot ID`` takes a snapshot; ``stockade snapshot ls|rm`` manage them.

    A sandbox ID never looks like a subcommand name, so the first word decides.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in _SUBCOMMANDS and not args[0].startswith("-"):
            args = ["take", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("stockade snapshot", "ID [--fs-only] [--name NAME] | ls | rm ID...")


@click.group(cls=_SnapshotGroup)
def snapshot() -> None:
    """Snapshot a sandbox, or list and delete snapshots.

    \b
      stockade snapshot ID              memory + files; restore with `stockade create --snapshot`
      stockade snapshot ID --fs-only    files only, as a new image
      stockade snapshot ls              list snapshots
      stockade snapshot rm SNAPSHOT...  delete snapshots
    """


@snapshot.command("take", hidden=True)
@click.argument("sandbox_id", metavar="ID")
@click.option("--fs-only", is_flag=True, help="Save the files only, as a new image.")
@click.option("--name", help="The snapshot's label, or with --fs-only the image's name:tag.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def take(state: CliState, sandbox_id: str, fs_only: bool, name: str | None, as_json: bool) -> None:
    """Snapshot sandbox ID (it keeps running) and print the snapshot ID or image name."""
    sb = state.sandbox(sandbox_id)
    if fs_only:
        image = sb.snapshot_filesystem(name=name)
        if as_json:
            print_json({"image": image.name})
        else:
            click.echo(image.name)
        return
    snap = sb.snapshot(name=name)
    if as_json:
        print_json(_snapshot_json(snap))
    else:
        click.echo(snap.id)


@snapshot.command("ls")
@click.option("--sandbox", "sandbox_id", metavar="ID", help="Only snapshots of this sandbox.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def ls(state: CliState, sandbox_id: str | None, as_json: bool) -> None:
    """List snapshots, newest first."""
    snaps = Snapshot.list(sandbox_id=sandbox_id, client=state.client())
    if as_json:
        print_json([_snapshot_json(s) for s in snaps])
        return
    table = Table(box=None)
    for column in ("ID", "SANDBOX", "IMAGE", "NAME", "SIZE", "CREATED"):
        table.add_column(column)
    for s in snaps:
        table.add_row(
            s.id,
            s.info.sandbox_id,
            s.info.image,
            s.info.name or "",
            f"{s.info.size_bytes / (1024 * 1024):.1f} MiB",
            age(s.info.created_at),
        )
    stdout_console().print(table)


@snapshot.command("rm")
@click.argument("snapshot_ids", metavar="SNAPSHOT...", nargs=-1, required=True)
@pass_state
def rm(state: CliState, snapshot_ids: tuple[str, ...]) -> None:
    """Delete snapshots (sandboxes restored from them are not affected)."""
    failed = False
    for snapshot_id in snapshot_ids:
        try:
            Snapshot.from_id(snapshot_id, client=state.client()).delete()
        except StockadeError as exc:
            print_error(str(exc))  # keep going: one bad ID should not keep the others
            failed = True
        else:
            click.echo(snapshot_id)
    if failed:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("sandbox_id", metavar="ID")
@pass_state
def pause(state: CliState, sandbox_id: str) -> None:
    """Pause a sandbox: save its memory to disk and stop it until `stockade resume`."""
    info = state.sandbox(sandbox_id).pause()
    click.echo(f"{info.id} {info.status}")


@click.command()
@click.argument("sandbox_id", metavar="ID")
@pass_state
def resume(state: CliState, sandbox_id: str) -> None:
    """Resume a paused sandbox: its processes, memory and files come back."""
    info = state.sandbox(sandbox_id).resume()
    click.echo(f"{info.id} {info.status}")


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.option("-n", "count", type=int, default=1, show_default=True, help="How many forks.")
@click.option("--json", "as_json", is_flag=True, help="Print the new sandboxes as JSON.")
@pass_state
def fork(state: CliState, sandbox_id: str, count: int, as_json: bool) -> None:
    """Fork a running sandbox into COUNT independent copies; print their IDs."""
    forks = state.sandbox(sandbox_id).fork(count)
    if as_json:
        print_json([f.last_info.to_json() for f in forks])
        return
    for f in forks:
        click.echo(f.id)


def _snapshot_json(s: Snapshot) -> dict[str, object]:
    info = s.info
    return {
        "id": info.id,
        "sandbox_id": info.sandbox_id,
        "image": info.image,
        "name": info.name,
        "size": info.size_bytes,
        "created_at": info.created_at.isoformat() if info.created_at else None,
    }
