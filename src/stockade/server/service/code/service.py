"""Code contexts: stateful kernels per sandbox, and runs of code in them.

A context is one kernel. Each sandbox has, per language, a default context that is
started on its first use; others are made on request. Runs in one context take turns (a
kernel runs one cell at a time anyway); runs in different contexts are independent.

Kernels keep their state through a pause (they are let go of before it and attached
again on the sandbox's next use), and a snapshot or fork carries its sandbox's contexts
along: the copy's next use attaches to the same kernels, variables and all. Where each
context's kernel is gets recorded with its sandbox, so a restarted server attaches to
them the same way.
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

from ....errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    SandboxPausedError,
    ServerError,
)
from ...images.catalog import BASE_IMAGES
from ...state.ids import new_id
from ...state.records import SandboxRecord, SandboxStatus
from ..execs import ExecService
from ..recipes import CODE_INTERPRETER
from ..sandboxes import SandboxService
from .kernel import LANGUAGES, Kernel, KernelHandle, image_python, saved_workdir

__all__ = ["DEFAULT_OUTPUT_LIMIT", "CodeContext", "CodeService"]

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_LIMIT = 16 * 1024 * 1024
# ZeroMQ refuses (and drops the connection of) a single frame above the output cap plus
# this, and the relay a whole message (all its frames) above the cap plus twice this: one
# print of a gigabyte must not land in the server's memory, while one a little over the cap
# still comes back truncated rather than lost.
_MESSAGE_SLACK = 1024 * 1024
# Whole messages ZeroMQ queues per socket before it stops reading (the kernel's side then
# holds the rest, and drops past its own limit). With the bounds above and the kernel's
# own queue (Kernel, at most the output cap), what one kernel can make the server hold is
# about (this + 2) times the cap.
_RECEIVE_QUEUE = 4
_PORT_ATTEMPTS = 3


@dataclass
class CodeContext:
    id: str
    sandbox_id: str
    language: str
    workdir: str | None
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
            "workdir": self.workdir,
            "default": self.default,
            "status": self.status,
        }


# Code contexts (kernels) a sandbox may have at once.
MAX_CONTEXTS = 16


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
        self._zmq.setsockopt(zmq.MAXMSGSIZE, output_limit + _MESSAGE_SLACK)
        self._zmq.setsockopt(zmq.RCVHWM, _RECEIVE_QUEUE)
        self._zmq.setsockopt(zmq.LINGER, 0)
        self._contexts: dict[str, dict[str, CodeContext]] = {}
        self._starting: dict[tuple[str, str], asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        # Contexts whose kernels run on in a sandbox with nobody attached (paused, or a
        # snapshot's copy): attached again on the sandbox's next use.
        self._detached: dict[str, list[dict[str, Any]]] = {}
        self._attaching: dict[str, asyncio.Lock] = {}
        # Kernels let go of before a pause, disconnected after it.
        self._letting_go: dict[str, list[Kernel]] = {}
        # The absolute python3 of each image (layers and PATH): kernel.image_python.
        self._pythons: dict[tuple[tuple[str, ...], str], str] = {}
        sandboxes.before_pause.append(self.detach)
        sandboxes.after_pause.append(self._let_go)
        sandboxes.on_end.append(self.forget)

    async def stop(self) -> None:
        """Disconnect from every kernel; they run on in their sandboxes (which outlive the
        server), recorded there for the next server to attach to."""
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        kernels = [c.kernel for cs in self._contexts.values() for c in cs.values() if c.kernel]
        kernels += [k for ks in self._letting_go.values() for k in ks]
        self._contexts.clear()
        self._letting_go.clear()
        await asyncio.gather(*(k.release() for k in kernels), return_exceptions=True)
        self._zmq.term()

    # ------------------------------------------------------------------ contexts

    async def _sandbox_contexts(self, sandbox_id: str) -> dict[str, CodeContext]:
        """The contexts of a running sandbox (the contexts of an ended one are dropped)."""
        try:
            await self.sandboxes.ready_for_use(sandbox_id)
        except SandboxPausedError:
            raise  # its kernels wait for the resume
        except Exception:
            await self.forget(sandbox_id)
            raise
        if sandbox_id in self._detached:
            await self._attach(sandbox_id)
        return self._contexts.setdefault(sandbox_id, {})

    # ------------------------------------------------ pause, snapshots and forks

    def saved(self, sandbox_id: str) -> list[dict[str, Any]]:
        """The sandbox's contexts with running kernels, as a snapshot keeps them."""
        out = list(self._detached.get(sandbox_id, []))
        for ctx in self._contexts.get(sandbox_id, {}).values():
            handle = ctx.kernel.handle if ctx.kernel is not None else None
            if handle is not None and ctx.ready.is_set() and not ctx.kernel.died.is_set():  # type: ignore[union-attr]
                out.append(
                    {
                        "id": ctx.id, "language": ctx.language, "workdir": ctx.workdir,
                        "default": ctx.default, "created_at": ctx.created_at,
                        "handle": handle.to_json(),
                    }
                )  # fmt: skip
        return out

    async def take_contexts(self, sandbox_id: str, saved: list[dict[str, Any]]) -> None:
        """Give a restored or forked sandbox the contexts its snapshot kept."""
        if saved:
            self._detached[sandbox_id] = [dict(s) for s in saved]
            await self.sandboxes.save_contexts(sandbox_id, self.saved(sandbox_id))

    async def start(self) -> None:
        """Take up the contexts of the sandboxes that outlived the last server."""
        for status in (SandboxStatus.RUNNING, SandboxStatus.PAUSED):
            for record in await self.sandboxes.store.list_sandboxes(status):
                if record.contexts:
                    self._detached[record.id] = list(record.contexts)

    async def _persist(self, sandbox_id: str) -> None:
        try:
            await self.sandboxes.save_contexts(sandbox_id, self.saved(sandbox_id))
        except Exception:
            log.exception("recording the code contexts of %s", sandbox_id)

    async def detach(self, sandbox_id: str) -> None:
        """Let go of the sandbox's kernels without stopping them (it is about to pause).

        Nothing is sent to the sandbox now: closing the kernels' watchers and relays
        while it freezes left closes half-delivered, and kernels were found dead after
        the resume. Their connections simply end with the pause (the agent forgets every
        exec when the next link starts); :meth:`_let_go` then frees this side.
        """
        saved = self.saved(sandbox_id)
        contexts = self._contexts.pop(sandbox_id, {}).values()
        kernels = [c.kernel for c in contexts if c.kernel is not None]
        for kernel in kernels:
            kernel.let_go()
        self._letting_go.setdefault(sandbox_id, []).extend(kernels)
        if saved:
            self._detached[sandbox_id] = saved

    async def _let_go(self, sandbox_id: str) -> None:
        for kernel in self._letting_go.pop(sandbox_id, []):
            await kernel.release()

    async def _attach(self, sandbox_id: str) -> None:
        async with self._attaching.setdefault(sandbox_id, asyncio.Lock()):
            saved = self._detached.pop(sandbox_id, None)
            if not saved:
                return
            record = await self.sandboxes.get_running(sandbox_id)
            contexts = self._contexts.setdefault(sandbox_id, {})
            for entry in saved:
                ctx = CodeContext(
                    entry["id"], sandbox_id, entry["language"], saved_workdir(entry),
                    bool(entry["default"]), created_at=float(entry["created_at"]),
                )  # fmt: skip
                ctx.kernel = self._kernel(ctx, record.image, await self._python(record))
                try:
                    await ctx.kernel.attach(KernelHandle.from_json(entry["handle"]))
                except Exception as exc:
                    # Gone (it was killed, or its snapshot came from another server's
                    # sandbox): a default context starts afresh on its next run.
                    log.info(
                        "context %s of %s (kernel PID %s) not attached: %s",
                        ctx.id, sandbox_id, entry["handle"].get("pid"), exc,
                    )  # fmt: skip
                    continue
                ctx.ready.set()
                contexts[ctx.id] = ctx
            await self._persist(sandbox_id)

    def _kernel(self, ctx: CodeContext, image: str, python: str) -> Kernel:
        return Kernel(
            self.execs, ctx.sandbox_id, LANGUAGES[ctx.language], ctx.workdir,
            zmq_context=self._zmq, runtime_root=self.runtime_root, image=image,
            python=python, queue_bytes=self.output_limit,
            max_message=self.output_limit + 2 * _MESSAGE_SLACK,
            on_exit=lambda: self._background(self._reap(ctx.sandbox_id)),
        )  # fmt: skip

    async def _python(self, record: SandboxRecord) -> str:
        """The absolute python3 the sandbox's image has on its PATH (looked up once per
        image, in its layers: nothing written in the sandbox can take its place)."""
        path = self.sandboxes.process_env(record).get("PATH", "")
        key = (tuple(record.layers), path)
        python = self._pythons.get(key)
        if python is None:
            python = await asyncio.to_thread(image_python, record.layers, path)
            self._pythons[key] = python
        return python

    async def forget(self, sandbox_id: str) -> None:
        self._detached.pop(sandbox_id, None)
        self._attaching.pop(sandbox_id, None)
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
        self, sandbox_id: str, language: str, workdir: str | None, *, default: bool = False
    ) -> CodeContext:
        """Start a new context and return it once its kernel answers."""
        self._language(language)
        if workdir is not None and not workdir.startswith("/"):
            raise InvalidArgumentError(
                f"workdir {workdir!r} must be an absolute path in the sandbox"
            )
        contexts = await self._sandbox_contexts(sandbox_id)
        if len(contexts) >= MAX_CONTEXTS:
            # Each context is a kernel process in the sandbox (a Python with its imports):
            # a caller must not make the server start them without end.
            raise ConflictError(
                f"sandbox {sandbox_id} has {len(contexts)} code contexts, the most it may "
                "have; remove one first (sb.remove_code_context(ctx) or `stockade "
                "code-context rm`)"
            )
        ctx = CodeContext(new_id("ctx"), sandbox_id, language, workdir, default)
        contexts[ctx.id] = ctx
        try:
            await self._start_kernel(ctx)
        except BaseException:
            contexts.pop(ctx.id, None)
            raise
        return ctx

    async def _start_kernel(self, ctx: CodeContext) -> None:
        record = await self.sandboxes.get_running(ctx.sandbox_id)
        python = await self._python(record)
        ctx.ready.clear()
        for attempt in range(_PORT_ATTEMPTS):
            kernel = self._kernel(ctx, record.image, python)
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
        await self._persist(ctx.sandbox_id)

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
        await self._persist(sandbox_id)

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
        """After a kernel exits: drop the sandbox's contexts if the sandbox has ended (a
        paused one keeps them for its resume)."""
        try:
            record = await self.sandboxes.get(sandbox_id)
        except NotFoundError:
            record = None
        kept = (SandboxStatus.RUNNING, SandboxStatus.PAUSED, SandboxStatus.STARTING)
        if record is None or record.status not in kept:
            await self.forget(sandbox_id)

    def prewarm(self, sandbox_id: str, image: str, tenant: str = "default") -> None:
        """Start the default python context of a new sandbox of the code-interpreter
        image (or one built from it) now, so that its first run_code finds a kernel
        ready, as E2B's sandboxes do."""
        if not self._has_kernel(image, tenant):
            return
        self._background(self._prewarm(sandbox_id))

    async def _prewarm(self, sandbox_id: str) -> None:
        try:
            await self._default(sandbox_id, "python")
        except Exception as exc:  # the run_code that needs it reports the reason
            log.info("no kernel started ahead in %s: %s", sandbox_id, exc)

    def _has_kernel(self, image: str, tenant: str) -> bool:
        catalog = self.sandboxes.images
        if image in BASE_IMAGES or not catalog.is_recipe(CODE_INTERPRETER):
            return False  # the common case, answered without touching a file
        interpreter = catalog.recipe_image(CODE_INTERPRETER)
        if interpreter is None:
            return False
        if image == CODE_INTERPRETER:
            return True
        try:
            built = catalog.built(image, tenant)
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
            # A run is activity for idle_timeout from its start to its end.
            self.sandboxes.busy(ctx.sandbox_id)
            try:
                async for event in kernel.execute(code, timeout=timeout, limit=self.output_limit):
                    yield {**event, "context": ctx.id} if event["type"] == "end" else event
            finally:
                self.sandboxes.idle_again(ctx.sandbox_id)
