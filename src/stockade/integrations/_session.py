"""The sandbox behind every framework adapter, and the text its tools answer a model with.

:class:`ManagedSandbox` owns one sandbox for one agent: it is created on the first tool
call (an agent that never calls a tool costs nothing), reused by every later call so files
and Python variables carry over, and terminated by :meth:`ManagedSandbox.close`. The
server ends it by itself after ``idle_timeout`` seconds without a call, so a program that
forgets to close it (or dies) leaves nothing running for long; the next call after that
starts a fresh sandbox and says so.

Concurrency: one ManagedSandbox may be used from several threads (a framework runs tool
calls in a thread pool); creation and close are serialised by a lock, while calls run
side by side in the one sandbox. The async adapters run these sync calls in a worker
thread (``asyncio.to_thread``), so the sandbox logic exists once.

Everything the sandbox says is an attacker's text: output is cut to ``max_output``
characters (head and tail kept) before it reaches the model or this process's memory
beyond that bound, and files are read through a bounded buffer.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from stockade._sync import Client, Sandbox
from stockade.commands import CommandResult, CommandTimeoutError
from stockade.errors import (
    AuthenticationError,
    InvalidArgumentError,
    NotFoundError,
    SandboxTerminatedError,
    StockadeConnectionError,
    StockadeError,
)
from stockade.execution import Execution

__all__ = [
    "DEFAULT_IMAGE",
    "TOOL_DESCRIPTIONS",
    "TOOL_NAMES",
    "TOOL_PARAMS",
    "ManagedSandbox",
    "clip",
    "missing_extra",
    "tool_schema",
]

DEFAULT_IMAGE = "code-interpreter"  # run_python needs its Jupyter kernel

# What each tool tells the model, shared by every framework so they cannot drift.
TOOL_DESCRIPTIONS: Mapping[str, str] = {
    "run_command": (
        "Run a shell command (sh -c) in an isolated Linux sandbox and return its exit code, "
        "stdout and stderr. Files persist between calls."
    ),
    "run_python": (
        "Run Python code in a stateful interpreter in the sandbox (variables and imports "
        "persist between calls) and return what it printed, the value of its last "
        "expression, and any exception."
    ),
    "write_file": (
        "Write text to a file in the sandbox (absolute path; parent directories are created)."
    ),
    "read_file": "Read a text file from the sandbox (absolute path).",
}

# Each tool's parameters (all strings) and what they mean to the model.
TOOL_PARAMS: Mapping[str, Mapping[str, str]] = {
    "run_command": {"command": "The shell command line, e.g. `ls -la /tmp`."},
    "run_python": {"code": "Python source to run."},
    "write_file": {"path": "Absolute path of the file.", "content": "The text to write."},
    "read_file": {"path": "Absolute path of the file."},
}
TOOL_NAMES = tuple(TOOL_DESCRIPTIONS)


def tool_schema(name: str) -> dict[str, Any]:
    """The JSON schema of tool ``name``'s arguments (strict: every property required, no
    others), as OpenAI's strict mode and the other frameworks accept it."""
    params = TOOL_PARAMS[name]
    return {
        "type": "object",
        "properties": {p: {"type": "string", "description": d} for p, d in params.items()},
        "required": list(params),
        "additionalProperties": False,
    }


# Errors that are the operator's to fix, not the model's: they fail the agent's run instead
# of being handed back as tool output the model would try to work around.
_OPERATOR_ERRORS = (AuthenticationError, StockadeConnectionError)

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

T = TypeVar("T")


