"""What every CLI verb shares: the connection, option parsing and error output."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.text import Text

from stockade import Client, Sandbox

F = TypeVar("F", bound=Callable[..., Any])

ClientFactory = Callable[[str | None, str | None], Client]


@dataclass
class CliState:
    """The global options and the one :class:`Client` a command uses.

    ``client_factory`` is the test seam: tests pass a factory that builds a client on an
    ``httpx.MockTransport``; without one, a :class:`Client` that checks certificates with
    ``ca_bundle`` (``--ca-bundle``) or else ``$STOCKADE_CA_BUNDLE``.
    """

    url: str | None = None
    token: str | None = None
    ca_bundle: str | None = None
    client_factory: ClientFactory | None = None
    _client: Client | None = field(default=None, repr=False)

    @property
    def verify(self) -> str | bool:
        """The ``verify=`` of the clients a command makes."""
        return self.ca_bundle or True

    def client(self) -> Client:
        """The connection to the server, made on first use."""
        if self._client is None:
            if self.client_factory is not None:
                self._client = self.client_factory(self.url, self.token)
            else:
                self._client = Client(self.url, self.token, verify=self.verify)
        return self._client

    def sandbox(self, sandbox_id: str) -> Sandbox:
        """The sandbox ``sandbox_id``, or the live one with that name (a name never looks
        like an ID: ``sb-…``); raises NotFoundError when there is none."""
        if sandbox_id.startswith("sb-"):
            return Sandbox.from_id(sandbox_id, client=self.client())
        return Sandbox.from_name(sandbox_id, client=self.client())

    def sandbox_id(self, sandbox_id: str) -> str:
        """The ID of sandbox ``sandbox_id`` (an ID or a name), asking the server for a name."""
        return sandbox_id if sandbox_id.startswith("sb-") else self.sandbox(sandbox_id).id

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


pass_state = click.make_pass_decorator(CliState, ensure=True)


def stderr_console() -> Console:
    # Made per use: click's test runner swaps sys.stderr, and a console made at import
    # time would keep writing to the old one.
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """``error: message`` in red on stderr."""
    stderr_console().print(Text(f"error: {message}", style="red"))


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as an error and exit with ``code``."""
    print_error(message)
    raise click.exceptions.Exit(code)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def parse_pairs(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> dict[str, str]:
    """Click callback turning repeated ``KEY=VALUE`` options into a dict."""
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        pairs[key] = value
    return pairs


def command_args(args: Sequence[str]) -> list[str]:
    """The command after the options; a leading ``--`` separator is dropped."""
    argv = list(args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise click.UsageError("missing the command to run (put it after `--`)")
    return argv


def env_option(help_text: str) -> Callable[[F], F]:
    return click.option(
        "--env",
        "-e",
        "env",
        multiple=True,
        callback=parse_pairs,
        metavar="KEY=VALUE",
        help=help_text,
    )


def sandbox_options(timeout_help: str) -> Callable[[F], F]:
    """The options that shape a new sandbox, shared by ``create`` and ``run``."""
    options = [
        click.option(
            "--image", default="python", show_default=True, help="Base image (see `images`)."
        ),
        click.option("--cpu", type=float, help="CPU cores, fractional allowed [server: 1]."),
        click.option("--memory", type=int, help="Memory limit in MiB [server: 512]."),
        click.option("--disk", type=int, help="Disk limit in MiB [server: 1024]."),
        click.option("--timeout", type=float, help=timeout_help),
        env_option("Environment variable for the sandbox (repeatable)."),
        click.option("--workdir", help="Working directory (absolute path) [default: /]."),
    ]

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def age(when: datetime | None, now: datetime | None = None) -> str:
    """``when`` as a short age: ``42s``, ``5m``, ``3h``, ``2d``."""
    if when is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """A point in time as Unix seconds: ``24h``, ``7d``, ``90m`` (that long ago), an ISO
    8601 date or time (UTC unless it says), or Unix seconds."""
    raw = text.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", raw)
    if match is not None:
        ago = float(match.group(1)) * _AGO_UNITS[match.group(2)]
        return (time.time() if now is None else now) - ago
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a time: give e.g. 24h or 7d (that long ago), 2026-12-01, "
            "2026-12-01T09:30:00Z or Unix seconds"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def time_option(name: str, help_text: str) -> Callable[[F], F]:
    """An option taking a time as :func:`parse_when` reads it (None when not given)."""

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
        return None if value is None else parse_when(value)

    return click.option(
        name,
        metavar="WHEN",
        callback=convert,
        help=f"{help_text}: 24h or 7d ago, an ISO date or time (UTC), or Unix seconds.",
    )
