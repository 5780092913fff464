"""The MCP tools: a FastMCP server whose tools drive Stockade through the async SDK.

:func:`build_server` makes the server for one way of connecting (``stockade mcp`` over
stdio, or the Stockade server's ``/mcp``); each MCP session gets its own
:class:`~stockade.mcp.session.SessionSandboxes`. Errors of the caller's making (a
missing sandbox, a bad path, a quota) come back as tool results with ``isError`` and the
server's message, so a model can fix its call and the session carries on.

Example::

    from stockade.mcp import build_server

    build_server().run("stdio")
"""

from __future__ import annotations

import base64
import binascii
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any, Literal

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.session import ServerSession
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import Field

from stockade import _protocol
from stockade._async.process import AsyncStreamReader
from stockade._async.sandbox import AsyncSandbox
from stockade.commands import CommandTimeoutError
from stockade.errors import InvalidArgumentError
from stockade.mcp.output import (
    MAX_OUTPUT_BYTES,
    MAX_READ_BYTES,
    Capped,
    clean_path,
    execution_text,
    image_mime,
)
from stockade.mcp.session import Connection, ConnectionFor, SessionDefaults, SessionSandboxes
from stockade.models import SandboxInfo

__all__ = ["MAX_HTTP_SESSIONS", "build_server"]

# Live MCP sessions over HTTP, per server (each may hold sandboxes, within its quotas).
MAX_HTTP_SESSIONS = 1000

_Ctx = Context[ServerSession, SessionSandboxes, Any]

INSTRUCTIONS = """\
Stockade runs code in isolated gVisor sandboxes (Linux, Debian). Every tool that takes an
optional sandbox_id uses this session's own sandbox when it is left out: a Python
code-interpreter sandbox (numpy, pandas, matplotlib) made on first use and ended when the
session ends or sits idle. Use run_code for Python (state persists between calls, charts come
back as images), run_command for shell commands, read_file/write_file/list_files for files.
Paths are absolute. create_sandbox makes more sandboxes (other images, limits, network)."""

SandboxId = Annotated[
    str | None,
    Field(
        description="The sandbox to use (an ID like sb-...). Leave it out to use this session's "
        "default sandbox, made on first use."
    ),
]
_MAX_IMAGES = 8
_MAX_IMAGE_BASE64 = 8 * 1024 * 1024
_PROGRESS_EVERY_S = 0.25
_PROGRESS_TEXT = 2000
_FULL_OUTPUT_HINT = (
    "To see all of it, run the command again with its output sent to a file "
    "(`... > /tmp/out.txt 2>&1`) and read that with read_file (offset, limit)."
)


def _stdio_connection(_request: object) -> Connection:
    return Connection()


def build_server(
    connection_for: ConnectionFor = _stdio_connection,
    *,
    defaults: SessionDefaults | None = None,
    http: bool = False,
    on_session_end: Callable[[], None] | None = None,
) -> FastMCP[SessionSandboxes]:
    """The Stockade MCP server.

    ``connection_for`` says how each call reaches Stockade as its caller (default: from
    ``$STOCKADE_URL``/``$STOCKADE_TOKEN``). ``defaults`` describe each session's default
    sandbox. ``http=True`` configures it for mounting behind the Stockade server's own
    authentication (see ``stockade.server.api.mcp``). ``on_session_end`` is called once
    each session has ended, however it ended (the client closed it, it idled out, the
    server dropped it), in the session's own task: over HTTP that task was started by the
    request that opened the session, so the hook sees that request's context variables.
    """
    session_defaults = defaults or SessionDefaults()

    @asynccontextmanager
    async def per_session(_server: FastMCP[SessionSandboxes]) -> AsyncIterator[SessionSandboxes]:
        sandboxes = SessionSandboxes(session_defaults)
        try:
            yield sandboxes
        finally:
            try:
                await sandboxes.aclose()
            finally:
                if on_session_end is not None:
                    on_session_end()

    server: FastMCP[SessionSandboxes] = FastMCP(
        name="stockade",
        instructions=INSTRUCTIONS,
        lifespan=per_session,
        log_level="WARNING",
        # Over HTTP every request carries a bearer credential, which a browser never
        # attaches by itself: a rebound DNS name gains a page nothing, so the Host check
        # (made for cookie- or address-trusting servers) would only refuse real clients.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        session_idle_timeout=session_defaults.idle_timeout if http else None,
        max_sessions=MAX_HTTP_SESSIONS,
    )
    _Tools(connection_for, session_defaults).register(server)
    return server


