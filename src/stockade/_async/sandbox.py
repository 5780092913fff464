"""The handle to one sandbox: create, find, exec, run, run code, files, logs, terminate."""

from __future__ import annotations

import builtins
import codecs
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType
from urllib.parse import quote

from stockade import _base, _protocol, execution
from stockade._async.client import AsyncClient, client_for
from stockade._async.files import AsyncFiles
from stockade._async.process import AsyncProcess, cut_short
from stockade._async.snapshot import AsyncSnapshot
from stockade.commands import CommandResult, CommandTimeoutError
from stockade.errors import (
    ConflictError,
    SandboxTerminatedError,
    StockadeConnectionError,
    StockadeError,
)
from stockade.execution import CodeContext, Execution, ExecutionError, Result
from stockade.image import Image
from stockade.models import ImageInfo, SandboxInfo, SnapshotInfo

__all__ = ["AsyncSandbox"]


async def _image_ref(
    client: AsyncClient, image: str | Image, on_log: Callable[[str], object] | None
) -> str:
    """What ``POST /v1/sandboxes`` gets as ``image``: an image with steps is built first (or
    found in the cache) and named by its ID; a registry image is pulled first and named by
    digest, so the create never asks the registry again (and needs no auth)."""
    if isinstance(image, str):
        return image
    if not image.is_plain:
        built = await client.build(image, on_log=on_log)
        return built.pinned or built.name
    if not image.is_registry:
        return image.name
    pulled = await client.pull_image(image.name, auth=image.auth, on_log=on_log)
    return pulled.pinned or image.name


async def _code_cut_short(client: AsyncClient, sandbox_id: str, why: str) -> StockadeError:
    """The error for a code run whose stream ended without its ``end`` event: like
    :func:`cut_short`, it names the sandbox's end when that is the cause."""
    name = f"the code run in sandbox {sandbox_id}"
    try:
        data = await client.request("GET", _base.sandbox_path(sandbox_id))
        info = _base.parse(SandboxInfo.from_json, data, "sandbox")
    except StockadeError as exc:
        return StockadeConnectionError(
            f"the connection to {name} ended before the code finished ({why}), "
            f"and checking the sandbox failed too: {exc}"
        )
    if not info.running:
        return SandboxTerminatedError(f"{name} was cut short: {_base.ended_message(info)}")
    return StockadeConnectionError(
        f"the connection to {name} ended before the code finished ({why}); "
        "list the code contexts to see whether its kernel is still busy"
    )


