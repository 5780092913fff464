"""``network``: show or change a sandbox's outbound policy (exposed ports: see ports.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table

from stockade import SandboxInfo
from stockade.cli._common import CliState, pass_state, print_json, stdout_console

F = TypeVar("F", bound=Callable[..., Any])


def network_options(func: F) -> F:
    """The outbound-policy options, shared by ``create`` and ``network``."""
    options = [
        click.option("--block-network", is_flag=True, help="Loopback only: no traffic in or out."),
        click.option(
            "--allow-cidr",
            multiple=True,
            metavar="CIDR",
            help="Allow only these IPv4 ranges out (repeatable).",
        ),
        click.option(
            "--allow-domain",
            multiple=True,
            metavar="NAME",
            help="Allow only these names out: example.com, *.example.org (repeatable).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def network_policy(
    block_network: bool, allow_cidr: tuple[str, ...], allow_domain: tuple[str, ...]
) -> dict[str, Any]:
    """The SDK keyword arguments for the options above."""
    return {
        "block_network": block_network,
        "outbound_cidr_allowlist": list(allow_cidr) if allow_cidr else None,
        "outbound_domain_allowlist": list(allow_domain) if allow_domain else None,
    }


def _describe(info: SandboxInfo) -> Table:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    net = info.network
    if net is not None:
        table.add_row("mode", net.mode)
        table.add_row("address", net.ip or "-")
        if net.outbound_cidr_allowlist is not None:
            table.add_row("allowed ranges", ", ".join(net.outbound_cidr_allowlist) or "-")
        if net.outbound_domain_allowlist is not None:
            table.add_row("allowed names", ", ".join(net.outbound_domain_allowlist) or "-")
        if net.reason:
            table.add_row("no network", net.reason)
    for p in info.ports:
        table.add_row(f"port {p.port}", ("public " if p.public else "") + (p.host or p.path))
    return table


@click.command()
@click.argument("sandbox_id", metavar="ID")
@network_options
@click.option("--open", "open_", is_flag=True, help="Back to the default: public egress.")
@click.option("--json", "as_json", is_flag=True, help="Print the sandbox record as JSON.")
@pass_state
def network(
    state: CliState,
    sandbox_id: str,
    block_network: bool,
    allow_cidr: tuple[str, ...],
    allow_domain: tuple[str, ...],
    open_: bool,
    as_json: bool,
) -> None:
    """Show a sandbox's network, or change its outbound policy.

    \b
    Examples:
      stockade network sb-…                          # show
      stockade network sb-… --allow-domain pypi.org --allow-domain "*.pythonhosted.org"
      stockade network sb-… --block-network
      stockade network sb-… --open
    """
    sb = state.sandbox(sandbox_id)
    if open_ or block_network or allow_cidr or allow_domain:
        if open_ and (block_network or allow_cidr or allow_domain):
            raise click.UsageError("--open cannot be combined with another policy option")
        sb.set_network(**network_policy(block_network, allow_cidr, allow_domain))
    if as_json:
        print_json(sb.last_info.to_json())
    else:
        stdout_console().print(_describe(sb.last_info))
