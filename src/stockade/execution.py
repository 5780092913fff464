"""What :meth:`Sandbox.run_code <stockade.Sandbox.run_code>` returns, and how its stream
of events becomes that.

A code run answers with NDJSON events (``stdout``, ``stderr``, ``result``, ``exception``,
then ``end``; see docs/code-interpreter.md). :class:`ExecutionBuilder` folds them into
an :class:`Execution` and calls the caller's callbacks as each one arrives; the sync and
async SDKs both drive it, so there is one reading of the protocol.

Example::

    from stockade import Sandbox

    with Sandbox.create(image="code-interpreter") as sb:
        ex = sb.run_code("import math; print('pi'); math.pi")
        assert ex.logs.stdout == ["pi\\n"] and ex.text == "3.141592653589793"
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from stockade._protocol import error_from_event
from stockade.errors import InvalidArgumentError, ServerError
from stockade.models import _opt_str, _str

__all__ = ["CodeContext", "Execution", "ExecutionError", "Logs", "Result"]

# The short names of the MIME types a Result has attributes for, in the order that
# formats() lists them.
_FORMATS = {
    "text": "text/plain",
    "html": "text/html",
    "markdown": "text/markdown",
    "svg": "image/svg+xml",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "pdf": "application/pdf",
    "latex": "text/latex",
    "json": "application/json",
    "javascript": "application/javascript",
}
_MIME_NAMES = {mime: name for name, mime in _FORMATS.items()}
# Every format but JSON travels as a string (the binary ones as base64).
_STRING_MIMES = frozenset(mime for name, mime in _FORMATS.items() if name != "json")


@dataclass(frozen=True, repr=False)
class Result:
    """One object the code displayed: the value of its last expression
    (``is_main_result``), or something passed to ``display()`` or shown by ``plt.show()``.

    ``data`` is the raw MIME bundle (``{"text/plain": …, "image/png": …}``); the
    attributes read the common formats out of it, ``None`` when absent. Binary formats
    (``png``, ``jpeg``, ``pdf``) are base64 strings, as Jupyter sends them. In a notebook
    a Result displays as itself (it has the ``_repr_*_`` methods).

    Example::

        ex = sb.run_code("import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()")
        png = base64.b64decode(ex.results[0].png)
    """

    data: Mapping[str, Any] = field(default_factory=dict)
    is_main_result: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Result:
        bundle = data.get("data")
        if not isinstance(bundle, dict) or not all(isinstance(k, str) for k in bundle):
            raise TypeError(f"data must be an object keyed by MIME type, got {bundle!r:.200}")
        for mime in _STRING_MIMES & bundle.keys():
            if not isinstance(bundle[mime], str):
                raise TypeError(f"{mime} must be a string, got {bundle[mime]!r:.200}")
        return cls(data=dict(bundle), is_main_result=bool(data.get("is_main_result")))

    def to_json(self) -> dict[str, Any]:
        return {"data": dict(self.data), "is_main_result": self.is_main_result}

    def __repr__(self) -> str:
        main = " main" if self.is_main_result else ""
        return f"<Result{main} {', '.join(self.formats()) or 'empty'}>"

    def _get(self, name: str) -> str | None:
        value = self.data.get(_FORMATS[name])
        return value if isinstance(value, str) else None

    @property
    def text(self) -> str | None:
        """``text/plain``: what the Python REPL would print for it."""
        return self._get("text")

    @property
    def html(self) -> str | None:
        """``text/html`` (a pandas DataFrame's table, ``IPython.display.HTML``)."""
        return self._get("html")

    @property
    def markdown(self) -> str | None:
        """``text/markdown``."""
        return self._get("markdown")

    @property
    def svg(self) -> str | None:
        """``image/svg+xml``, as XML text."""
        return self._get("svg")

    @property
    def png(self) -> str | None:
        """``image/png``, base64-encoded."""
        return self._get("png")

    @property
    def jpeg(self) -> str | None:
        """``image/jpeg``, base64-encoded."""
        return self._get("jpeg")

    @property
    def pdf(self) -> str | None:
        """``application/pdf``, base64-encoded."""
        return self._get("pdf")

    @property
    def latex(self) -> str | None:
        """``text/latex``."""
        return self._get("latex")

    @property
    def json(self) -> Any:
        """``application/json``: a JSON value (not its text), or ``None``."""
        return self.data.get(_FORMATS["json"])

    @property
    def javascript(self) -> str | None:
        """``application/javascript``."""
        return self._get("javascript")

    def formats(self) -> list[str]:
        """The formats present: the attribute names above (``"text"``, ``"png"``, …) for
        the common ones, then the MIME type of any other (``"application/vnd.…"``).

        Example::

            if "png" in result.formats(): ...
        """
        known = [name for name, mime in _FORMATS.items() if mime in self.data]
        return known + [mime for mime in self.data if mime not in _MIME_NAMES]

    # Jupyter's display protocol: a Result shown in a notebook renders like the original
    # (the bundle carries every format, so no per-format _repr_*_ methods are needed).

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {
            mime: value
            for mime, value in self.data.items()
            if (not include or mime in include) and (not exclude or mime not in exclude)
        }


@dataclass(frozen=True)
class Logs:
    """What the code printed: chunks of text in the order they arrived."""

    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"stdout": list(self.stdout), "stderr": list(self.stderr)}