class AsyncSandbox:
    """A gVisor sandbox on a Stockade server.

    Get one with :meth:`create`, :meth:`from_id` or :meth:`list`. ``last_info`` is the
    record as the server last described it to this handle (at create, list, from_id,
    :meth:`info` or :meth:`terminate`); call :meth:`info` for a fresh one.

    ``async with`` terminates the sandbox at the end of the block.

    Example::

        from stockade import AsyncSandbox

        async with await AsyncSandbox.create(image="python") as sb:
            r = await sb.run("python3 -c 'print(6*7)'")
            print(r.stdout)
    """

    def __init__(self, info: SandboxInfo, client: AsyncClient) -> None:
        self.id = info.id
        self.last_info = info
        self.client = client
        self.files = AsyncFiles(client, info.id)

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.id} {self.last_info.status}>"

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.terminate()

    # -- finding sandboxes -------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        *,
        image: str | Image = "python",
        cpu: float | None = None,
        memory: int | None = None,
        disk: int | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        tags: Mapping[str, str] | None = None,
        entrypoint: str | Sequence[str] | None = None,
        block_network: bool = False,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        outbound_domain_allowlist: Sequence[str] | None = None,
        ports: Sequence[int | Mapping[str, object]] | None = None,
        image_entrypoint: bool = False,
        volumes: Mapping[str, str | _base.HasId] | None = None,
        idle_timeout: float | None = None,
        on_timeout: str | None = None,
        auto_resume: bool = False,
        snapshot: str | _base.HasId | None = None,
        on_image_log: Callable[[str], object] | None = None,
        name: str | None = None,
        get_if_exists: bool = False,
        user: str | None = None,
        readiness: int | str | Sequence[str] | None = None,
        readiness_timeout: float | None = None,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> AsyncSandbox:
        """Start a new sandbox and return once it runs.

        Unset values take the server's defaults: 1 CPU, 512 MiB of memory, 1024 MiB of
        disk, a 300 s lifetime (``timeout``, up to 86400). With an ``entrypoint`` (an argv
        list, or a string run by ``sh -c``) the sandbox runs that command as its main
        process and ends when it exits; its output is :meth:`logs`. The image is built
        first if it is not built yet, which can take a minute.

        Network: by default the sandbox reaches public addresses, but never private
        ranges, the cloud metadata address, the host or other sandboxes.
        ``block_network=True`` leaves loopback only; ``outbound_cidr_allowlist`` and
        ``outbound_domain_allowlist`` (``"example.com"``, ``"*.example.org"``) allow only
        those. :meth:`set_network` changes it later. ``ports`` are the ports to expose
        (see :meth:`expose`): ``[8080]`` or ``[{"port": 8080, "public": True}]``.

        ``image`` is an image's name or an :class:`~stockade.Image`: one with steps is built
        first (or found in the cache), a registry image is pulled first, and
        ``on_image_log`` gets their progress lines. The image's Env, WorkingDir and User
        apply; its Entrypoint and Cmd run as the main process with ``image_entrypoint=True``
        (as ``docker run`` would), otherwise the sandbox idles until commands come.

        Lifetimes: ``idle_timeout`` (seconds without exec, file or API activity) ends it
        like ``timeout`` does; ``on_timeout="pause"`` pauses it instead of terminating it at
        either limit, and with ``auto_resume=True`` a paused sandbox wakes by itself on its
        next exec, files call or port request. ``volumes`` mounts persistent
        :class:`Volume` s: ``{"/data": Volume.from_name("data", create_if_missing=True)}``.
        ``snapshot`` (a :class:`Snapshot` or its ID) restores a memory snapshot instead of
        booting the image: its processes carry on where they were.

        ``name`` (1-63 of ``a-z0-9-_.``) is unique among your tenant's live sandboxes:
        as in Modal, a taken one raises :class:`~stockade.ConflictError` naming the
        sandbox that has it, unless ``get_if_exists=True`` returns that sandbox instead
        (get-or-create; the other arguments then do not apply to it). :meth:`from_name`
        finds it. ``user`` runs the sandbox's commands (and owns what files calls write) as
        a user of the image's own /etc/passwd or ``"uid[:gid]"``; by default the image's
        USER.

        ``readiness`` makes create return only once it passes inside the sandbox: a TCP
        port something listens on (``8000``), an HTTP URL answering 2xx/3xx
        (``"http://localhost:8000/healthz"``) or a command exiting 0 (``["pg_isready"]``).
        Past ``readiness_timeout`` seconds (default 60) the sandbox is terminated and
        :class:`~stockade.StockadeTimeoutError` carries the check's last output.

        Example::

            sb = await AsyncSandbox.create(image="python", memory=1024, tags={"user": "x"})
            web = await AsyncSandbox.create(
                name="web", entrypoint="python3 -m http.server 8000", readiness=8000
            )
        """
        client = client_for(client, url, token)
        image_ref = await _image_ref(client, image, on_image_log)
        body = _base.create_body(
            image=image_ref,
            cpu=cpu,
            memory=memory,
            disk=disk,
            timeout=timeout,
            env=env,
            workdir=workdir,
            tags=tags,
            entrypoint=entrypoint,
            block_network=block_network,
            outbound_cidr_allowlist=outbound_cidr_allowlist,
            outbound_domain_allowlist=outbound_domain_allowlist,
            ports=ports,
            image_entrypoint=image_entrypoint,
            volumes={path: _base.ref_id(v) for path, v in (volumes or {}).items()},
            idle_timeout=idle_timeout,
            on_timeout=on_timeout,
            auto_resume=auto_resume,
            snapshot=_base.ref_id(snapshot) if snapshot is not None else None,
            name=name,
            user=user,
            readiness=readiness,
            readiness_timeout=readiness_timeout,
        )
        try:
            data = await client.request(
                "POST", "/v1/sandboxes", json=body, timeout=_base.LONG_TIMEOUT
            )
        except ConflictError:
            if name is None or not get_if_exists:
                raise
            return await cls.from_name(name, client=client)
        return cls(_base.parse(SandboxInfo.from_json, data, "sandbox"), client)

    @classmethod
    async def from_name(
        cls,
        name: str,
        *,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> AsyncSandbox:
        """Your tenant's live (starting, running or paused) sandbox named ``name``; raises
        :class:`~stockade.NotFoundError` if none is (ended sandboxes free their names).

        Example::

            sb = await AsyncSandbox.from_name("builder")
        """
        client = client_for(client, url, token)
        data = await client.request("GET", "/v1/sandboxes/by-name/" + quote(name, safe=""))
        return cls(_base.parse(SandboxInfo.from_json, data, "sandbox"), client)

    @classmethod
    async def from_id(
        cls,
        sandbox_id: str,
        *,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> AsyncSandbox:
        """The sandbox with ID ``sandbox_id``; raises :class:`~stockade.NotFoundError`.

        Example::

            sb = await AsyncSandbox.from_id("sb-7f3a…")
        """
        client = client_for(client, url, token)
        data = await client.request("GET", _base.sandbox_path(sandbox_id))
        return cls(_base.parse(SandboxInfo.from_json, data, "sandbox"), client)

    @classmethod
    async def list(
        cls,
        *,
        tags: Mapping[str, str] | None = None,
        status: str | None = None,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> builtins.list[AsyncSandbox]:
        """Sandboxes with all of ``tags`` (and ``status``, if given), newest first.

        Each one's ``last_info`` holds the record from the listing.

        Example::

            for sb in await AsyncSandbox.list(tags={"user": "x"}, status="running"):
                print(sb.id, sb.last_info.created_at)
        """
        client = client_for(client, url, token)
        data = await client.request(
            "GET", "/v1/sandboxes", params=_base.list_params(tags=tags, status=status)
        )
        return [
            cls(_base.parse(SandboxInfo.from_json, item, "sandbox"), client)
            for item in _base.field_list(data, "sandboxes", "sandbox list")
        ]

    # -- state -------------------------------------------------------------------------

    async def info(self) -> SandboxInfo:
        """The sandbox's current record, fresh from the server.

        Example::

            info = await sb.info()
            print(info.status, info.reason, info.expires_at)
        """
        data = await self.client.request("GET", _base.sandbox_path(self.id))
        self.last_info = _base.parse(SandboxInfo.from_json, data, "sandbox")
        return self.last_info

    async def set_tags(self, tags: Mapping[str, str]) -> SandboxInfo:
        """Replace the sandbox's tags with ``tags`` (as Modal's ``set_tags`` does);
        :meth:`list` filters by them.

        Example::

            await sb.set_tags({"stage": "done"})
        """
        data = await self.client.request(
            "PATCH", _base.sandbox_path(self.id), json={"tags": dict(tags)}
        )
        self.last_info = _base.parse(SandboxInfo.from_json, data, "sandbox")
        return self.last_info

    async def terminate(self) -> SandboxInfo:
        """Stop the sandbox and discard it; terminating an ended sandbox is fine.

        Example::

            await sb.terminate()
        """
        data = await self.client.request("DELETE", _base.sandbox_path(self.id))
        self.last_info = _base.parse(SandboxInfo.from_json, data, "sandbox")
        return self.last_info

    async def set_timeout(self, seconds: float) -> SandboxInfo:
        """End the sandbox ``seconds`` from now (1–86400), sooner or later than it would
        have; with ``on_timeout="pause"`` it pauses then instead. Raises
        SandboxTerminatedError if it has ended, SandboxPausedError if it is paused.

        Example::

            sb = await AsyncSandbox.create(timeout=60)
            await sb.set_timeout(600)  # a long job: ten minutes from now
        """
        data = await self.client.request(
            "POST", _base.sandbox_path(self.id, "/timeout"), json={"timeout": seconds}
        )
        self.last_info = _base.parse(SandboxInfo.from_json, data, "sandbox")
        return self.last_info

    # -- snapshots, pause and fork -----------------------------------------------------

    async def snapshot(self, *, name: str | None = None) -> AsyncSnapshot:
        """Capture the sandbox's memory, processes and files while it keeps running.

        Restore it any number of times with :meth:`AsyncSnapshot.restore` (or
        ``AsyncSandbox.create(snapshot=snap)``); processes carry on where they were.

        Example::

            snap = await sb.snapshot()
            again = await snap.restore()
        """
        data = await self.client.request(
            "POST", _base.sandbox_path(self.id, "/snapshots"), json={"name": name},
            timeout=_base.LONG_TIMEOUT,
        )  # fmt: skip
        return AsyncSnapshot(_base.parse(SnapshotInfo.from_json, data, "snapshot"), self.client)

    async def snapshot_filesystem(self, *, name: str | None = None) -> Image:
        """Save the sandbox's files as a new image (named ``name``, ``name:tag``, or
        ``<sandbox id>:fs-<ms>``); new sandboxes from it see exactly those files. The
        sandbox keeps running.

        Example::

            image = await sb.snapshot_filesystem(name="agent-state:v1")
            sb2 = await AsyncSandbox.create(image=image)
        """
        data = await self.client.request(
            "POST", _base.sandbox_path(self.id, "/filesystem-snapshots"), json={"name": name},
            timeout=_base.LONG_TIMEOUT,
        )  # fmt: skip
        info = _base.parse(ImageInfo.from_json, data, "image")
        return Image.from_name(info.name)

    async def pause(self) -> SandboxInfo:
        """Save the sandbox's memory to disk and stop it: no process of it stays on the
        host, only its disk. :meth:`resume` brings it back with the same ID; so does its
        next call when it was created with ``auto_resume=True``.

        Example::

            await sb.pause()
            ...
            await sb.resume()
        """
        data = await self.client.request(
            "POST", _base.sandbox_path(self.id, "/pause"), timeout=_base.LONG_TIMEOUT
        )
        self.last_info = _base.parse(SandboxInfo.from_json, data, "sandbox")
        return self.last_info

    async def resume(self) -> SandboxInfo:
        """Bring a paused sandbox back: its processes, memory, files and network address.
        Resuming a running sandbox changes nothing."""
        data = await self.client.request(
            "POST", _base.sandbox_path(self.id, "/resume"), timeout=_base.LONG_TIMEOUT
        )
        self.last_info = _base.parse(SandboxInfo.from_json, data, "sandbox")
        return self.last_info

    async def fork(self, n: int = 1) -> builtins.list[AsyncSandbox]:
        """``n`` independent copies of this sandbox from one capture of it: processes,
        memory and files, each carrying on on its own. The sandbox keeps running.

        Example::

            a, b, c = await sb.fork(3)
        """
        data = await self.client.request(
            "POST", _base.sandbox_path(self.id, "/fork"), json={"count": n},
            timeout=_base.LONG_TIMEOUT,
        )  # fmt: skip
        items = _base.field_list(data, "sandboxes", "sandbox list")
        return [
            type(self)(_base.parse(SandboxInfo.from_json, i, "sandbox"), self.client) for i in items
        ]

    # -- network -----------------------------------------------------------------------

    async def set_network(
        self,
        *,
        block_network: bool = False,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        outbound_domain_allowlist: Sequence[str] | None = None,
    ) -> SandboxInfo:
        """Replace the sandbox's outbound policy; open connections are cut if it now
        forbids them. With no arguments the sandbox gets the default (public egress).

        Example::

            await sb.run("pip install requests")
            await sb.set_network(outbound_domain_allowlist=["api.example.com"])
        """
        body = _base.network_body(
            block_network=block_network,
            outbound_cidr_allowlist=outbound_cidr_allowlist,
            outbound_domain_allowlist=outbound_domain_allowlist,
        )
        data = await self.client.request("PUT", _base.sandbox_path(self.id, "/network"), json=body)
        self.last_info = _base.parse(SandboxInfo.from_json, data, "sandbox")
        return self.last_info

    async def expose(self, port: int, *, public: bool = False) -> str:
        """Expose ``port``: serve it through the server's proxy, HTTP and WebSocket, and
        return its URL (:meth:`tunnel` finds it again). Exposing an exposed port again only
        changes ``public``; :meth:`unexpose` undoes it.

        Unless the port is public, each request must carry :attr:`access_token`, as the
        ``X-Stockade-Access-Token`` header or the ``stockade_token`` query parameter.

        Example::

            url = await sb.expose(8080, public=True)
        """
        data = await self.client.request(
            "POST", _base.sandbox_path(self.id, "/ports"), json={"port": port, "public": public}
        )
        self.last_info = _base.parse(SandboxInfo.from_json, data, "sandbox")
        return _base.port_url(self.client.url, self.last_info, port)

    async def unexpose(self, port: int) -> SandboxInfo:
        """Stop exposing ``port``: its URL answers ``404`` from now on, while a server in
        the sandbox keeps running. A port that is not exposed raises
        :class:`~stockade.NotFoundError`.

        Example::

            await sb.unexpose(8080)
            assert 8080 not in await sb.tunnels()
        """
        data = await self.client.request("DELETE", _base.sandbox_path(self.id, f"/ports/{port}"))
        self.last_info = _base.parse(SandboxInfo.from_json, data, "sandbox")
        return self.last_info

    async def tunnel(self, port: int) -> str:
        """The URL of exposed ``port`` (as :meth:`expose` returned it), HTTP and WebSocket.

        Unless the port is public, send :attr:`access_token` with each request, as the
        ``X-Stockade-Access-Token`` header or the ``stockade_token`` query parameter.

        Example::

            url = await sb.tunnel(8080)
            httpx.get(url, headers={"X-Stockade-Access-Token": sb.access_token})
        """
        if not any(p.port == port for p in self.last_info.ports):
            await self.info()
        return _base.port_url(self.client.url, self.last_info, port)

    async def tunnels(self) -> dict[int, str]:
        """Every exposed port and its URL."""
        info = await self.info()
        return {p.port: _base.port_url(self.client.url, info, p.port) for p in info.ports}

    @property
    def access_token(self) -> str:
        """The token that opens the sandbox's non-public exposed ports (and nothing else)."""
        return self.last_info.access_token or ""

    # -- commands ----------------------------------------------------------------------

    async def exec(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
        pty: bool = False,
        cols: int = 80,
        rows: int = 24,
        user: str | None = None,
    ) -> AsyncProcess:
        """Start a command and return its :class:`AsyncProcess` as soon as it runs.

        ``args`` is the argv (no shell: use ``"sh", "-c", line`` for one). ``timeout``
        (seconds) kills the command when it runs longer; ``pty=True`` gives it a terminal
        of ``cols`` x ``rows``, with stderr merged into stdout. ``user`` (a user of the
        image or ``"uid[:gid]"``) runs it as that user instead of the sandbox's.

        Example::

            p = await sb.exec("python3", "-c", "print(6*7)")
            print(await p.stdout.read(), await p.wait())
        """
        argv = _protocol.checked_argv(args)
        return await AsyncProcess._start(
            self.client,
            self.id,
            argv,
            env=dict(env) if env else None,
            workdir=workdir,
            timeout=timeout,
            pty=pty,
            cols=cols,
            rows=rows,
            user=user,
        )

    async def run(
        self,
        command: str | Sequence[str],
        *,
        stdin: str | bytes | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        timeout: float | None = None,
        check: bool = False,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        user: str | None = None,
    ) -> CommandResult:
        """Run a command to completion and return its output and exit code.

        ``command`` is a shell line (run by ``sh -c``) or an argv list. A non-zero exit is
        returned, not raised, unless ``check=True`` (then :class:`~stockade.CommandError`).
        Running past ``timeout`` raises :class:`~stockade.CommandTimeoutError`, which
        carries the output so far. ``on_stdout``/``on_stderr`` receive text as it arrives.
        ``user`` runs it as that user of the image (or ``"uid[:gid]"``).

        Example::

            r = await sb.run("echo hi && exit 3")
            assert (r.stdout, r.exit_code) == ("hi\\n", 3)
        """
        argv = _protocol.command_argv(command)
        body = _protocol.ndjson_exec_body(
            argv, env=env, workdir=workdir, timeout=timeout, stdin=stdin, user=user
        )
        output = {_protocol.STDOUT: bytearray(), _protocol.STDERR: bytearray()}
        callbacks = {_protocol.STDOUT: on_stdout, _protocol.STDERR: on_stderr}
        decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in output}
        exited: _protocol.Exited | None = None
        path = _base.sandbox_path(self.id, "/exec")
        async with self.client.ndjson("POST", path, json=body) as events:
            async for raw in events:
                event = _protocol.decode_ndjson_exec(raw)
                if isinstance(event, _protocol.Output):
                    output[event.fd] += event.data
                    callback = callbacks[event.fd]
                    if callback is not None:
                        callback(decoders[event.fd].decode(event.data))
                elif isinstance(event, _protocol.Exited):
                    exited = event
                    break  # the last event: do not wait for the server to end the stream
                elif isinstance(event, _protocol.Failed):
                    raise event.error
        for fd, callback in callbacks.items():
            tail = decoders[fd].decode(b"", final=True)
            if callback is not None and tail:
                callback(tail)
        if exited is None:
            raise await cut_short(self.client, self.id, argv, "the server closed the stream")
        result = CommandResult(
            argv=argv,
            exit_code=exited.exit_code,
            stdout_bytes=bytes(output[_protocol.STDOUT]),
            stderr_bytes=bytes(output[_protocol.STDERR]),
            oom=exited.oom,
            sandbox_id=self.id,
        )
        if exited.timed_out:
            raise CommandTimeoutError(argv, sandbox_id=self.id, timeout=timeout, result=result)
        return result.check() if check else result

    # -- code interpreter --------------------------------------------------------------

    async def run_code(
        self,
        code: str,
        *,
        language: str | None = None,
        context: CodeContext | str | None = None,
        timeout: float | None = None,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        on_result: Callable[[Result], object] | None = None,
        on_error: Callable[[ExecutionError], object] | None = None,
    ) -> Execution:
        """Run ``code`` in a stateful Jupyter kernel in the sandbox and return what it
        printed, displayed and raised, as an :class:`~stockade.Execution`.

        Variables, imports and the working directory persist between calls to the same
        context. ``context`` is a :class:`~stockade.CodeContext` or its ID; without one,
        the sandbox's default context for ``language`` (``"python"`` unless given) runs
        the code, started on first use. The image needs the kernel: use
        ``image="code-interpreter"`` (otherwise :class:`~stockade.KernelUnavailableError`).

        An exception in the code is returned as ``error``, not raised. Past ``timeout``
        seconds the code is interrupted (``error.name == "KeyboardInterrupt"``,
        ``timed_out``) and the context keeps its state. The callbacks get each piece of
        output, result and error while the code runs.

        Example::

            await sb.run_code("import pandas as pd; df = pd.DataFrame({'a': [1, 2]})")
            ex = await sb.run_code("df", on_stdout=print)
            print(ex.results[0].html, ex.error)
        """
        body = execution.run_body(code, language=language, context=context, timeout=timeout)
        builder = execution.ExecutionBuilder(
            on_stdout=on_stdout, on_stderr=on_stderr, on_result=on_result, on_error=on_error
        )
        # ndjson() streams without a read timeout: a cell may run quietly for as long as
        # its own `timeout` (or forever without one), like a command under run().
        path = _base.sandbox_path(self.id, "/code/run")
        async with self.client.ndjson("POST", path, json=body) as events:
            async for event in events:
                if builder.feed(event):
                    break  # the last event: do not wait for the server to end the stream
        if not builder.ended:
            raise await _code_cut_short(self.client, self.id, "the server closed the stream")
        return builder.execution()

    async def create_code_context(
        self, language: str = "python", *, workdir: str | None = None
    ) -> CodeContext:
        """Start a new code context (a kernel of its own) for ``language``, working in
        ``workdir``, an absolute path (by default the sandbox's working directory).

        Example::

            ctx = await sb.create_code_context(language="bash", workdir="/tmp")
            ex = await sb.run_code("echo $PWD", context=ctx)
        """
        data = await self.client.request(
            "POST",
            _base.sandbox_path(self.id, execution.contexts_path()),
            json=execution.context_body(language, workdir),
            timeout=_base.LONG_TIMEOUT,  # a kernel starts in seconds, more on a busy host
        )
        return _base.parse(CodeContext.from_json, data, "code context")

    async def list_code_contexts(self) -> builtins.list[CodeContext]:
        """The sandbox's code contexts, the default ones included once started.

        Example::

            for ctx in await sb.list_code_contexts():
                print(ctx.id, ctx.language, ctx.status)
        """
        data = await self.client.request(
            "GET", _base.sandbox_path(self.id, execution.contexts_path())
        )
        return [
            _base.parse(CodeContext.from_json, item, "code context")
            for item in _base.field_list(data, "contexts", "code context list")
        ]

    async def restart_code_context(self, context: CodeContext | str) -> CodeContext:
        """Replace the context's kernel with a fresh one (same ID, language and workdir); its
        variables and imports are gone. This revives a ``dead`` context.

        Example::

            ctx = await sb.restart_code_context(ctx)
        """
        data = await self.client.request(
            "POST",
            _base.sandbox_path(self.id, execution.contexts_path(context, "/restart")),
            timeout=_base.LONG_TIMEOUT,
        )
        return _base.parse(CodeContext.from_json, data, "code context")

    async def remove_code_context(self, context: CodeContext | str) -> None:
        """Stop the context's kernel and forget the context.

        Example::

            await sb.remove_code_context(ctx)
        """
        await self.client.request(
            "DELETE", _base.sandbox_path(self.id, execution.contexts_path(context))
        )

    # -- logs --------------------------------------------------------------------------

    async def logs(self) -> str:
        """Everything the entrypoint printed so far (stdout and stderr interleaved).

        Example::

            print(await sb.logs())
        """
        parts = [chunk async for chunk in self.stream_logs(follow=False)]
        return "".join(parts)

    async def stream_logs(self, *, follow: bool = True) -> AsyncIterator[str]:
        """Yield the entrypoint's output as text chunks; with ``follow`` until it ends.

        Leaving the loop early keeps the connection open until the iterator is collected;
        wrap it in ``contextlib.closing`` (``aclosing`` for async) to close it at once.

        Example::

            async for chunk in sb.stream_logs():
                print(chunk, end="")
        """
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        params = {"follow": "true" if follow else "false"}
        path = _base.sandbox_path(self.id, "/logs")
        async with self.client.stream("GET", path, params=params) as chunks:
            async for chunk in chunks:
                text = decoder.decode(chunk)
                if text:
                    yield text
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
