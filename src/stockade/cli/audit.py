"""``stockade audit``: read the audit log (every mutating API call and every exec)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import click

from stockade.cli._common import CliState, pass_state, time_option

__all__ = ["audit"]

_PAGE = 1000
_FOLLOW_EVERY = 1.0


@click.command("audit")
@click.option("--tenant", "tenant_name", metavar="NAME", help="Only this tenant's (admin token).")
@click.option("--sandbox", "sandbox_id", metavar="ID", help="Only what touched this sandbox.")
@time_option("--since", "Only entries from then on")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="The most entries to print (before --follow goes on).")  # fmt: skip
@click.option("--follow", "-f", is_flag=True, help="Keep printing new entries as they come.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_state
def audit(
    state: CliState,
    tenant_name: str | None,
    sandbox_id: str | None,
    since: float | None,
    limit: int,
    follow: bool,
    as_json: bool,
) -> None:
    """Print the audit log, oldest first: who called what, and every exec with its argv,
    exit code and bytes in and out. A key sees its own tenant's entries only."""
    client = state.client()
    params: dict[str, str] = {}
    if tenant_name:
        params["tenant"] = tenant_name
    if sandbox_id:
        params["sandbox"] = sandbox_id
    if since is not None:
        params["since"] = f"{since:.6f}"
    after, left = 0, limit
    while True:
        query = {**params, "after": str(after), "limit": str(min(left, _PAGE))}
        page = client.request("GET", "/v1/audit", params=query)
        entries: list[dict[str, Any]] = page["entries"]
        _print(entries, as_json)
        after = int(page["next"])
        left -= len(entries)
        if left > 0 and len(entries) == _PAGE:
            continue  # more to print before following
        if not follow:
            return
        left = _PAGE
        time.sleep(_FOLLOW_EVERY)


def _print(entries: list[dict[str, Any]], as_json: bool) -> None:
    """One line per entry, never cut (IDs are what a reader copies), what was done last
    since an argv can be long; --json has every field."""
    for e in entries:
        if as_json:
            click.echo(json.dumps(e, separators=(",", ":")))
            continue
        fields = (
            _local(e["at"]), e["tenant"], e["key_id"] or "admin-token", e["sandbox"] or "-",
            _result(e), f"{e['duration'] * 1000:.0f}ms",
            f"in={_size(e['bytes_in'])} out={_size(e['bytes_out'])}", e["request_id"] or "-",
            _what(e),
        )  # fmt: skip
        click.echo("  ".join(fields))


def _what(e: dict[str, Any]) -> str:
    if e["kind"] == "exec":
        where = f" (in {e['workdir']} as {e['user']})" if e["workdir"] else ""
        return "exec " + " ".join(e["argv"] or []) + where
    return f"{e['method']} {e['path']}"


def _result(e: dict[str, Any]) -> str:
    if e["kind"] == "exec":
        return "-" if e["exit_code"] is None else f"exit {e['exit_code']}"
    return str(e["status"])


def _local(iso: str) -> str:
    """The API's UTC time in the reader's own zone."""
    when = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone()
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n}B"
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f}{unit}"