@dataclass(frozen=True)
class ExecutionError:
    """An exception the code raised (data, not a Python exception of this process).

    ``name`` is its class (``"ZeroDivisionError"``; ``"KeyboardInterrupt"`` after a
    timeout; ``"KernelDied"`` when the kernel exited), ``value`` its message and
    ``traceback`` the formatted traceback, as the kernel wrote it (it may hold ANSI colors).
    """

    name: str
    value: str
    traceback: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExecutionError:
        return cls(
            name=_str(data, "name"),
            value=_str(data, "value", ""),
            traceback=_str(data, "traceback", ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "traceback": self.traceback}


@dataclass(frozen=True)
class Execution:
    """Everything one :meth:`~stockade.Sandbox.run_code` produced.

    ``results`` in display order; ``logs`` the printed text; ``error`` the exception the
    code raised, or ``None``. ``execution_count`` is the kernel's cell number,
    ``context_id`` the context it ran in. ``truncated`` says the output passed the
    server's cap and the rest was dropped; ``timed_out`` that the run passed its
    ``timeout`` and was interrupted (``error`` is then the ``KeyboardInterrupt`` it raised).

    Example::

        ex = sb.run_code("print('hi'); 6 * 7")
        assert (ex.logs.stdout, ex.text, ex.error) == (["hi\\n"], "42", None)
    """

    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None
    context_id: str | None = None
    truncated: bool = False
    timed_out: bool = False

    @property
    def text(self) -> str | None:
        """The ``text/plain`` of the main result (the last expression's value), if any."""
        for result in self.results:
            if result.is_main_result:
                return result.text
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "results": [r.to_json() for r in self.results],
            "logs": self.logs.to_json(),
            "error": None if self.error is None else self.error.to_json(),
            "execution_count": self.execution_count,
            "context_id": self.context_id,
            "truncated": self.truncated,
            "timed_out": self.timed_out,
        }


