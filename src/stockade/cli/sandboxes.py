"""Sandbox lifecycle verbs: ``create``, ``ls``, ``info``, ``rm``, ``logs`` and
``set-timeout``."""

from __future__ import annotations

import shlex
import sys

import click
from rich.table import Table
from rich.text import Text

from stockade import Sandbox, SandboxInfo, StockadeError
from stockade.cli._common import (
    CliState,
    age,
    fail,
    parse_pairs,
    pass_state,
    print_error,
    print_json,
    sandbox_options,
    stdout_console,
)
from stockade.cli.images import ensure_image
from stockade.cli.network import network_options, network_policy

_STATUS_STYLE = {"running": "green", "starting": "yellow", "failed": "red"}


@click.command()
@sandbox_options("Seconds before the sandbox is stopped [server: 300, max 86400].")
@click.option(
    "--tag", "tags", multiple=True, callback=parse_pairs, metavar="KEY=VALUE",
    help="Tag to find it by later (repeatable).",
)  # fmt: skip
@click.option(
    "--entrypoint",
    metavar="CMD",
    help='Main process, as a shell-quoted line (e.g. "python3 -m http.server"); '
    "the sandbox ends when it exits.",
)
@network_options
@click.option(
    "--port", "ports", multiple=True, type=click.IntRange(1, 65535), metavar="PORT",
    help="Expose this port: reachable through the server with the access token (repeatable).",
)  # fmt: skip
@click.option(
    "--public-port", "public_ports", multiple=True, type=click.IntRange(1, 65535),
    metavar="PORT", help="Expose this port to anyone, without the access token (repeatable).",
)  # fmt: skip
@click.option(
    "--volume", "volumes", multiple=True, callback=parse_pairs, metavar="PATH=VOLUME",
    help="Mount a volume (see `volume create`) at PATH (repeatable).",
)  # fmt: skip
@click.option(
    "--idle-timeout", type=float, metavar="SECONDS",
    help="End (or pause) it after this long without exec, file or API activity.",
)  # fmt: skip
@click.option(
    "--on-timeout", type=click.Choice(["terminate", "pause"]), default=None,
    help="What --timeout and --idle-timeout do [default: terminate].",
)  # fmt: skip
@click.option("--auto-resume", is_flag=True, help="Wake from pause by itself on its next call.")
@click.option(
    "--snapshot", metavar="SNAPSHOT", help="Restore this memory snapshot instead of booting."
)
@click.option(
    "--name", metavar="NAME",
    help="Unique among your live sandboxes; other verbs then take it in place of the ID.",
)  # fmt: skip
@click.option(
    "--user", metavar="USER", help="Run its commands as this user of the image, or UID[:GID]."
)
@click.option(
    "--readiness", metavar="CHECK",
    help="Return once this passes inside it: a PORT listening, an http:// URL answering "
    "2xx/3xx, or a shell-quoted command exiting 0.",
)  # fmt: skip
@click.option(
    "--readiness-timeout", type=float, metavar="SECONDS",
    help="How long --readiness may take [default: 60]; then the sandbox is terminated.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the sandbox record as JSON.")
@pass_state
def create(
    state: CliState,
    image: str,
    cpu: float | None,
    memory: int | None,
    disk: int | None,
    timeout: float | None,
    env: dict[str, str],
    workdir: str | None,
    tags: dict[str, str],
    entrypoint: str | None,
    block_network: bool,
    allow_cidr: tuple[str, ...],
    allow_domain: tuple[str, ...],
    ports: tuple[int, ...],
    public_ports: tuple[int, ...],
    volumes: dict[str, str],
    idle_timeout: float | None,
    on_timeout: str | None,
    auto_resume: bool,
    snapshot: str | None,
    name: str | None,
    user: str | None,
    readiness: str | None,
    readiness_timeout: float | None,
    as_json: bool,
) -> None:
    """Start a sandbox (or restore a snapshot) and print its ID.

    \b
    Example:
      stockade create --name web --entrypoint "python3 -m http.server 8000" --readiness 8000
    """
    argv = shlex.split(entrypoint) if entrypoint else None
    if entrypoint is not None and not argv:
        fail("--entrypoint is empty; give the command to run")
    client = state.client()
    if snapshot is None:
        image = ensure_image(client, image)
    sb = Sandbox.create(
        image=image, cpu=cpu, memory=memory, disk=disk, timeout=timeout, env=env,
        workdir=workdir, tags=tags, entrypoint=argv, client=client,
        ports=[*ports, *({"port": p, "public": True} for p in public_ports)],
        volumes=volumes, idle_timeout=idle_timeout, on_timeout=on_timeout,
        auto_resume=auto_resume, snapshot=snapshot, name=name, user=user,
        readiness=_readiness(readiness), readiness_timeout=readiness_timeout,
        **network_policy(block_network, allow_cidr, allow_domain),
    )  # fmt: skip
    if as_json:
        print_json(sb.last_info.to_json())
    else:
        click.echo(sb.id)


