"""``stockade cp``: copy a file into or out of a sandbox, streamed in both directions; and
``mv``, ``chmod``, ``watch`` and ``url`` (a signed URL for one file)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path, PurePosixPath

import click

from stockade import Files, NotFoundError
from stockade.cli._common import CliState, fail, pass_state

# `sb-…:/path` names a sandbox path; anything else is local (`-` is stdin/stdout).
_REMOTE = re.compile(r"^(sb-[^:/\s]+):(.*)$")


def _remote(spec: str) -> tuple[str, str] | None:
    match = _REMOTE.match(spec)
    return (match.group(1), match.group(2)) if match else None


def _is_dir(files: Files, path: str) -> bool:
    try:
        return files.stat(path).is_dir
    except NotFoundError:
        return False


@click.command()
@click.argument("source", metavar="SRC")
@click.argument("dest", metavar="DEST")
@pass_state
def cp(state: CliState, source: str, dest: str) -> None:
    """Copy a file between this machine and a sandbox.

    One side is ID:PATH (an absolute path in the sandbox), the other a local path, or `-`
    for stdin/stdout. Directories are not supported yet: archive them with tar first.

    \b
    Examples:
      stockade cp ./data.csv sb-123:/app/data.csv
      stockade cp sb-123:/app/out.json .
    """
    src_remote, dest_remote = _remote(source), _remote(dest)
    if (src_remote is None) == (dest_remote is None):
        fail("exactly one of SRC and DEST must be ID:PATH (e.g. sb-123:/app/file)")
    if src_remote is not None:
        sandbox_id, path = src_remote
        files = state.sandbox(sandbox_id).files
        if dest == "-":
            files.read_to(path, sys.stdout.buffer)
            return
        target = Path(dest)
        if target.is_dir():
            target = target / (PurePosixPath(path).name or "file")
        files.read_to(path, target)
        return
    assert dest_remote is not None
    sandbox_id, path = dest_remote
    files = state.sandbox(sandbox_id).files
    name = "stdin" if source == "-" else Path(source).name
    if not path:
        fail(f"give the destination path, e.g. {sandbox_id}:/app/{name}")
    if path.endswith("/") or _is_dir(files, path):
        path = str(PurePosixPath(path) / name)  # like cp: into the directory
    if source == "-":
        files.write(path, sys.stdin.buffer)
        return
    local = Path(source)
    if local.is_dir():
        fail(f"{source} is a directory; only files are supported for now (tar it first)")
    if not local.exists():
        fail(f"{source} does not exist")
    with local.open("rb") as data:
        files.write(path, data)


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.argument("src")
@click.argument("dst")
@pass_state
def mv(state: CliState, sandbox_id: str, src: str, dst: str) -> None:
    """Move or rename SRC to DST inside a sandbox (a file at DST is replaced).

    \b
    Example:
      stockade mv sb-123 /app/out.tmp /app/out.json
    """
    state.sandbox(sandbox_id).files.rename(src, dst)


def _mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        fail(f"MODE {value!r} is not octal: give it as chmod(1) does, e.g. 755 or 0644")
    if not 0 <= mode <= 0o7777:
        fail(f"MODE {value} is out of range: 0 to 7777 (octal)")
    return mode


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.argument("mode")
@click.argument("path")
@pass_state
def chmod(state: CliState, sandbox_id: str, mode: str, path: str) -> None:
    """Set the permission bits of PATH to MODE (octal, as chmod(1): 755, 0644).

    \b
    Example:
      stockade chmod sb-123 755 /app/run.sh
    """
    state.sandbox(sandbox_id).files.chmod(path, _mode(mode))


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.argument("path")
@click.option("--recursive", "-r", is_flag=True, help="Watch the whole tree under PATH.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@pass_state
def watch(state: CliState, sandbox_id: str, path: str, recursive: bool, as_json: bool) -> None:
    """Print changes under PATH as they happen, until interrupted (Ctrl-C).

    Each line is `TYPE PATH` (`rename FROM -> TO`); types are create, modify, delete and
    rename, plus overflow and limit when events were lost or a tree is too large.

    \b
    Example:
      stockade watch sb-123 /app --recursive
    """
    files = state.sandbox(sandbox_id).files
    try:
        with files.watch(path, recursive=recursive) as events:
            for event in events:
                if as_json:
                    body = {"type": event.type, "path": event.path, "dest": event.dest,
                            "dir": event.is_dir, "message": event.message}  # fmt: skip
                    click.echo(json.dumps({k: v for k, v in body.items() if v is not None}))
                elif event.path is None:
                    click.echo(f"{event.type} {event.message or ''}".rstrip())
                elif event.dest is not None:
                    click.echo(f"{event.type} {event.path} -> {event.dest}")
                else:
                    click.echo(f"{event.type} {event.path}")
    except KeyboardInterrupt:
        pass


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.argument("path")
@click.option("--upload", is_flag=True, help="A URL to PUT the file (default: to GET it).")
@click.option(
    "--expires", default=3600, show_default=True, type=click.IntRange(1, 7 * 24 * 3600),
    help="Lifetime in seconds (at most 7 days).",
)  # fmt: skip
@pass_state
def url(state: CliState, sandbox_id: str, path: str, upload: bool, expires: int) -> None:
    """Print a time-limited URL that reads (or with --upload writes) PATH with no API key.

    \b
    Examples:
      curl -o out.bin "$(stockade url sb-123 /app/out.bin)"
      curl -T in.bin "$(stockade url sb-123 /app/in.bin --upload)"
    """
    files = state.sandbox(sandbox_id).files
    signed = files.upload_url if upload else files.download_url
    click.echo(signed(path, expires=expires))
