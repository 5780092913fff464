"""``stockade cp``: copy a file into or out of a sandbox, streamed in both directions."""

from __future__ import annotations

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