def _readiness(check: str | None) -> int | str | list[str] | None:
    """--readiness as the SDK takes it: a port, a URL, or a command line split as sh would."""
    if check is None:
        return None
    if check.isdigit():
        return int(check)
    if check.startswith(("http://", "https://")):
        return check
    argv = shlex.split(check)
    if not argv:
        fail("--readiness is empty; give a port, an http:// URL or a command")
    return argv


@click.command("ls")
@click.option("--status", help="Only sandboxes in this status (starting, running, ...).")
@click.option(
    "--tag", "tags", multiple=True, callback=parse_pairs, metavar="KEY=VALUE",
    help="Only sandboxes with this tag (repeatable; all must match).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def ls(state: CliState, status: str | None, tags: dict[str, str], as_json: bool) -> None:
    """List sandboxes, newest first."""
    found = [sb.last_info for sb in Sandbox.list(tags=tags, status=status, client=state.client())]
    if as_json:
        print_json([info.to_json() for info in found])
        return
    stdout_console().print(_table(found))


def _table(infos: list[SandboxInfo]) -> Table:
    table = Table(box=None, header_style="bold")
    # IDs are what a user copies into the next command: other columns shrink, never them.
    table.add_column("ID", no_wrap=True, min_width=max((len(i.id) for i in infos), default=2))
    for column in ("STATUS", "REASON", "IMAGE", "CPU", "MEM", "AGE", "TAGS"):
        table.add_column(column, no_wrap=column != "TAGS")
    for info in infos:
        table.add_row(
            info.id,
            Text(info.status, style=_STATUS_STYLE.get(info.status, "")),
            info.reason or "",
            info.image,
            f"{info.cpu:g}",
            f"{info.memory} MiB",
            age(info.created_at),
            ",".join(f"{k}={v}" for k, v in info.tags.items()),
        )
    return table


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@pass_state
def info(state: CliState, sandbox_id: str, as_json: bool) -> None:
    """Show one sandbox's record."""
    record = state.sandbox(sandbox_id).last_info
    if as_json:
        print_json(record.to_json())
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in record.to_json().items():
        if key == "ports":
            value = ", ".join(
                f"{p['port']}{' (public)' if p['public'] else ''} {p['host'] or p['path']}"
                for p in value
            )
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items() if v is not None) or "-"
        elif isinstance(value, list):
            value = shlex.join(value)
        table.add_row(key, "-" if value in (None, "") else str(value))
    stdout_console().print(table)


@click.command()
@click.argument("sandbox_ids", metavar="ID...", nargs=-1, required=True)
@pass_state
def rm(state: CliState, sandbox_ids: tuple[str, ...]) -> None:
    """Terminate sandboxes (ending one that already ended is fine)."""
    failed = False
    for sandbox_id in sandbox_ids:
        try:
            state.sandbox(sandbox_id).terminate()
        except StockadeError as exc:
            # Keep going: one bad ID should not keep the others running.
            print_error(str(exc))
            failed = True
        else:
            click.echo(sandbox_id)
    if failed:
        raise click.exceptions.Exit(1)


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the sandbox ends.")
@pass_state
def logs(state: CliState, sandbox_id: str, follow: bool) -> None:
    """Print the output of a sandbox's entrypoint."""
    out = sys.stdout
    for chunk in state.sandbox(sandbox_id).stream_logs(follow=follow):
        out.write(chunk)
        out.flush()


@click.command("set-timeout")
@click.argument("sandbox_id", metavar="ID")
@click.argument("seconds", type=float)
@click.option("--json", "as_json", is_flag=True, help="Print the sandbox record as JSON.")
@pass_state
def set_timeout(state: CliState, sandbox_id: str, seconds: float, as_json: bool) -> None:
    """Make a running sandbox end SECONDS from now (1-86400), sooner or later than it
    would have, and print when that is."""
    record = state.sandbox(sandbox_id).set_timeout(seconds)
    if as_json:
        print_json(record.to_json())
    elif record.expires_at is not None:
        click.echo(record.expires_at.isoformat())
