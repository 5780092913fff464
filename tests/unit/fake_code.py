"""The code-interpreter routes of docs/code-interpreter.md on top of :class:`FakeApi`.

Runs answer canned events chosen by the code's text (see :meth:`FakeCodeApi.events`),
streamed one line per chunk, so that a test can see what the client did between two
lines (``on_pull``).
"""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.unit.fakes import FakeApi, error_body

LANGUAGES = ("bash", "python")
TRACEBACK = (
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m\n"
    "\x1b[0;31mZeroDivisionError\x1b[0m                         Traceback (most recent call last)\n"
    "Cell \x1b[0;32mIn[2], line 1\x1b[0m\n----> 1 1/0\n\n"
    "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"
)


def tiny_png(width: int, height: int) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` red pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )  # fmt: skip


PNG = tiny_png(40, 30)
PNG_B64 = base64.b64encode(PNG).decode()


class Lines(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body sent one NDJSON line per chunk; ``on_pull(i)`` runs just before
    line ``i`` is handed to the client."""

    def __init__(self, events: list[dict[str, Any]], on_pull: Callable[[int], object]) -> None:
        self.lines = [json.dumps(e).encode() + b"\n" for e in events]
        self.on_pull = on_pull

    def __iter__(self) -> Iterator[bytes]:
        for i, line in enumerate(self.lines):
            self.on_pull(i)
            yield line

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, line in enumerate(self.lines):
            self.on_pull(i)
            yield line


@dataclass
class FakeCodeApi(FakeApi):
    """FakeApi plus contexts and runs. ``sb-1`` runs the ``code-interpreter`` image; a
    sandbox of any other image has no kernel."""

    contexts: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    run_bodies: list[dict[str, Any]] = field(default_factory=list)
    on_pull: Callable[[int], object] = lambda i: None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.sandboxes["sb-1"]["image"] = "code-interpreter"

    def _route(self, request: httpx.Request, path: str) -> httpx.Response:
        m = re.fullmatch(r"/v1/sandboxes/([^/]+)/code(/.*)", path)
        if not m:
            return super()._route(request, path)
        record = self.sandboxes.get(m.group(1))
        if record is None:
            return _error(404, "not_found", f"sandbox {m.group(1)} does not exist")
        if record["status"] != "running":
            return _error(409, "sandbox_terminated", f"sandbox {m.group(1)} timed out")
        if record["image"] != "code-interpreter":
            return _error(
                409, "kernel_unavailable",
                f"image {record['image']} has no Jupyter kernel; use image='code-interpreter'",
            )  # fmt: skip
        return self._code(request, m.group(2))

    def _code(self, request: httpx.Request, rest: str) -> httpx.Response:
        method = request.method
        if rest == "/run" and method == "POST":
            body = json.loads(request.content)
            self.run_bodies.append(body)
            ctx_id = body.get("context")
            if ctx_id is not None:
                ctx = self.contexts.get(ctx_id)
                if ctx is None:
                    return _error(404, "not_found", f"code context {ctx_id!r} does not exist")
            else:
                language = body.get("language") or "python"
                if language not in LANGUAGES:
                    return _error(422, "invalid_argument", "use one of: bash, python")
                ctx = self._default(language)
            events = self.events(body["code"], ctx)
            return httpx.Response(
                200,
                stream=Lines(events, self.on_pull),
                headers={"content-type": "application/x-ndjson"},
            )
        if rest == "/contexts" and method == "POST":
            body = json.loads(request.content)
            if body["language"] not in LANGUAGES:
                return _error(422, "invalid_argument", "use one of: bash, python")
            assert set(body) <= {"language", "workdir"}, body
            return httpx.Response(201, json=self._new(body["language"], body.get("workdir"), False))
        if rest == "/contexts" and method == "GET":
            return httpx.Response(200, json={"contexts": list(self.contexts.values())})
        m = re.fullmatch(r"/contexts/([^/]+)(/restart)?", rest)
        if m and m.group(1) in self.contexts:
            ctx = self.contexts[m.group(1)]
            if m.group(2) and method == "POST":
                self.counts[ctx["id"]] = 0
                ctx["status"] = "idle"
                return httpx.Response(200, json=ctx)
            if not m.group(2) and method == "DELETE":
                del self.contexts[ctx["id"]]
                return httpx.Response(204)
        return _error(404, "not_found", f"code context in {rest} does not exist")

    def _new(self, language: str, workdir: str | None, default: bool) -> dict[str, Any]:
        ctx_id = f"ctx-{len(self.contexts) + 1}"
        self.contexts[ctx_id] = {"id": ctx_id, "language": language, "workdir": workdir,
                                 "default": default, "status": "idle"}  # fmt: skip
        return self.contexts[ctx_id]

    def _default(self, language: str) -> dict[str, Any]:
        for ctx in self.contexts.values():
            if ctx["default"] and ctx["language"] == language:
                return ctx
        return self._new(language, None, True)

    def events(self, code: str, ctx: dict[str, Any]) -> list[dict[str, Any]]:
        """The canned answer for ``code`` in ``ctx``."""
        self.counts[ctx["id"]] = count = self.counts.get(ctx["id"], 0) + 1
        end: dict[str, Any] = {"type": "end", "execution_count": count, "context": ctx["id"],
                               "truncated": False, "timed_out": False}  # fmt: skip
        canned: dict[str, list[dict[str, Any]]] = {
            "print('hi'); 6*7": [
                {"type": "stdout", "text": "hi\n"},
                {"type": "result", "data": {"text/plain": "42"}, "is_main_result": True},
            ],
            "plot": [
                {"type": "stdout", "text": "drawing"},
                {
                    "type": "result",
                    "is_main_result": False,
                    "data": {"text/plain": "<Figure size 40x30 with 1 Axes>", "image/png": PNG_B64},
                },
            ],
            "df": [
                {
                    "type": "result",
                    "is_main_result": True,
                    "data": {
                        "text/plain": "   a\n0  1\n1  2",
                        "text/html": "<table><tr><td>1</td></tr></table>",
                    },
                }
            ],
            "html": [
                {
                    "type": "result",
                    "is_main_result": False,
                    "data": {
                        "text/plain": "<IPython.core.display.HTML object>",
                        "text/html": "<b>hi</b>",
                    },
                }
            ],
            "1/0": [
                {"type": "stderr", "text": "warn\n"},
                {
                    "type": "exception",
                    "name": "ZeroDivisionError",
                    "value": "division by zero",
                    "traceback": TRACEBACK,
                },
            ],
            "slow": [
                {"type": "stdout", "text": "tick\n"},
                {
                    "type": "exception",
                    "name": "KeyboardInterrupt",
                    "value": "",
                    "traceback": "KeyboardInterrupt: ",
                },
            ],
            "big": [
                {"type": "stdout", "text": "x" * 100},
                {"type": "stderr", "text": "[output truncated at 16 MiB]\n"},
            ],
            "newer": [{"type": "progress", "percent": 50}, {"type": "stdout", "text": "ok\n"}],
        }
        body = canned.get(code, [{"type": "stdout", "text": code + "\n"}])
        if code == "slow":
            end["timed_out"] = True
        if code == "big":
            end["truncated"] = True
        if code == "cut":
            return [{"type": "stdout", "text": "partial\n"}]
        if code == "gone":
            return [{"type": "stdout", "text": "partial\n"}, {"type": "error", "error": error_body(
                "sandbox_terminated", "sandbox sb-1 ran out of memory")["error"]}]  # fmt: skip
        return [*body, end]


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json=error_body(code, message))
