"""Exposed ports: ``expose``, ``unexpose`` and ``port-forward``.

``expose`` serves a sandbox's port through the server's proxy (HTTP and WebSocket) and
prints its URL; ``unexpose`` stops that.

``port-forward`` reaches an exposed port from this machine over plain TCP. Sandbox
addresses are only reachable from the server's host, and plain TCP (a database, SSH)
cannot go through the HTTP proxy, so it listens locally and carries each accepted
connection over its own WebSocket to the server's
``/v1/sandboxes/{id}/ports/{port}/connect``, which opens the TCP connection inside. Bytes
travel as binary messages; an empty message says "no more from this side", so a client
that half-closes after its request still gets the answer (see
``stockade.server.api.ingress``).

One event loop serves every connection. An error no later connection could escape (a
wrong token, an unknown sandbox, a port that was not exposed) ends the command with exit
code 1; anything else (nothing listening in the sandbox yet) ends only that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import click
from rich.text import Text

from stockade import AsyncClient, InvalidArgumentError, SandboxTerminatedError, StockadeError
from stockade._base import CHUNK_SIZE, sandbox_path
from stockade._transport import AsyncWebSocket
from stockade.cli._common import CliState, pass_state, print_error, stdout_console

__all__ = ["expose", "forward_port", "port_forward", "unexpose"]

_ENDED = ("terminated", "failed")


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--public", is_flag=True, help="Reachable without the sandbox's access token.")
@pass_state
def expose(state: CliState, sandbox_id: str, port: int, public: bool) -> None:
    """Expose PORT of sandbox ID through the server and print its URL.

    Exposing an exposed port again only changes --public; `stockade unexpose` undoes it.
    """
    sb = state.sandbox(sandbox_id)
    click.echo(sb.expose(port, public=public))
    if not public:
        click.echo(f"send the header X-Stockade-Access-Token: {sb.access_token}", err=True)


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.argument("port", type=click.IntRange(1, 65535))
@pass_state
def unexpose(state: CliState, sandbox_id: str, port: int) -> None:
    """Stop exposing PORT of sandbox ID: its URL answers 404 from now on.

    A server listening on it in the sandbox keeps running. Exits 1 if PORT is not exposed.
    """
    state.sandbox(sandbox_id).unexpose(port)


@click.command("port-forward")
@click.argument("sandbox_id", metavar="ID")
@click.argument("port", type=click.IntRange(1, 65535))
@click.option(
    "--local", "local_port", type=click.IntRange(0, 65535), metavar="LOCAL_PORT",
    help="Local port to listen on [default: PORT; 0 picks a free one].",
)  # fmt: skip
@click.option(
    "--address", default="127.0.0.1", show_default=True, help="Local address to listen on."
)
@pass_state
def port_forward(
    state: CliState, sandbox_id: str, port: int, local_port: int | None, address: str
) -> None:
    """Forward a local port to exposed PORT of sandbox ID, until Ctrl-C.

    Expose the port first (`stockade expose`, or `create --port`). Any TCP protocol works:

    \b
      stockade port-forward sb-… 5432 --local 15432 &
      psql -h 127.0.0.1 -p 15432 -U postgres
    """

    sandbox_id = state.sandbox_id(sandbox_id)  # a name resolves here

    def ready(host: str, bound: int) -> None:
        stdout_console().print(
            Text(f"Forwarding {host}:{bound} -> {sandbox_id}:{port} (Ctrl-C to stop)")
        )

    async def main() -> None:
        async with AsyncClient(state.url, state.token, verify=state.verify) as client:
            await forward_port(
                client,
                sandbox_id,
                port,
                address=address,
                local_port=port if local_port is None else local_port,
                on_ready=ready,
            )

    asyncio.run(main())


async def forward_port(
    client: AsyncClient,
    sandbox_id: str,
    port: int,
    *,
    address: str = "127.0.0.1",
    local_port: int = 0,
    on_ready: Callable[[str, int], object] | None = None,
    on_error: Callable[[StockadeError], object] | None = None,
) -> None:
    """Forward connections to ``address:local_port`` to ``port`` in ``sandbox_id``.

    Runs until cancelled, or raises the first error that every later connection would meet
    too (any 4xx answer). ``on_ready(host, port)`` is called once listening (``local_port``
    0 picks a free port); ``on_error`` gets the errors that end a single connection
    (default: print them).

    Example::

        async with AsyncClient() as client:
            await forward_port(client, "sb-0123456789abcdef", 5432, local_port=15432)
    """
    report = on_error or (lambda exc: print_error(str(exc)))
    await _check_running(client, sandbox_id)
    path = sandbox_path(sandbox_id, f"/ports/{port}/connect")
    fatal: asyncio.Future[StockadeError] = asyncio.get_running_loop().create_future()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            ws = await client.connect_ws(path)
            try:
                await _relay(reader, writer, ws)
            finally:
                await ws.close()
        except StockadeError as exc:
            if 400 <= exc.status < 500:
                if not fatal.done():
                    fatal.set_result(exc)
            else:
                report(exc)
        except OSError:
            pass  # the local client went away: only its connection ends
        finally:
            handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        server = await asyncio.start_server(handle, address, local_port)
    except OSError as exc:
        raise InvalidArgumentError(
            f"cannot listen on {address}:{local_port}: {exc.strerror or exc}; "
            "pick another local port with --local"
        ) from None
    try:
        host, bound = server.sockets[0].getsockname()[:2]
        if on_ready is not None:
            on_ready(str(host), int(bound))
        raise await fatal
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def _check_running(client: AsyncClient, sandbox_id: str) -> None:
    """Fail at once for a wrong token or an unknown or ended sandbox, not at first use."""
    data = await client.request("GET", sandbox_path(sandbox_id))
    status = data.get("status") if isinstance(data, dict) else None
    if status in _ENDED:
        raise SandboxTerminatedError(
            f"sandbox {sandbox_id} is {status}: port-forward needs a running sandbox"
        )


async def _relay(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ws: AsyncWebSocket
) -> None:
    """Shuttle bytes between one local connection and its WebSocket until the server closes."""

    async def local_to_sandbox() -> None:
        try:
            while data := await reader.read(CHUNK_SIZE):
                if not await ws.send(data):
                    return
        except OSError:
            await ws.close()  # a reset local client: drop the remote side too
            return
        await ws.send(b"")  # EOF: the server half-closes, and the answer still comes back

    sending = asyncio.create_task(local_to_sandbox())
    try:
        # The server closes the WebSocket once the sandbox closed its side.
        while (message := await ws.recv()) is not None:
            if isinstance(message, str | bytes):
                writer.write(message.encode() if isinstance(message, str) else message)
                await writer.drain()
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