def missing_extra(extra: str, module: str) -> ImportError:
    """The error for an adapter whose framework is not installed, naming the extra."""
    return ImportError(
        f"stockade.integrations needs {module} for this adapter; install it with: "
        f"pip install 'stockade[{extra}]'"
    )


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and tail (an error is
    usually at the end, the context at the start) and saying how much was dropped."""
    if len(text) <= limit:
        return text
    head = limit // 2
    tail = limit - head
    dropped = len(text) - head - tail
    return f"{text[:head]}\n[... {dropped} characters cut ...]\n{text[-tail:] if tail else ''}"


class _BoundedSink:
    """A ``write(bytes)`` target for :meth:`Files.read_to` that keeps at most ``limit``
    bytes and then stops the download by raising, so a huge file is never held whole."""

    class Full(Exception):
        pass

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        room = self.limit - len(self.data)
        self.data += data[:room]
        if len(data) > room:
            raise self.Full
        return len(data)


class ManagedSandbox:
    """One sandbox for one agent's tools: created lazily, terminated on :meth:`close`.

    ``image`` is the sandbox's image (``"code-interpreter"`` by default, which
    ``run_python`` needs); ``idle_timeout`` seconds without a call end it on the server
    even if this process never closes it; ``timeout`` bounds its whole life (the server's
    maximum is 86400). ``command_timeout`` bounds each command and each Python run.
    ``max_output`` bounds the text a tool returns. Further ``Sandbox.create`` arguments
    (``cpu``, ``memory``, ``block_network``, ``outbound_domain_allowlist``, ``env``, …) go
    in ``create_options``; ``client``, ``url`` and ``token`` say which server (by default
    ``STOCKADE_URL``/``STOCKADE_TOKEN``).

    Example::

        from stockade.integrations import ManagedSandbox

        with ManagedSandbox(idle_timeout=120) as box:
            print(box.run_command("uname -a"))
            print(box.run_python("x = 6 * 7\\nx"))
    """

    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        idle_timeout: float = 300,
        timeout: float = 3600,
        command_timeout: float = 120,
        max_output: int = 20_000,
        create_options: Mapping[str, Any] | None = None,
        client: Client | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> None:
        if idle_timeout <= 0 or timeout <= 0 or command_timeout <= 0:
            raise InvalidArgumentError(
                "idle_timeout, timeout and command_timeout are seconds and must be positive"
            )
        if max_output < 100:
            raise InvalidArgumentError(f"max_output must be at least 100, got {max_output}")
        reserved = {"image", "idle_timeout", "timeout", "client", "url", "token"}
        clash = reserved & set(create_options or {})
        if clash:
            raise InvalidArgumentError(
                f"pass {', '.join(sorted(clash))} as ManagedSandbox arguments, "
                "not in create_options"
            )
        self.image = image
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self.command_timeout = command_timeout
        self.max_output = max_output
        self.create_options = dict(create_options or {})
        self._client = client
        self._url = url
        self._token = token
        self._lock = threading.Lock()
        self._sandbox: Sandbox | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else (self.sandbox_id or "not started")
        return f"<ManagedSandbox {self.image} {state}>"

    def __enter__(self) -> ManagedSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sandbox_id(self) -> str | None:
        """The current sandbox's ID, or ``None`` before the first call and after close."""
        sandbox = self._sandbox
        return sandbox.id if sandbox is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    def sandbox(self) -> Sandbox:
        """The sandbox, created now if there is none yet (or the last one ended)."""
        with self._lock:
            if self._closed:
                raise InvalidArgumentError(
                    "this sandbox tool set was closed; make a new one to run more"
                )
            if self._sandbox is None:
                self._sandbox = Sandbox.create(
                    image=self.image,
                    idle_timeout=self.idle_timeout,
                    timeout=self.timeout,
                    client=self._client,
                    url=self._url,
                    token=self._token,
                    **self.create_options,
                )
            return self._sandbox

    def close(self) -> None:
        """Terminate the sandbox, if one was started; later calls raise. Idempotent."""
        with self._lock:
            self._closed = True
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            # NotFoundError: it ended (idle) and the server forgot it; nothing left to stop.
            with contextlib.suppress(NotFoundError):
                sandbox.terminate()

    # -- the tools -------------------------------------------------------------------------

    def call_tool(self, name: str, args: Mapping[str, Any]) -> str:
        """Call tool ``name`` with the arguments a model sent (checked against
        :func:`tool_schema`); a bad call comes back as text the model can correct."""
        params = TOOL_PARAMS.get(name)
        if params is None:
            return f"error: no tool {name!r}; the tools are {', '.join(TOOL_NAMES)}"
        if not isinstance(args, Mapping):
            return f"error: the arguments of {name} must be an object with {', '.join(params)}"
        unknown = sorted(set(args) - set(params))
        missing = [p for p in params if p not in args]
        wrong = [p for p in params if p in args and not isinstance(args[p], str)]
        if unknown or missing or wrong:
            problems = [f"unknown argument {u!r}" for u in unknown[:5]]
            problems += [f"missing argument {m!r}" for m in missing]
            problems += [f"argument {w!r} must be a string" for w in wrong]
            return f"error: {name}: {'; '.join(problems)}"
        method: Callable[..., str] = getattr(self, name)
        return method(**{p: args[p] for p in params})

    def run_command(self, command: str) -> str:
        """Run a shell line; the exit code, stdout and stderr as text for a model."""
        if not isinstance(command, str) or not command.strip():
            return "error: command must be a non-empty shell command line"
        return self._call(lambda sb: self._command_text(sb, command))

    def run_python(self, code: str) -> str:
        """Run Python in the sandbox's stateful kernel; its output as text for a model."""
        if not isinstance(code, str):
            return "error: code must be a string of Python source"
        return self._call(
            lambda sb: self.execution_text(sb.run_code(code, timeout=self.command_timeout))
        )

    def write_file(self, path: str, content: str) -> str:
        """Write ``content`` (text) to ``path``; what was written, as text."""
        if not isinstance(content, str):
            return "error: content must be text"
        return self._call(
            lambda sb: f"wrote {sb.files.write(path, content).size_bytes} bytes to {path}"
        )

    def read_file(self, path: str) -> str:
        """The text of the file at ``path``, at most ``max_output`` characters of it."""

        def read(sb: Sandbox) -> str:
            # UTF-8 takes at most 4 bytes a character: this many bytes always fill the
            # answer, and a larger file is cut without being downloaded whole.
            sink = _BoundedSink(self.max_output * 4)
            try:
                sb.files.read_to(path, sink)
            except _BoundedSink.Full:
                text = sink.data.decode("utf-8", "replace")
                return clip(text, self.max_output) + (
                    "\n[the file is longer; read parts of it with run_command, "
                    "e.g. sed -n '1,100p' FILE]"
                )
            return clip(sink.data.decode("utf-8", "replace"), self.max_output)

        return self._call(read)

    # -- text for the model ----------------------------------------------------------------

    def result_text(self, result: CommandResult, *, note: str = "") -> str:
        """A command's outcome as text: exit code first, then each stream, bounded."""
        half = self.max_output // 2
        parts = [f"exit_code: {result.exit_code}{note}"]
        if result.oom:
            parts.append("(the sandbox ran out of memory and the command was killed)")
        parts.append("stdout:\n" + clip(result.stdout, half))
        if result.stderr_bytes:
            parts.append("stderr:\n" + clip(result.stderr, half))
        return "\n".join(parts)

    def execution_text(self, ex: Execution) -> str:
        """A code run's outcome as text: printed output, the value, then any exception."""
        parts: list[str] = []
        if ex.logs.stdout:
            parts.append("stdout:\n" + "".join(ex.logs.stdout))
        if ex.logs.stderr:
            parts.append("stderr:\n" + "".join(ex.logs.stderr))
        for result in ex.results:
            if result.is_main_result and result.text is not None:
                parts.append("result: " + result.text)
            else:
                # Images and HTML mean nothing to a text model; say they were made.
                parts.append("displayed: " + ", ".join(result.formats()))
        if ex.timed_out:
            parts.append(f"(interrupted after timeout={self.command_timeout:g}s)")
        if ex.truncated:
            parts.append("(the output passed the server's cap; the rest was dropped)")
        if ex.error is not None:
            trace = _ANSI.sub("", ex.error.traceback)
            parts.append(f"error: {ex.error.name}: {ex.error.value}\n{trace}".rstrip())
        return clip("\n".join(parts) or "(no output)", self.max_output)

    def _command_text(self, sb: Sandbox, command: str) -> str:
        try:
            result = sb.run(command, timeout=self.command_timeout)
        except CommandTimeoutError as exc:
            if exc.result is None:
                raise
            note = f" (killed: ran past timeout={self.command_timeout:g}s)"
            return self.result_text(exc.result, note=note)
        return self.result_text(result)

    def use(self, action: Callable[[Sandbox], T]) -> T:
        """Run ``action`` on the sandbox (made now if needed). When the sandbox has ended
        it is forgotten, so that the next call starts a new one, and the error says so.

        Example::

            execution = box.use(lambda sb: sb.run_code("1 + 1"))
        """
        sandbox = self.sandbox()
        try:
            return action(sandbox)
        except (SandboxTerminatedError, NotFoundError) as exc:
            if isinstance(exc, NotFoundError) and not self._ended(sandbox):
                raise  # a missing file, not a missing sandbox
            with self._lock:
                if self._sandbox is sandbox:
                    self._sandbox = None
            raise SandboxTerminatedError(
                f"{exc}\nThe sandbox {sandbox.id} has ended (idle for idle_timeout="
                f"{self.idle_timeout:g}s, or past its lifetime); the next call starts a new "
                "one, without the files and variables of this one."
            ) from exc

    def _call(self, action: Callable[[Sandbox], str]) -> str:
        """:meth:`use`, with a Stockade error the model can act on returned as its text."""
        try:
            return self.use(action)
        except _OPERATOR_ERRORS:
            raise
        except StockadeError as exc:
            return f"error: {exc}"

    @staticmethod
    def _ended(sandbox: Sandbox) -> bool:
        try:
            return not sandbox.info().running
        except NotFoundError:
            return True