def _sandbox_json(info: SandboxInfo, **extra: object) -> str:
    network = info.network
    body: dict[str, object] = {
        "sandbox_id": info.id,
        "status": info.status,
        "image": info.image,
        "cpu": info.cpu,
        "memory_mib": info.memory,
        "disk_mib": info.disk,
        "expires_at": info.expires_at.isoformat() if info.expires_at else None,
        "idle_timeout_s": info.idle_timeout,
        "network": {
            "mode": network.mode,
            "allow_domains": network.outbound_domain_allowlist,
            "allow_cidrs": network.outbound_cidr_allowlist,
        }
        if network is not None
        else None,
        **extra,
    }
    return json.dumps(body, indent=1)


class _Progress:
    """Command output as MCP progress notifications: at most four a second, each with the
    text since the last one (its last 2000 characters), ``progress`` = bytes so far."""

    def __init__(self, ctx: _Ctx, clock: Callable[[], float] = time.monotonic) -> None:
        self._ctx = ctx
        self._clock = clock
        self._pending = ""
        self._bytes = 0
        self._sent_bytes = 0
        self._sent_at = 0.0

    async def feed(self, data: bytes) -> None:
        self._bytes += len(data)
        self._pending = (self._pending + data.decode("utf-8", "replace"))[-_PROGRESS_TEXT:]
        if self._clock() - self._sent_at >= _PROGRESS_EVERY_S:
            await self.flush()

    async def flush(self) -> None:
        if self._bytes == self._sent_bytes:
            return
        text, self._pending = self._pending, ""
        self._sent_bytes, self._sent_at = self._bytes, self._clock()
        await self._ctx.report_progress(self._bytes, None, text)


