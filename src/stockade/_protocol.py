"""The exec wire protocol, IO-free: request bodies, WebSocket frames and stream events.

Both exec transports (NDJSON over ``POST /exec`` and the ``/exec/ws`` WebSocket) decode
into the same small event types, so the sync and async clients share one reading of the
protocol described in docs/api.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import shlex
import signal as signal_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stockade.errors import InvalidArgumentError, ServerError, StockadeError, error_from_body

# The first byte of a binary WebSocket frame names its stream.
STDIN = 0
STDOUT = 1
STDERR = 2

# Stdin is sent in frames of at most this size, well under any server's message limit,
# so a large write interleaves with signals and resizes instead of blocking them.
STDIN_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Started:
    """The process is running."""


@dataclass(frozen=True)
class Output:
    """A chunk of output on ``fd`` (1 stdout, 2 stderr)."""

    fd: int
    data: bytes


@dataclass(frozen=True)
class Exited:
    """The process ended; ``timed_out``/``oom`` say when the server killed it."""

    exit_code: int
    timed_out: bool = False
    oom: bool = False


@dataclass(frozen=True)
class Failed:
    """The exec could not start (or the stream failed); ``error`` is the typed exception."""

    error: StockadeError


Event = Started | Output | Exited | Failed


def describe(argv: Sequence[str]) -> str:
    """A short, shell-quoted rendering of a command for messages."""
    text = shlex.join(argv)
    return text if len(text) <= 80 else text[:77] + "..."


def command_argv(command: str | Sequence[str]) -> list[str]:
    """``run()``'s command as argv: a string runs through ``sh -c``, a sequence as is."""
    if isinstance(command, str):
        if not command.strip():
            raise InvalidArgumentError("the command is empty; pass a shell string or an argv list")
        return ["sh", "-c", command]
    return checked_argv(command)


def checked_argv(argv: Sequence[str]) -> list[str]:
    """Validate an argv list before it goes on the wire."""
    result = list(argv)
    if not result:
        raise InvalidArgumentError("the command is empty; pass at least the program to run")
    for arg in result:
        if not isinstance(arg, str):
            raise InvalidArgumentError(f"command arguments must be strings, got {arg!r}")
    return result


def exec_body(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    workdir: str | None,
    timeout: float | None,
    user: str | None = None,
) -> dict[str, Any]:
    """The fields both exec transports share."""
    body: dict[str, Any] = {
        "argv": list(argv),
        "env": dict(env or {}),
        "workdir": workdir,
        "timeout": timeout,
    }
    if user is not None:
        body["user"] = user
    return body


def ndjson_exec_body(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    workdir: str | None,
    timeout: float | None,
    stdin: str | bytes | None,
    user: str | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/sandboxes/{id}/exec``."""
    body = exec_body(argv, env=env, workdir=workdir, timeout=timeout, user=user)
    if isinstance(stdin, str):
        body["stdin"] = stdin
    elif stdin is not None:
        body["stdin_b64"] = base64.b64encode(bytes(stdin)).decode("ascii")
    return body


def ws_start_message(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    workdir: str | None,
    timeout: float | None,
    pty: bool,
    cols: int,
    rows: int,
    user: str | None = None,
) -> str:
    """The first (text) frame the client sends on ``/exec/ws``."""
    body = exec_body(argv, env=env, workdir=workdir, timeout=timeout, user=user)
    body.update(pty=pty, cols=cols, rows=rows)
    return json.dumps(body)


def stdin_frames(data: bytes) -> list[bytes]:
    """``data`` as stdin frames (stream byte 0), at most :data:`STDIN_CHUNK` bytes each."""
    view = memoryview(data)
    return [
        bytes([STDIN]) + view[i : i + STDIN_CHUNK].tobytes()
        for i in range(0, len(view), STDIN_CHUNK)
    ]


STDIN_EOF_MESSAGE = json.dumps({"type": "stdin_eof"})


def resize_message(cols: int, rows: int) -> str:
    """Resize the pty to ``cols`` x ``rows``."""
    if cols <= 0 or rows <= 0:
        raise InvalidArgumentError(f"a terminal size must be positive, got {cols}x{rows}")
    return json.dumps({"type": "resize", "cols": int(cols), "rows": int(rows)})


def signal_name(sig: str | int) -> str:
    """Normalize ``"TERM"``, ``"sigterm"``, ``15`` or ``signal.SIGTERM`` to ``"SIGTERM"``."""
    if isinstance(sig, int):
        try:
            return signal_module.Signals(sig).name
        except ValueError:
            raise InvalidArgumentError(f"{sig} is not a signal number") from None
    name = sig.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if not hasattr(signal_module.Signals, name):
        raise InvalidArgumentError(f"unknown signal {sig!r}; use a name such as 'SIGTERM'")
    return name


def signal_message(sig: str | int) -> str:
    """Send ``sig`` to the process."""
    return json.dumps({"type": "signal", "signal": signal_name(sig)})


def error_from_event(payload: Any) -> StockadeError:
    """The typed exception for an in-stream ``{"type": "error", "error": {...}}`` event."""
    # An in-stream error has no HTTP status; give the class its own default status.
    probe = error_from_body(500, {"error": payload})
    return type(probe)(probe.message, code=probe.code, request_id=probe.request_id)


def _bad(what: str, value: object) -> ServerError:
    return ServerError(f"the server sent a malformed {what}: {str(value)[:200]!r}")


def _exited(event: Mapping[str, Any]) -> Exited:
    code = event.get("exit_code")
    if isinstance(code, bool) or not isinstance(code, int):
        raise _bad("exit event", event)
    return Exited(code, bool(event.get("timed_out")), bool(event.get("oom")))


def decode_json_event(text: str | bytes) -> Mapping[str, Any]:
    """One JSON event (a WebSocket text frame or an NDJSON line)."""
    try:
        event = json.loads(text)
    except ValueError:
        raise _bad("event", text) from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise _bad("event", text)
    return event


def decode_ws_message(message: str | bytes) -> Event | None:
    """A server WebSocket message as an event; ``None`` for messages this client ignores."""
    if isinstance(message, bytes):
        if not message or message[0] not in (STDOUT, STDERR):
            return None
        return Output(message[0], message[1:])
    return _decode_control(decode_json_event(message))


def _decode_control(event: Mapping[str, Any]) -> Event | None:
    kind = event["type"]
    if kind == "started":
        return Started()
    if kind == "exit":
        return _exited(event)
    if kind == "error":
        return Failed(error_from_event(event.get("error")))
    return None  # a newer server's event type: skip it rather than fail


def decode_ndjson_exec(event: Mapping[str, Any]) -> Event | None:
    """One decoded line of ``POST /exec``'s NDJSON stream as an event."""
    kind = event["type"]
    if kind in ("stdout", "stderr"):
        data = event.get("data")
        if not isinstance(data, str):
            raise _bad("output event", event)
        try:
            raw = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise _bad("output event", event) from None
        return Output(STDOUT if kind == "stdout" else STDERR, raw)
    return _decode_control(event)
