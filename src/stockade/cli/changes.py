"""``stockade changes``: what changed in a sandbox's files, like ``git status --short``."""

from __future__ import annotations

import json

import click

from stockade.cli._common import CliState, pass_state, print_json, stderr_console

_LETTERS = {"added": "A", "modified": "M", "deleted": "D"}


def _shown(path: str) -> str:
    # A name may hold a newline or an escape sequence (sandboxed code chose it): quote
    # such a path, as git does, so that each change stays one harmless line.
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c == '"' for c in path):
        return json.dumps(path)
    return path


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.option(
    "--since", metavar="SNAPSHOT",
    help="Compare with this memory snapshot (sn-…) instead of the image.",
)  # fmt: skip
@click.option(
    "--json", "as_json", is_flag=True,
    help='Print {"changes": [{"path", "kind"}], "truncated": …} instead.',
)  # fmt: skip
@pass_state
def changes(state: CliState, sandbox_id: str, since: str | None, as_json: bool) -> None:
    """List the files added (A), modified (M) or deleted (D) in a sandbox.

    Compared with the sandbox's image, or with a memory snapshot (--since). A deleted
    directory is one line; an added one is listed with everything in it. Works on a
    paused sandbox without waking it.

    \b
    Examples:
      stockade changes sb-123
      stockade changes sb-123 --since sn-456
    """
    found = state.sandbox(sandbox_id).files.changes(since=since)
    if as_json:
        print_json(
            {
                "changes": [{"path": path, "kind": kind} for path, kind in found],
                "truncated": found.truncated,
            }
        )
        return
    for path, kind in found:
        click.echo(f"{_LETTERS.get(kind, '?')} {_shown(path)}")
    if found.truncated:
        stderr_console().print(
            f"… the list is incomplete ({len(found)} shown): more paths changed, or "
            "directories nest too deep to walk",
            style="yellow",
        )
