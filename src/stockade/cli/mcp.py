"""``stockade mcp``: serve the MCP tools (stockade.mcp) over stdio, for an agent's client
(Claude Desktop, Claude Code, Cursor) to start as a subprocess."""

from __future__ import annotations

import click

from stockade import Client
from stockade.cli._common import CliState, fail, pass_state

__all__ = ["mcp"]

_MISSING = (
    "`stockade mcp` needs the MCP SDK, which the `mcp` extra installs: pip install 'stockade[mcp]'"
)


@click.command("mcp")
@click.option(
    "--image", default="code-interpreter", show_default=True,
    help="Image of the session's default sandbox (run_code needs a code-interpreter image).",
)  # fmt: skip
@click.option(
    "--memory", type=click.IntRange(64, None), default=1024, show_default=True,
    help="Memory of the default sandbox, in MiB.",
)  # fmt: skip
@click.option(
    "--sandbox-timeout", type=click.FloatRange(1, 86400), default=3600, show_default=True,
    help="Lifetime of the default sandbox, in seconds.",
)  # fmt: skip
@click.option(
    "--idle-timeout", type=click.FloatRange(1, 86400), default=600, show_default=True,
    help="End the session's sandboxes after this many idle seconds (if the client vanishes).",
)  # fmt: skip
@pass_state
def mcp(
    state: CliState, image: str, memory: int, sandbox_timeout: float, idle_timeout: float
) -> None:
    """Serve Stockade's MCP tools over stdio, for AI agents.

    Connects like every other verb (STOCKADE_URL, STOCKADE_TOKEN). Each session gets a
    default sandbox, made on first use and terminated when the session ends. Tools:
    create_sandbox, run_command, run_code, read_file, write_file, list_files,
    expose_port, snapshot, fork, terminate. See docs/mcp.md.

    \b
    Claude Code:
      claude mcp add stockade --env STOCKADE_URL=... --env STOCKADE_TOKEN=... \\
        -- stockade mcp
    """
    try:
        from stockade.mcp import Connection, SessionDefaults, build_server
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "mcp":
            fail(_MISSING)
        raise
    # Fail now, on the client's stderr, rather than at the agent's first tool call.
    with Client(state.url, state.token, verify=state.verify) as client:
        client.health()
        url = client.url
    connection = Connection(url=url, token=state.token, verify=state.verify)
    defaults = SessionDefaults(
        image=image, memory=memory, timeout=sandbox_timeout, idle_timeout=idle_timeout
    )
    build_server(lambda _request: connection, defaults=defaults).run("stdio")
