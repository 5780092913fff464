"""``stockade usage``: what each tenant used, to bill from."""

from __future__ import annotations

from datetime import datetime

import click
from rich.table import Table

from stockade.cli._common import CliState, pass_state, print_json, stdout_console, time_option
from stockade.models import TenantUsage

__all__ = ["usage"]

# (header, figure, format): seconds to a tenth, GiB-hours to a thousandth.
_COLUMNS = (
    ("SANDBOX-S", "sandbox_seconds", "{:,.1f}"),
    ("CPU-S", "cpu_seconds", "{:,.1f}"),
    ("MEMORY GiB-S", "memory_gib_seconds", "{:,.1f}"),
    ("SNAPSHOT GiB-H", "snapshot_gib_hours", "{:,.3f}"),
    ("VOLUME GiB-H", "volume_gib_hours", "{:,.3f}"),
    ("EXECS", "execs", "{:,}"),
)


def _when(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


@click.command("usage")
@click.option("--tenant", "tenant_name", metavar="NAME",
              help="Only this tenant's (admin token; a key reads its own).")  # fmt: skip
@time_option("--since", "From then on [default: the start of this month, UTC]")
@time_option("--until", "Up to then [default: now]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def usage(
    state: CliState,
    tenant_name: str | None,
    since: float | None,
    until: float | None,
    as_json: bool,
) -> None:
    """Print each tenant's usage over a window: sandbox time, CPU time, memory (as
    allocated) × time, snapshot and volume storage × time, and execs, by whole minutes.

    \b
    stockade usage                          # this month so far
    stockade usage --since 7d --tenant acme
    stockade usage --since 2026-11-01 --until 2026-12-01 --json
    """
    report = state.client().usage(tenant_name, since=since, until=until)
    if as_json:
        print_json(report.to_json())
        return
    table = Table(box=None, header_style="bold", title_justify="left",
                  title=f"{_when(report.since)} to {_when(report.until)}")  # fmt: skip
    width = max((len(t.tenant) for t in report.tenants), default=6)
    table.add_column("TENANT", no_wrap=True, min_width=width)
    for header, _, _ in _COLUMNS:
        table.add_column(header, justify="right", no_wrap=True)
    for used in report.tenants:
        table.add_row(used.tenant, *(_cell(used, figure, fmt) for _, figure, fmt in _COLUMNS))
    stdout_console().print(table)


def _cell(used: TenantUsage, figure: str, fmt: str) -> str:
    return fmt.format(getattr(used, figure))