class _Tools:
    def __init__(self, connection_for: ConnectionFor, defaults: SessionDefaults) -> None:
        self._connection_for = connection_for
        self._defaults = defaults

    def _session(self, ctx: _Ctx) -> tuple[SessionSandboxes, Connection]:
        request = ctx.request_context.request
        return ctx.request_context.lifespan_context, self._connection_for(request)

    def register(self, server: FastMCP[SessionSandboxes]) -> None:
        def tool(
            fn: Callable[..., Any], *, read_only: bool = False, destructive: bool = False
        ) -> None:
            server.add_tool(
                fn,
                description=inspect.cleandoc(fn.__doc__ or ""),
                structured_output=False,
                annotations=ToolAnnotations(
                    readOnlyHint=read_only, destructiveHint=destructive, openWorldHint=True
                ),
            )

        tool(self.create_sandbox)
        tool(self.run_command, destructive=True)
        tool(self.run_code, destructive=True)
        tool(self.read_file, read_only=True)
        tool(self.write_file, destructive=True)
        tool(self.list_files, read_only=True)
        tool(self.expose_port)
        tool(self.snapshot)
        tool(self.fork)
        tool(self.terminate, destructive=True)

    # -- sandboxes ---------------------------------------------------------------------

    async def create_sandbox(
        self,
        ctx: _Ctx,
        image: Annotated[
            str,
            Field(
                description="Image name: 'code-interpreter' (Python + Jupyter kernel, numpy, "
                "pandas, matplotlib; needed by run_code), 'python' (Python 3), 'debian', or "
                "an image built on this server."
            ),
        ] = "code-interpreter",
        cpu: Annotated[
            float | None, Field(description="CPU cores, e.g. 0.5 or 2 (server default: 1).", gt=0)
        ] = None,
        memory: Annotated[
            int | None, Field(description="Memory in MiB (server default: 512).", gt=0)
        ] = None,
        timeout: Annotated[
            float | None,
            Field(description="Lifetime in seconds, 1-86400 (server default: 300).", gt=0),
        ] = None,
        idle_timeout: Annotated[
            float | None,
            Field(
                description="End the sandbox after this many seconds without activity "
                "(default: 600).",
                gt=0,
            ),
        ] = None,
        block_network: Annotated[
            bool, Field(description="True: no network at all (loopback only).")
        ] = False,
        allow_domains: Annotated[
            list[str] | None,
            Field(
                description="Allow outbound connections only to these domains "
                "('example.com', '*.example.org'). Default: any public address."
            ),
        ] = None,
        allow_cidrs: Annotated[
            list[str] | None,
            Field(description="Allow outbound connections only to these networks ('1.2.3.0/24')."),
        ] = None,
        snapshot_id: Annotated[
            str | None,
            Field(description="Restore this snapshot (sn-..., from the snapshot tool) instead."),
        ] = None,
        keep_after_session: Annotated[
            bool,
            Field(
                description="False (default): the sandbox ends when this MCP session ends. "
                "True: it runs until its timeout or idle_timeout."
            ),
        ] = False,
    ) -> str:
        """Create a new sandbox and return its details as JSON: sandbox_id, status, image,
        cpu, memory_mib, disk_mib, expires_at, idle_timeout_s, network.

        Pass the sandbox_id to the other tools to use it. Without network arguments the
        sandbox may reach public internet addresses but never private networks or the host.
        Creating a sandbox takes a second or two (longer the first time an image is built).
        Fails when the caller's quota is used up (end some sandboxes with terminate)."""
        sessions, connection = self._session(ctx)
        sandbox = await AsyncSandbox.create(
            image=image,
            cpu=cpu,
            memory=memory,
            timeout=timeout,
            idle_timeout=idle_timeout if idle_timeout is not None else self._defaults.idle_timeout,
            block_network=block_network,
            outbound_domain_allowlist=allow_domains,
            outbound_cidr_allowlist=allow_cidrs,
            snapshot=snapshot_id,
            client=sessions.client(connection),
        )
        if not keep_after_session:
            sessions.own(sandbox)
        return _sandbox_json(sandbox.last_info, ends_with_session=not keep_after_session)

    async def terminate(self, ctx: _Ctx, sandbox_id: SandboxId = None) -> str:
        """End a sandbox now and discard it (its processes and files are gone). Without
        sandbox_id, ends this session's default sandbox; the next call that needs it
        starts a fresh one. Returns the sandbox's final status."""
        sessions, connection = self._session(ctx)
        async with sessions.use(connection, sandbox_id) as sandbox:
            info = await sandbox.terminate()
        sessions.disown(sandbox.id)
        return f"sandbox {info.id} is {info.status}"

    async def snapshot(
        self,
        ctx: _Ctx,
        sandbox_id: SandboxId = None,
        name: Annotated[str | None, Field(description="An optional name for the snapshot.")] = None,
    ) -> str:
        """Capture a sandbox's memory, processes and files while it keeps running. Returns
        the snapshot_id (sn-...); create_sandbox(snapshot_id=...) restores it any number of
        times, with its processes carrying on where they were."""
        sessions, connection = self._session(ctx)
        async with sessions.use(connection, sandbox_id) as sandbox:
            snap = await sandbox.snapshot(name=name)
        return json.dumps(
            {"snapshot_id": snap.id, "sandbox_id": sandbox.id, "size_bytes": snap.info.size_bytes}
        )

    async def fork(
        self,
        ctx: _Ctx,
        sandbox_id: SandboxId = None,
        count: Annotated[int, Field(description="How many copies, 1-16.", ge=1, le=16)] = 1,
    ) -> str:
        """Make independent copies of a running sandbox (memory, processes and files), each
        carrying on on its own; the original keeps running. Returns the new sandbox_ids as
        JSON. The copies end when this session ends, like sandboxes it created."""
        sessions, connection = self._session(ctx)
        async with sessions.use(connection, sandbox_id) as sandbox:
            copies = await sandbox.fork(count)
        for copy in copies:
            sessions.own(copy)
        return json.dumps({"forked_from": sandbox.id, "sandbox_ids": [c.id for c in copies]})

    async def expose_port(
        self,
        ctx: _Ctx,
        port: Annotated[
            int,
            Field(description="The TCP port a server in the sandbox listens on.", ge=1, le=65535),
        ],
        sandbox_id: SandboxId = None,
        public: Annotated[
            bool,
            Field(
                description="True: anyone with the URL may open it. False (default): each "
                "request needs the returned access_token."
            ),
        ] = False,
    ) -> str:
        """Serve a port of the sandbox (HTTP and WebSocket) at a URL and return it as JSON
        {url, public, access_token, how}. Start the server inside the sandbox first (e.g.
        run_command 'nohup python3 -m http.server 8000 >/tmp/http.log 2>&1 &'), listening on
        0.0.0.0 or 127.0.0.1."""
        sessions, connection = self._session(ctx)
        async with sessions.use(connection, sandbox_id) as sandbox:
            url = await sandbox.expose(port, public=public)
        if sessions.public_url and sandbox.client.url and url.startswith(sandbox.client.url):
            url = sessions.public_url.rstrip("/") + url[len(sandbox.client.url.rstrip("/")) :]
        answer: dict[str, object] = {"url": url, "public": public}
        if not public:
            answer["access_token"] = sandbox.access_token
            answer["how"] = (
                "send the token as the X-Stockade-Access-Token header or the stockade_token "
                "query parameter"
            )
        return json.dumps(answer)

    # -- commands and code -------------------------------------------------------------

    async def run_command(
        self,
        ctx: _Ctx,
        command: Annotated[
            str, Field(description="A shell command line, run by `sh -c` (pipes, && work).")
        ],
        sandbox_id: SandboxId = None,
        workdir: Annotated[
            str | None, Field(description="Absolute directory to run in (default: the image's).")
        ] = None,
        timeout: Annotated[
            float,
            Field(description="Kill the command after this many seconds (1-3600).", ge=1, le=3600),
        ] = 120,
        env: Annotated[
            dict[str, str] | None, Field(description="Extra environment variables.")
        ] = None,
    ) -> str:
        """Run a shell command in a sandbox and return its exit code, stdout and stderr.

        Output streams as progress notifications while it runs. Each of stdout and stderr
        returns at most 16 KiB (its first 4 KiB and last 12 KiB); a note says how many bytes
        were cut and how to read all of it. A non-zero exit code is a normal result, not a
        failure. Background a long-lived server with `nohup ... &`."""
        sessions, connection = self._session(ctx)
        argv = _protocol.command_argv(command)
        cwd = clean_path(workdir) if workdir is not None else None
        out, err = Capped(MAX_OUTPUT_BYTES), Capped(MAX_OUTPUT_BYTES)
        progress = _Progress(ctx)
        timed_out = False
        async with sessions.use(connection, sandbox_id) as sandbox:
            async with await sandbox.exec(*argv, env=env, workdir=cwd, timeout=timeout) as proc:

                async def pump(reader: AsyncStreamReader, into: Capped) -> None:
                    async for chunk in reader.iter_bytes():
                        into.feed(chunk)
                        await progress.feed(chunk)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(pump, proc.stdout, out)
                    tg.start_soon(pump, proc.stderr, err)
                try:
                    code: int | None = await proc.wait()
                except CommandTimeoutError:
                    timed_out, code = True, proc.returncode
            await progress.flush()
        oom = " (out of memory)" if proc.oom else ""
        lines = [f"[sandbox {sandbox.id}] exit code: {code}{oom}"]
        if timed_out:
            lines.append(f"the command ran past its timeout of {timeout:g} s and was killed")
        for name, capped in (("stdout", out), ("stderr", err)):
            if capped.total:
                text = capped.text(name, how_to_see_all=_FULL_OUTPUT_HINT)
                lines.append(f"--- {name} ---\n{text}")
        if not out.total and not err.total:
            lines.append("(no output)")
        return "\n".join(lines)

    async def run_code(
        self,
        ctx: _Ctx,
        code: Annotated[str, Field(description="The code to run (one notebook cell).")],
        sandbox_id: SandboxId = None,
        language: Annotated[
            Literal["python", "bash"], Field(description="The kernel's language.")
        ] = "python",
        context_id: Annotated[
            str | None,
            Field(description="A code context ID for a separate kernel (default: the shared one)."),
        ] = None,
        timeout: Annotated[
            float,
            Field(
                description="Interrupt the code after this many seconds (1-3600).", ge=1, le=3600
            ),
        ] = 120,
    ) -> list[ContentBlock]:
        """Run code in a stateful Jupyter kernel (like a notebook cell) in the sandbox.

        Variables and imports persist between calls. Returns the text it printed (stdout,
        stderr), the value of its last expression, and every chart or image it displayed
        (matplotlib plt.show() or a figure as the last expression) as a PNG image. An
        exception in the code is returned as text with its traceback (the call itself
        succeeds), so fix the code and run it again. The sandbox needs the
        'code-interpreter' image (the session's default sandbox has it). Each text part is
        capped at 16 KiB."""
        sessions, connection = self._session(ctx)
        async with sessions.use(connection, sandbox_id) as sandbox:
            ex = await sandbox.run_code(
                code, language=language, context=context_id, timeout=timeout
            )
        images: list[ContentBlock] = []
        skipped = 0
        for result in ex.results:
            for mime, data in (("image/png", result.png), ("image/jpeg", result.jpeg)):
                if data is None:
                    continue
                if len(images) >= _MAX_IMAGES or len(data) > _MAX_IMAGE_BASE64:
                    skipped += 1
                    continue
                images.append(ImageContent(type="image", data=data, mimeType=mime))
        text = execution_text(ex, images=len(images))
        if skipped:
            text += (
                f"\n--- {skipped} more image(s) left out (at most {_MAX_IMAGES}, each under "
                f"{_MAX_IMAGE_BASE64 // 1024 // 1024} MiB): save them to files instead ---"
            )
        return [TextContent(type="text", text=f"[sandbox {sandbox.id}]\n{text}"), *images]

    # -- files -------------------------------------------------------------------------

    async def read_file(
        self,
        ctx: _Ctx,
        path: Annotated[str, Field(description="Absolute path of the file, e.g. /tmp/out.txt.")],
        sandbox_id: SandboxId = None,
        offset: Annotated[int, Field(description="Byte offset to start at.", ge=0)] = 0,
        limit: Annotated[
            int,
            Field(description="Most bytes to return (max 1048576).", ge=1, le=MAX_READ_BYTES),
        ] = MAX_READ_BYTES // 4,
    ) -> list[ContentBlock]:
        """Read a file from a sandbox: up to `limit` bytes (default 256 KiB) from byte
        `offset`. UTF-8 text comes back as text, PNG/JPEG/GIF/WebP images as an image,
        other binary data as base64. When the file is longer than what was returned, a
        note gives its size and the offset to continue from."""
        sessions, connection = self._session(ctx)
        clean = clean_path(path)
        async with sessions.use(connection, sandbox_id) as sandbox:
            info = await sandbox.files.stat(clean)
            if info.is_dir:
                raise ToolError(f"{clean} is a directory: use list_files to see what it holds")
            window = _Window(offset, limit)
            with suppress(_WindowFull):
                await sandbox.files.read_to(clean, window)
        data = bytes(window.data)
        end = offset + len(data)
        note = ""
        if offset > 0 or end < info.size_bytes:
            note = f"[bytes {offset}-{end} of {info.size_bytes} of {clean}"
            note += f"; continue with offset={end}]" if end < info.size_bytes else "]"
        mime = image_mime(data) if offset == 0 and end >= info.size_bytes else None
        if mime is not None:
            blocks: list[ContentBlock] = [
                ImageContent(type="image", data=base64.b64encode(data).decode(), mimeType=mime)
            ]
            return [TextContent(type="text", text=f"{clean}: {mime}, {len(data)} bytes"), *blocks]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A window may end inside a character: that alone does not make a file binary.
            if exc.start < len(data) - 3:
                encoded = base64.b64encode(data).decode()
                return [
                    TextContent(
                        type="text",
                        text=f"{clean} is binary; {len(data)} bytes as base64 follow"
                        + (f" {note}" if note else "")
                        + f":\n{encoded}",
                    )
                ]
            text = data[: exc.start].decode("utf-8")
            note = note or f"[{len(data) - exc.start} bytes of an unfinished character left out]"
        return [TextContent(type="text", text=text + (f"\n{note}" if note else ""))]

    async def write_file(
        self,
        ctx: _Ctx,
        path: Annotated[str, Field(description="Absolute path to write, e.g. /tmp/data.csv.")],
        content: Annotated[str, Field(description="The file's new content.")],
        sandbox_id: SandboxId = None,
        encoding: Annotated[
            Literal["utf-8", "base64"],
            Field(description="How `content` is given: text (utf-8) or base64 for binary data."),
        ] = "utf-8",
    ) -> str:
        """Create or replace a file in a sandbox (parent directories are made). Returns the
        path and its size in bytes. Content is at most about 1 MiB per call; write bigger
        files in parts with run_command (e.g. `cat part2 >> file`)."""
        sessions, connection = self._session(ctx)
        clean = clean_path(path)
        if encoding == "base64":
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidArgumentError(f"content is not valid base64: {exc}") from exc
        else:
            data = content.encode("utf-8")
        async with sessions.use(connection, sandbox_id) as sandbox:
            info = await sandbox.files.write(clean, data)
        return f"wrote {info.size_bytes} bytes to {info.path} in sandbox {sandbox.id}"

    async def list_files(
        self,
        ctx: _Ctx,
        path: Annotated[str, Field(description="Absolute directory path.")] = "/",
        sandbox_id: SandboxId = None,
    ) -> str:
        """List a directory in a sandbox. Returns one line per entry with its type (file,
        dir, symlink, other), size in bytes, permission bits (octal) and name, sorted by
        name; at most 1000 entries."""
        sessions, connection = self._session(ctx)
        clean = clean_path(path)
        async with sessions.use(connection, sandbox_id) as sandbox:
            entries = await sandbox.files.list(clean)
        lines = [f"{clean} ({len(entries)} entries)"]
        for e in entries[:1000]:
            target = f" -> {e.target}" if e.target else ""
            lines.append(f"{e.type:7} {e.size_bytes:>12} {e.mode & 0o7777:04o} {e.name}{target}")
        if len(entries) > 1000:
            lines.append(f"[{len(entries) - 1000} more entries left out: list a subdirectory]")
        return "\n".join(lines)


class _WindowFull(Exception):
    """Raised by :class:`_Window` to stop a download once it holds what was asked for."""


class _Window:
    """A Writable keeping bytes ``[offset, offset + limit)`` of a stream and stopping it
    after that, so reading a slice of a huge file costs only the bytes up to the slice."""

    def __init__(self, offset: int, limit: int) -> None:
        self.offset = offset
        self.limit = limit
        self.seen = 0
        self.data = bytearray()

    def write(self, chunk: bytes, /) -> None:
        start = max(0, self.offset - self.seen)
        self.seen += len(chunk)
        if start < len(chunk):
            self.data += chunk[start : start + self.limit - len(self.data)]
        if len(self.data) >= self.limit:
            raise _WindowFull