@dataclass(frozen=True)
class CodeContext:
    """A code context: one kernel, with its own variables, imports and working directory.

    ``status`` is ``starting``, ``idle``, ``busy`` or ``dead`` (the kernel exited;
    restart it). ``default`` marks the context that ``run_code`` uses for its
    ``language`` when given no ``context``.

    Example::

        ctx = sb.create_code_context(language="bash", workdir="/tmp")
        sb.run_code("pwd", context=ctx)
    """

    id: str
    language: str
    # The kernel's working directory; None: the sandbox's (its ``workdir``, else ``/``).
    workdir: str | None = None
    default: bool = False
    status: str = "idle"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CodeContext:
        return cls(
            id=_str(data, "id"),
            language=_str(data, "language"),
            # A server older than the rename answers "cwd".
            workdir=_opt_str(data, "workdir" if "workdir" in data else "cwd"),
            default=bool(data.get("default")),
            status=_str(data, "status"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "language": self.language,
            "workdir": self.workdir,
            "default": self.default,
            "status": self.status,
        }


# -- requests ------------------------------------------------------------------------------


def context_id(context: CodeContext | str) -> str:
    """The ID of ``context``, given as a :class:`CodeContext` or as its ID."""
    if isinstance(context, CodeContext):
        return context.id
    if not isinstance(context, str) or not context:
        raise InvalidArgumentError(
            f"a code context is a CodeContext or its ID ('ctx-…'), got {context!r}"
        )
    return context


def contexts_path(context: CodeContext | str | None = None, suffix: str = "") -> str:
    """``/code/contexts[/{id}{suffix}]``, to go after the sandbox's path."""
    if context is None:
        return "/code/contexts"
    return f"/code/contexts/{quote(context_id(context), safe='')}{suffix}"


def run_body(
    code: str,
    *,
    language: str | None,
    context: CodeContext | str | None,
    timeout: float | None,
) -> dict[str, Any]:
    """The body of ``POST /v1/sandboxes/{id}/code/run``.

    With neither ``language`` nor ``context`` the code runs in the default Python
    context; with a context alone the server takes the context's language.
    """
    if not isinstance(code, str):
        raise InvalidArgumentError(f"code must be a string, got {type(code).__name__}")
    ctx = None if context is None else context_id(context)
    if language is None and ctx is None:
        language = "python"
    return {"code": code, "language": language, "context": ctx, "timeout": timeout}


def context_body(language: str, workdir: str | None) -> dict[str, Any]:
    """The body of ``POST /v1/sandboxes/{id}/code/contexts`` (no ``workdir``: the
    sandbox's)."""
    if not isinstance(language, str) or not language:
        raise InvalidArgumentError(f"language must be a name such as 'python', got {language!r}")
    body: dict[str, Any] = {"language": language}
    if workdir is not None:
        body["workdir"] = workdir
    return body


# -- the event stream ----------------------------------------------------------------------


def _malformed(what: str, event: object) -> ServerError:
    return ServerError(f"the server sent a malformed {what} event: {str(event)[:200]!r}")


class ExecutionBuilder:
    """Folds the events of a code run into an :class:`Execution`, calling each callback
    as its event arrives.

    :meth:`feed` takes one decoded event and returns ``True`` at ``end``, the last one;
    an ``error`` event raises its typed :class:`~stockade.StockadeError`, a malformed
    event a :class:`~stockade.ServerError`, and event types this SDK does not know are
    skipped (a newer server may send more). A callback's exception propagates.
    """

    def __init__(
        self,
        *,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        on_result: Callable[[Result], object] | None = None,
        on_error: Callable[[ExecutionError], object] | None = None,
    ) -> None:
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._on_result = on_result
        self._on_error = on_error
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._results: list[Result] = []
        self._error: ExecutionError | None = None
        self._end: Mapping[str, Any] | None = None

    @property
    def ended(self) -> bool:
        """Whether the ``end`` event came."""
        return self._end is not None

    def feed(self, event: Mapping[str, Any]) -> bool:
        """Take one event; ``True`` when it was the last (``end``)."""
        kind = event.get("type")
        if kind in ("stdout", "stderr"):
            text = event.get("text")
            if not isinstance(text, str):
                raise _malformed(kind, event)
            if kind == "stdout":
                self._stdout.append(text)
                if self._on_stdout is not None:
                    self._on_stdout(text)
            else:
                self._stderr.append(text)
                if self._on_stderr is not None:
                    self._on_stderr(text)
        elif kind == "result":
            try:
                result = Result.from_json(event)
            except (KeyError, TypeError, ValueError):
                raise _malformed("result", event) from None
            self._results.append(result)
            if self._on_result is not None:
                self._on_result(result)
        elif kind == "exception":
            try:
                error = ExecutionError.from_json(event)
            except (KeyError, TypeError, ValueError):
                raise _malformed("exception", event) from None
            # A cell raises once; should more come (a kernel dying after an error), the
            # first is the cause worth reporting, and each still reaches the callback.
            if self._error is None:
                self._error = error
            if self._on_error is not None:
                self._on_error(error)
        elif kind == "end":
            count = event.get("execution_count")
            if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
                raise _malformed("end", event)
            if event.get("context") is not None and not isinstance(event.get("context"), str):
                raise _malformed("end", event)
            self._end = event
            return True
        elif kind == "error":
            raise error_from_event(event.get("error"))
        return False

    def execution(self) -> Execution:
        """The execution so far (complete once :attr:`ended`)."""
        end = self._end or {}
        return Execution(
            results=list(self._results),
            logs=Logs(stdout=list(self._stdout), stderr=list(self._stderr)),
            error=self._error,
            execution_count=end.get("execution_count"),
            context_id=end.get("context"),
            truncated=bool(end.get("truncated")),
            timed_out=bool(end.get("timed_out")),
        )
