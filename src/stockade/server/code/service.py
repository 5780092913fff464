"""Code contexts: stateful kernels per sandbox, and runs of code in them.

A context is one kernel. Each sandbox has, per language, a default context that is
started on its first use; others are made on request. Runs in one context take turns (a
kernel runs one cell at a time anyway); runs in different contexts are independent.
Contexts live in this server's memory: a server restart ends them, and a default context
starts afresh on the next run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from ...errors import InvalidArgumentError, NotFoundError, ServerError
from ..images.catalog import BASE_IMAGES
from ..images.recipes import CODE_INTERPRETER
from ..service.execs import ExecService
from ..service.sandboxes import SandboxService, new_id
from .kernel import LANGUAGES, Kernel

__all__ = ["DEFAULT_OUTPUT_LIMIT", "CodeContext", "CodeService"]

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_LIMIT = 16 * 1024 * 1024
# ZeroMQ refuses (and drops the connection of) a single message above this many times
# the output cap: one print of a gigabyte must not land in the server's memory, while one
# a little over the cap still comes back truncated rather than lost.
_MESSAGE_FACTOR = 4
_PORT_ATTEMPTS = 3


@dataclass
class CodeContext:
    id: str
    sandbox_id: str
    language: str
    cwd: str | None
    default: bool
    kernel: Kernel | None = None
    created_at: float = field(default_factory=time.time)
    # One run at a time; held across a restart too.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> str:
        if self.kernel is None or not self.ready.is_set():
            return "starting"
        if self.kernel.died.is_set():
            return "dead"
        return "busy" if self.lock.locked() else "idle"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "language": self.language,
            "cwd": self.cwd,
            "default": self.default,
            "status": self.status,
        }


class CodeService:
    def __init__(
        self,
        sandboxes: SandboxService,
        execs: ExecService,
        runtime_root: Path,
        *,
        output_limit: int = DEFAULT_OUTPUT_LIMIT,
    ) -> None:
        self.sandboxes = sandboxes
        self.execs = execs
        self.runtime_root = runtime_root
        self.output_limit = output_limit
        self._zmq = zmq.asyncio.Context()
        # pyzmq applies these to every socket the context makes afterwards.
        self._zmq.setsockopt(zmq.MAXMSGSIZE, output_limit * _MESSAGE_FACTOR + 65536)
        self._zmq.setsockopt(zmq.LINGER, 0)
        self._contexts: dict[str, dict[str, CodeContext]] = {}
        self._starting: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        kernels = [c.kernel for cs in self._contexts.values() for c in cs.values() if c.kernel]
        self._contexts.clear()
        await asyncio.gather(*(k.shutdown() for k in kernels), return_exceptions=True)
        self._zmq.term()

    # ------------------------------------------------------------------ contexts

    async def _sandbox_contexts(self, sandbox_id: str) -> dict[str, CodeContext]:
        """The contexts of a running sandbox (the contexts of an ended one are dropped)."""
        try:
            await self.sandboxes.get_running(sandbox_id)
        except Exception:
            await self.forget(sandbox_id)
            raise
        return self._contexts.setdefault(sandbox_id, {})

    async def forget(self, sandbox_id: str) -> None:
        for language in LANGUAGES:
            self._starting.pop((sandbox_id, language), None)
        contexts = self._contexts.pop(sandbox_id, {}).values()
        kernels = [c.kernel for c in contexts if c.kernel is not None]
        await asyncio.gather(*(k.shutdown() for k in kernels), return_exceptions=True)

    def _language(self, language: str) -> str:
        if language not in LANGUAGES:
            raise InvalidArgumentError(
                f"language {language!r} is not supported; use one of: "
                + ", ".join(sorted(LANGUAGES))
            )
        return language

    async def create(
        self, sandbox_id: str, language: str, cwd: str | None, *, default: bool = False
    ) -> CodeContext:
        """Start a new context and return it once its kernel answers."""
        self._language(language)
        if cwd is not None and not cwd.startswith("/"):
            raise InvalidArgumentError(f"cwd {cwd!r} must be an absolute path in the sandbox")
        contexts = await self._sandbox_contexts(sandbox_id)
        ctx = CodeContext(new_id("ctx"), sandbox_id, language, cwd, default)
        contexts[ctx.id] = ctx
        try:
            await self._start_kernel(ctx)
        except BaseException:
            contexts.pop(ctx.id, None)
            raise
        return ctx

    async def _start_kernel(self, ctx: CodeContext) -> None:
        record = await self.sandboxes.get_running(ctx.sandbox_id)
        ctx.ready.clear()
        for attempt in range(_PORT_ATTEMPTS):
            kernel = Kernel(
                self.execs, ctx.sandbox_id, LANGUAGES[ctx.language], ctx.cwd,
                zmq_context=self._zmq, runtime_root=self.runtime_root, image=record.image,
                on_exit=lambda: self._background(self._reap(ctx.sandbox_id)),
            )  # fmt: skip
            ctx.kernel = kernel
            try:
                await kernel.start()
                break
            except ServerError as exc:
                # Its random ports can meet one in use in the sandbox (an outgoing
                # connection's, say): new ones will do.
                if "Address already in use" not in exc.message or attempt + 1 == _PORT_ATTEMPTS:
                    raise
        ctx.ready.set()

    async def list(self, sandbox_id: str) -> list[CodeContext]:
        contexts = await self._sandbox_contexts(sandbox_id)
        return sorted(contexts.values(), key=lambda c: c.created_at)

    async def get(self, sandbox_id: str, context_id: str) -> CodeContext:
        contexts = await self._sandbox_contexts(sandbox_id)
        ctx = contexts.get(context_id)
        if ctx is None:
            raise NotFoundError(
                f"code context {context_id!r} does not exist in sandbox {sandbox_id}; "
                "list_code_contexts() lists them"
            )
        return ctx

    async def restart(self, sandbox_id: str, context_id: str) -> CodeContext:
        ctx = await self.get(sandbox_id, context_id)
        if ctx.kernel is not None:
            # Stops a running cell at once; its run reports the kernel's death.
            await ctx.kernel.shutdown()
        async with ctx.lock:
            await self._start_kernel(ctx)
        return ctx

    async def remove(self, sandbox_id: str, context_id: str) -> None:
        ctx = await self.get(sandbox_id, context_id)
        self._contexts.get(sandbox_id, {}).pop(context_id, None)
        if ctx.kernel is not None:
            await ctx.kernel.shutdown()

    async def _default(self, sandbox_id: str, language: str) -> CodeContext:
        key = (sandbox_id, language)
        lock = self._starting.setdefault(key, asyncio.Lock())
        async with lock:
            contexts = await self._sandbox_contexts(sandbox_id)
            for ctx in contexts.values():
                if ctx.default and ctx.language == language:
                    return ctx
            return await self.create(sandbox_id, language, None, default=True)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        if self._stopping:
            work.close()
            return
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self, sandbox_id: str) -> None:
        """After a kernel exits: drop the sandbox's contexts if the sandbox has ended."""
        try:
            await self.sandboxes.get_running(sandbox_id)
        except Exception:
            await self.forget(sandbox_id)

    def prewarm(self, sandbox_id: str, image: str) -> None:
        """Start the default python context of a new sandbox of the code-interpreter
        image (or one built from it) now, so that its first run_code finds a kernel
        ready, as E2B's sandboxes do."""
        if not self._has_kernel(image):
            return
        self._background(self._prewarm(sandbox_id))

    async def _prewarm(self, sandbox_id: str) -> None:
        try:
            await self._default(sandbox_id, "python")
        except Exception as exc:  # the run_code that needs it reports the reason
            log.info("no kernel started ahead in %s: %s", sandbox_id, exc)

    def _has_kernel(self, image: str) -> bool:
        catalog = self.sandboxes.images
        if image in BASE_IMAGES or not catalog.is_recipe(CODE_INTERPRETER):
            return False  # the common case, answered without touching a file
        interpreter = catalog.recipe_image(CODE_INTERPRETER)
        if interpreter is None:
            return False
        if image == CODE_INTERPRETER:
            return True
        try:
            built = catalog.built(image)
        except Exception:
            return False
        # Built on top of it: its layers are the interpreter's, with more above them.
        return built is not None and all(
            layer in built.lowerdirs for layer in interpreter.lowerdirs
        )

    # ----------------------------------------------------------------------- run

    async def prepare(
        self, sandbox_id: str, language: str | None, context_id: str | None
    ) -> CodeContext:
        """The context a run goes to, started if need be: everything that can fail with a
        4xx fails here, before the answer's stream begins."""
        if context_id is not None:
            ctx = await self.get(sandbox_id, context_id)
            if language is not None and language != ctx.language:
                raise InvalidArgumentError(
                    f"context {context_id} runs {ctx.language}, not {language}; leave out "
                    "language or pick a context of that language"
                )
            await ctx.ready.wait()
            return ctx
        ctx = await self._default(sandbox_id, self._language(language or "python"))
        if ctx.kernel is not None and ctx.kernel.died.is_set() and not ctx.lock.locked():
            # A default context whose kernel died was reported dead by the run it died
            # in; the next run gets a fresh kernel rather than the same error again.
            async with ctx.lock:
                await ctx.kernel.shutdown()
                await self._start_kernel(ctx)
        return ctx

    async def run(
        self, ctx: CodeContext, code: str, *, timeout: float | None
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one run (docs/code-interpreter.md)."""
        async with ctx.lock:
            kernel = ctx.kernel
            assert kernel is not None
            async for event in kernel.execute(code, timeout=timeout, limit=self.output_limit):
                yield {**event, "context": ctx.id} if event["type"] == "end" else event
