"""``stockade tenant`` and ``stockade key``: tenants (with the server's admin token) and
their API keys."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click
from rich.table import Table

from stockade.cli._common import CliState, age, pass_state, print_json, stdout_console

__all__ = ["key", "tenant"]

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_QUOTAS = (
    ("max_sandboxes", "--max-sandboxes", click.IntRange(min=0), "N", "Live sandboxes."),
    ("max_cpu", "--max-cpu", click.FloatRange(min=0), "CORES", "Cores of all live sandboxes."),
    ("max_memory", "--max-memory", click.IntRange(min=0), "MIB", "MiB of all live sandboxes."),
    ("max_disk", "--max-disk", click.IntRange(min=0), "MIB", "MiB of snapshots and volumes."),
    ("creates_per_minute", "--creates-per-minute", click.IntRange(min=0), "N", "Creates a minute."),
    ("max_timeout", "--max-timeout", click.FloatRange(min=0, min_open=True), "SECONDS",
     "The longest sandbox timeout allowed."),
)  # fmt: skip


def _duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration such as 30d, 12h or 3600")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _quota_options(func: F) -> F:
    for field, flag, kind, metavar, help_text in reversed(_QUOTAS):
        func = click.option(flag, field, type=kind, metavar=metavar, help=help_text)(func)
    return func


def _when(iso: str | None) -> str:
    return "-" if iso is None else age(datetime.fromisoformat(iso.replace("Z", "+00:00")))


# ----------------------------------------------------------------------------- tenants


@click.group("tenant")
def tenant() -> None:
    """Tenants: who owns sandboxes, snapshots, images and volumes (admin token only).

    \b
    stockade tenant create acme --max-sandboxes 20 --max-memory 16384
    stockade key create --tenant acme --role user --name ci-bot
    """


@tenant.command("create")
@click.argument("name")
@_quota_options
@pass_state
def tenant_create(state: CliState, /, name: str, **quotas: float | None) -> None:
    """Create tenant NAME, with the quotas given (none: no limit)."""
    body = {"name": name, **{k: v for k, v in quotas.items() if v is not None}}
    click.echo(state.client().request("POST", "/v1/tenants", json=body)["name"])


@tenant.command("set")
@click.argument("name")
@_quota_options
@click.option("--unset", "unset", multiple=True, metavar="QUOTA",
              type=click.Choice([q[0] for q in _QUOTAS]),
              help="Remove this limit (repeatable), e.g. --unset max_sandboxes.")  # fmt: skip
@pass_state
def tenant_set(
    state: CliState, /, name: str, unset: tuple[str, ...], **quotas: float | None
) -> None:
    """Change quotas of tenant NAME (0 is a limit of zero; `ls` shows them)."""
    body: dict[str, float | None] = {k: v for k, v in quotas.items() if v is not None}
    for quota in unset:
        if quota in body:
            raise click.UsageError(f"--unset {quota} and a value for it: give one of them")
        body[quota] = None  # null in the API: no limit
    if not body:
        raise click.UsageError(
            "name at least one quota to set or --unset, e.g. --max-sandboxes 10"
        )
    state.client().request("PATCH", f"/v1/tenants/{name}", json=body)


@tenant.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def tenant_ls(state: CliState, as_json: bool) -> None:
    """List the tenants and their quotas."""
    found = state.client().request("GET", "/v1/tenants")["tenants"]
    if as_json:
        print_json(found)
        return
    table = Table(box=None, header_style="bold")
    width = max((len(t["name"]) for t in found), default=4)
    table.add_column("NAME", no_wrap=True, min_width=width)
    for column in ("AGE", "QUOTAS"):
        table.add_column(column, no_wrap=column != "QUOTAS")
    for t in found:
        quotas = ", ".join(f"{k}={v:g}" for k, v in sorted(t["quotas"].items())) or "-"
        table.add_row(t["name"], _when(t["created_at"]), quotas)
    stdout_console().print(table)


@tenant.command("rm")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@pass_state
def tenant_rm(state: CliState, names: tuple[str, ...]) -> None:
    """Remove tenants that own nothing any more, with their keys."""
    for name in names:
        state.client().request("DELETE", f"/v1/tenants/{name}")


# ----------------------------------------------------------------------------- keys


@click.group("key")
def key() -> None:
    """API keys of a tenant: give each agent, service or colleague its own."""


@key.command("create")
@click.option("--tenant", "tenant_name", metavar="NAME",
              help="Whose key (admin token only; a tenant admin's key makes its own).")
@click.option("--role", type=click.Choice(["readonly", "user", "admin"]), default="user",
              show_default=True, help="readonly reads; user also creates and runs; admin "
              "also manages keys.")
@click.option("--expires", metavar="DURATION", help="e.g. 30d, 12h, 3600 (default: never).")
@click.option("--name", metavar="TEXT", help="What the key is for, shown by `key ls`.")
@pass_state
def key_create(
    state: CliState, tenant_name: str | None, role: str, expires: str | None, name: str | None
) -> None:
    """Create a key and print it alone on stdout: it is never shown again."""
    body: dict[str, Any] = {"role": role}
    if tenant_name is not None:
        body["tenant"] = tenant_name
    if expires is not None:
        body["expires_in"] = _duration(expires)
    if name is not None:
        body["name"] = name
    made = state.client().request("POST", "/v1/keys", json=body)
    click.echo(made["key"])
    click.echo(f"{made['id']} ({made['role']} of tenant {made['tenant']})", err=True)


@key.command("ls")
@click.option("--tenant", "tenant_name", metavar="NAME", help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def key_ls(state: CliState, tenant_name: str | None, as_json: bool) -> None:
    """List the keys (never the keys themselves)."""
    params = {"tenant": tenant_name} if tenant_name else None
    found = state.client().request("GET", "/v1/keys", params=params)["keys"]
    if as_json:
        print_json(found)
        return
    table = Table(box=None, header_style="bold")
    # IDs and names are what a script or a reader copies: never cut short.
    for column in ("ID", "TENANT", "ROLE", "NAME"):
        width = max((len(k[column.lower()] or "-") for k in found), default=len(column))
        table.add_column(column, no_wrap=True, min_width=width)
    for column in ("AGE", "EXPIRES", "REVOKED"):
        table.add_column(column, no_wrap=True)
    for k in found:
        expires = k["expires_at"][:10] if k["expires_at"] else "never"
        table.add_row(k["id"], k["tenant"], k["role"], k["name"] or "-", _when(k["created_at"]),
                      expires, "yes" if k["revoked_at"] else "-")  # fmt: skip
    stdout_console().print(table)


@key.command("revoke")
@click.argument("key_ids", metavar="ID...", nargs=-1, required=True)
@pass_state
def key_revoke(state: CliState, key_ids: tuple[str, ...]) -> None:
    """Revoke keys at once: requests and open streams made with them stop."""
    for key_id in key_ids:
        state.client().request("DELETE", f"/v1/keys/{key_id}")
