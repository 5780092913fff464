"""One MCP session's view of Stockade: its client, its default sandbox and the sandboxes it
made, and their end when the session ends.

Lifetime: a :class:`SessionSandboxes` lives exactly as long as one MCP session (the MCP
SDK enters a server's lifespan once per session, stdio or HTTP). Every sandbox it made
has an ``idle_timeout``, so a client that vanishes without ending its session (a killed
process, a dropped connection) leaks nothing for longer than that; a session that ends
cleanly terminates them at once. Concurrency: tool calls of one session may run at once;
the default sandbox is made once, under a lock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import anyio
from mcp.server.fastmcp.exceptions import ToolError

from stockade._async.client import AsyncClient
from stockade._async.sandbox import AsyncSandbox
from stockade._base import VerifyTypes
from stockade.errors import SandboxTerminatedError, StockadeError

__all__ = ["Connection", "SessionDefaults", "SessionSandboxes"]


@dataclass(frozen=True)
class Connection:
    """How a session reaches Stockade, and as whom. ``None`` reads ``$STOCKADE_URL`` and
    ``$STOCKADE_TOKEN`` (the CLI's way); the server's ``/mcp`` passes its own loopback
    address and the caller's bearer credential, so the API checks every call as the
    caller's. ``public_url`` is the address the caller knows the server by (exposed
    ports' URLs are rewritten to it); ``None`` keeps ``url``."""

    url: str | None = None
    token: str | None = None
    verify: VerifyTypes = True
    public_url: str | None = None


@dataclass(frozen=True)
class SessionDefaults:
    """The session's default sandbox: made on first use, ended with the session.

    ``code-interpreter`` has Python with numpy, pandas and matplotlib and the Jupyter
    kernel that ``run_code`` needs. ``timeout`` and ``idle_timeout`` are seconds."""

    image: str = "code-interpreter"
    memory: int = 1024
    timeout: float = 3600
    idle_timeout: float = 600


class SessionSandboxes:
    """The sandboxes of one MCP session (see the module docstring for its lifetime)."""

    def __init__(self, defaults: SessionDefaults) -> None:
        self.defaults = defaults
        self._client: AsyncClient | None = None
        self._connection: Connection | None = None
        self._default: AsyncSandbox | None = None
        # Made by this session, ended with it unless the caller asked to keep them.
        self._owned: dict[str, AsyncSandbox] = {}
        self._lock = anyio.Lock()

    def client(self, connection: Connection) -> AsyncClient:
        """The session's client, made on the first call with the first credential.

        A later call with another credential is refused: the session's sandboxes belong
        to whoever opened it, and a second key must not borrow them.
        """
        if self._connection is None:
            self._connection = connection
            self._client = AsyncClient(connection.url, connection.token, verify=connection.verify)
        elif (connection.url, connection.token) != (self._connection.url, self._connection.token):
            raise ToolError(
                "this MCP session was opened with another credential; open a new session with yours"
            )
        assert self._client is not None
        return self._client

    @property
    def public_url(self) -> str | None:
        return self._connection.public_url if self._connection else None

    def own(self, sandbox: AsyncSandbox) -> None:
        """End ``sandbox`` with the session."""
        self._owned[sandbox.id] = sandbox

    def disown(self, sandbox_id: str) -> None:
        self._owned.pop(sandbox_id, None)
        if self._default is not None and self._default.id == sandbox_id:
            self._default = None

    async def resolve(self, connection: Connection, sandbox_id: str | None) -> AsyncSandbox:
        """The sandbox ``sandbox_id`` (which the server checks is the caller's), or the
        session's default one, made now if it does not exist yet."""
        client = self.client(connection)
        if sandbox_id:
            return await AsyncSandbox.from_id(sandbox_id, client=client)
        async with self._lock:
            if self._default is None:
                d = self.defaults
                self._default = await AsyncSandbox.create(
                    image=d.image,
                    memory=d.memory,
                    timeout=d.timeout,
                    idle_timeout=d.idle_timeout,
                    client=client,
                )
                self.own(self._default)
            return self._default

    @asynccontextmanager
    async def use(
        self, connection: Connection, sandbox_id: str | None
    ) -> AsyncIterator[AsyncSandbox]:
        """:meth:`resolve`, and when the default sandbox turns out to have ended (its
        lifetime or idle limit), forget it so the next call starts a fresh one, and say so."""
        sandbox = await self.resolve(connection, sandbox_id)
        try:
            yield sandbox
        except SandboxTerminatedError as exc:
            if sandbox_id or self._default is not sandbox:
                raise
            self.disown(sandbox.id)
            raise ToolError(
                f"{exc}. This was the session's default sandbox {sandbox.id}; it has ended "
                "(its files are gone). Call again: the next call starts a fresh one."
            ) from exc

    async def aclose(self) -> None:
        """Terminate the sandboxes the session made and close its client; never raises,
        and finishes even when the session is being cancelled (bounded to 30 s)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            async with anyio.create_task_group() as tg:
                for sandbox in list(self._owned.values()):
                    tg.start_soon(_terminate_quietly, sandbox)
            self._owned.clear()
            self._default = None
            if self._client is not None:
                await self._client.aclose()


async def _terminate_quietly(sandbox: AsyncSandbox) -> None:
    # At session end nobody is left to tell; the sandbox's idle_timeout ends it anyway.
    with suppress(StockadeError):
        await sandbox.terminate()


ConnectionFor = Callable[[object], Connection]
"""Given the request a tool call came with (a Starlette request over HTTP, ``None`` over
stdio), how to reach Stockade as the caller."""
