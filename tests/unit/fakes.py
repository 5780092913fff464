"""In-memory stand-ins for a Stockade server, speaking the protocol of docs/api.md.

``FakeApi`` answers HTTP through ``httpx.MockTransport``; ``FakeExecServer`` is a real
WebSocket server on loopback (in a thread) running a handful of scripted programs, so
the SDK's WebSocket transport, threading and framing are exercised for real.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import websockets.exceptions
import websockets.sync.server
from websockets.http11 import Request, Response

from stockade.server.service.access import AccessService
from stockade.server.state.store import Store

TOKEN = "test-token"
BIG_STDERR = 3 * 1024 * 1024  # several times any socket buffer: a deadlock would show


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "request_id": "req-test"}}


def sandbox_record(sandbox_id: str, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": sandbox_id,
        "status": "running",
        "reason": None,
        "message": None,
        "exit_code": None,
        "image": "python",
        "cpu": 1.0,
        "memory": 512,
        "disk": 1024,
        "timeout": 300.0,
        "workdir": None,
        "tags": {},
        "entrypoint": None,
        "created_at": "2026-11-26T18:00:00.000000Z",
        "started_at": "2026-11-26T18:00:00.500000Z",
        "ended_at": None,
        "expires_at": "2026-11-26T18:05:00.000000Z",
        "network": {
            "mode": "open", "block_network": False, "outbound_cidr_allowlist": None,
            "outbound_domain_allowlist": None, "ip": "10.213.0.6", "reason": None,
        },
        "ports": [{"port": 8080, "public": False, "path": f"/proxy/{sandbox_id}/8080/",
                   "host": None}],
        "access_token": "sat_test",
        "volumes": {},
        "idle_timeout": None,
        "on_timeout": "terminate",
        "auto_resume": False,
        "paused_at": None,
        "snapshot": None,
        "name": None,
        "user": None,
    }  # fmt: skip
    record.update(overrides)
    return record


def ndjson(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(event).encode() + b"\n" for event in events)


def out(kind: str, data: bytes) -> dict[str, Any]:
    return {"type": kind, "data": base64.b64encode(data).decode()}


def exit_event(code: int, *, timed_out: bool = False, oom: bool = False) -> dict[str, Any]:
    return {"type": "exit", "exit_code": code, "timed_out": timed_out, "oom": oom}


@dataclass
class FakeApi:
    """The HTTP half of a server: sandboxes, files, images, logs and NDJSON exec."""

    token: str = TOKEN
    requests: list[httpx.Request] = field(default_factory=list)
    sandboxes: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[tuple[str, str], bytes] = field(default_factory=dict)
    dirs: set[tuple[str, str]] = field(default_factory=set)
    images: list[dict[str, Any]] = field(default_factory=list)
    logs: bytes = "booting\nserving on :8000 ✓\n".encode()
    # (method, path) -> (status, body): the next matching request gets this error.
    errors: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    exec_events: Callable[[dict[str, Any]], bytes] | None = None

    def __post_init__(self) -> None:
        self.sandboxes["sb-1"] = sandbox_record("sb-1", tags={"user": "x"})
        python = {"name": "python", "ready": True, "description": "Debian with python3"}
        base = {"name": "base", "ready": False, "description": "Debian minbase"}
        self.images = [{**python, "size_mib": 261}, {**base, "size_mib": None}]
        self.dirs.add(("sb-1", "/"))

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def last(self, method: str | None = None) -> httpx.Request:
        matching = [r for r in self.requests if method is None or r.method == method]
        return matching[-1]

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        injected = self.errors.pop((request.method, path), None)
        if injected is not None:
            status, body = injected
            if isinstance(body, bytes):
                return httpx.Response(status, content=body)
            return httpx.Response(status, json=body)
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok", "version": "0.1.0"})
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return httpx.Response(401, json=error_body("unauthorized", "missing or wrong token"))
        return self._route(request, path)

    def _route(self, request: httpx.Request, path: str) -> httpx.Response:
        method = request.method
        if path == "/v1/images" and method == "GET":
            return httpx.Response(200, json={"images": self.images})
        if m := re.fullmatch(r"/v1/images/([^/]+)/build", path):
            return self._build(m.group(1))
        if path == "/v1/sandboxes" and method == "POST":
            return self._create(json.loads(request.content))
        if path == "/v1/sandboxes" and method == "GET":
            return self._list(request.url.params)
        m = re.fullmatch(r"/v1/sandboxes/([^/]+)(/.*)?", path)
        if not m:
            return httpx.Response(404, json=error_body("not_found", f"no route {path}"))
        sandbox_id, rest = m.group(1), m.group(2) or ""
        record = self.sandboxes.get(sandbox_id)
        if record is None:
            return httpx.Response(
                404, json=error_body("not_found", f"sandbox {sandbox_id} does not exist")
            )
        if rest == "" and method == "GET":
            return httpx.Response(200, json=record)
        if rest == "" and method == "DELETE":
            if record["status"] == "running":
                record.update(status="terminated", reason="terminated", message="terminated by API")
            return httpx.Response(200, json=record)
        if rest == "/logs":
            return httpx.Response(200, content=self.logs, headers={"content-type": "text/plain"})
        if record["status"] != "running":
            return httpx.Response(
                409, json=error_body("sandbox_terminated", f"sandbox {sandbox_id} timed out")
            )
        if rest == "/exec" and method == "POST":
            body = json.loads(request.content)
            events = (self.exec_events or default_exec)(body)
            return httpx.Response(
                200, content=events, headers={"content-type": "application/x-ndjson"}
            )
        if rest.startswith("/files"):
            return self._files(sandbox_id, request, rest)
        return httpx.Response(404, json=error_body("not_found", f"no route {path}"))

    def _build(self, name: str) -> httpx.Response:
        image = next((i for i in self.images if i["name"] == name), None)
        if image is None:
            return httpx.Response(404, json=error_body("not_found", f"no image {name}; try python"))
        events: list[dict[str, Any]] = []
        if not image["ready"]:
            events.append({"type": "log", "line": f"I: Retrieving {name}"})
        image.update(ready=True, size_mib=206)
        events.append({"type": "done", "image": image})
        return httpx.Response(200, content=ndjson(*events))

    def _create(self, body: dict[str, Any]) -> httpx.Response:
        sandbox_id = f"sb-{len(self.sandboxes) + 1}"
        fields = {k: v for k, v in body.items() if k != "env"}
        self.sandboxes[sandbox_id] = sandbox_record(sandbox_id, **fields)
        self.dirs.add((sandbox_id, "/"))
        return httpx.Response(201, json=self.sandboxes[sandbox_id])

    def _list(self, params: httpx.QueryParams) -> httpx.Response:
        found = list(reversed(self.sandboxes.values()))
        if status := params.get("status"):
            found = [r for r in found if r["status"] == status]
        for tag in params.get_list("tag"):
            key, _, value = tag.partition("=")
            found = [r for r in found if r["tags"].get(key) == value]
        return httpx.Response(200, json={"sandboxes": found})

    def _info(self, sandbox_id: str, path: str) -> dict[str, Any]:
        key = (sandbox_id, path)
        name = path.rstrip("/").rsplit("/", 1)[-1] or "/"
        if key in self.dirs:
            return {"path": path, "name": name, "type": "dir", "size": 0, "mode": 493,
                    "mtime": 1764180000.0, "target": None}  # fmt: skip
        return {"path": path, "name": name, "type": "file", "size": len(self.files[key]),
                "mode": 420, "mtime": 1764180000.0, "target": None}  # fmt: skip

    def _files(self, sandbox_id: str, request: httpx.Request, rest: str) -> httpx.Response:
        method = request.method
        if rest == "/files/mkdir":
            body = json.loads(request.content)
            self.dirs.add((sandbox_id, body["path"]))
            return httpx.Response(200, json=self._info(sandbox_id, body["path"]))
        path = request.url.params.get("path", "")
        key = (sandbox_id, path)
        missing = httpx.Response(404, json=error_body("not_found", f"{path} does not exist"))
        if rest == "/files" and method == "PUT":
            self.files[key] = request.content
            return httpx.Response(200, json=self._info(sandbox_id, path))
        if rest == "/files" and method == "GET":
            if key in self.dirs:
                return httpx.Response(422, json=error_body("invalid_argument", f"{path} is a dir"))
            if key not in self.files:
                return missing
            return httpx.Response(200, content=self.files[key])
        if rest == "/files" and method == "DELETE":
            if key not in self.files and key not in self.dirs:
                return missing
            self.files.pop(key, None)
            self.dirs.discard(key)
            return httpx.Response(204)
        if rest == "/files/stat":
            if key not in self.files and key not in self.dirs:
                return missing
            return httpx.Response(200, json=self._info(sandbox_id, path))
        if rest == "/files/list":
            prefix = path.rstrip("/") + "/"
            names = sorted(
                p for (sid, p) in self.files.keys() | self.dirs
                if sid == sandbox_id and p.startswith(prefix) and "/" not in p[len(prefix):]
                and p != path
            )  # fmt: skip
            return httpx.Response(200, json={"entries": [self._info(sandbox_id, p) for p in names]})
        return missing


def default_exec(body: dict[str, Any]) -> bytes:
    """NDJSON answers for the shell lines the tests run."""
    argv = body["argv"]
    line = argv[2] if argv[:2] == ["sh", "-c"] else " ".join(argv)
    started = {"type": "started"}
    if line == "echo hi && exit 3":
        return ndjson(started, out("stdout", b"hi\n"), exit_event(3))
    if line == "slow":
        return ndjson(started, out("stdout", b"partial\n"), exit_event(124, timed_out=True))
    if line == "hog":
        return ndjson(started, exit_event(137, oom=True))
    if line == "cut":
        return ndjson(started, out("stdout", b"partial\n"))
    if line == "split-utf8":
        text = "héllo wörld\n".encode()
        return ndjson(started, out("stdout", text[:2]), out("stdout", text[2:]), exit_event(0))
    if line == "cat":
        raw = body.get("stdin_b64")
        data = base64.b64decode(raw) if raw else body["stdin"].encode()
        return ndjson(started, out("stdout", data), exit_event(0))
    if line == "err":
        return ndjson(started, out("stderr", b"oops\n"), exit_event(2))
    return ndjson(started, out("stdout", line.encode() + b"\n"), exit_event(0))


class FakeExecServer:
    """``/v1/sandboxes/{id}/exec/ws`` on loopback, running scripted programs.

    Programs (argv[0]): ``echo ARGS``; ``cat`` (echoes stdin until EOF); ``noisy`` (a lot
    of stderr, then ``done`` on stdout); ``exit N``; ``sleep`` (until a signal);
    ``slow`` (times out); ``hog`` (OOM); ``nostart`` (error event); ``drop`` (closes
    without an exit event); ``tty`` (reports pty and resizes); ``env`` (prints its start
    message).
    """

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.starts: list[dict[str, Any]] = []
        self.signals: list[str] = []
        self._server = websockets.sync.server.serve(
            self._handle, "127.0.0.1", 0, process_request=self._check, compression=None
        )
        self.port: int = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)

    def _check(
        self, connection: websockets.sync.server.ServerConnection, request: Request
    ) -> Response | None:
        def refuse(status: int, code: str, message: str) -> Response:
            response = connection.respond(status, json.dumps(error_body(code, message)))
            response.headers["Content-Type"] = "application/json"
            return response

        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return refuse(401, "unauthorized", "missing or wrong token")
        m = re.fullmatch(r"/v1/sandboxes/([^/]+)/exec/ws", request.path)
        if not m or m.group(1) == "sb-missing":
            return refuse(404, "not_found", "sandbox sb-missing does not exist")
        if m.group(1) == "sb-gone":
            return refuse(409, "sandbox_terminated", "sandbox sb-gone timed out")
        return None

    def _handle(self, ws: websockets.sync.server.ServerConnection) -> None:
        try:
            start = json.loads(ws.recv())
            self.starts.append(start)
            program = getattr(self, "_run_" + start["argv"][0], None)
            if program is None:
                self._send(ws, {"type": "error", "error": error_body(
                    "invalid_argument", "no such program")["error"]})  # fmt: skip
                return
            program(ws, start)
        except websockets.exceptions.ConnectionClosed:
            pass

    @staticmethod
    def _send(ws: websockets.sync.server.ServerConnection, event: dict[str, Any]) -> None:
        ws.send(json.dumps(event))

    def _exit(self, ws: websockets.sync.server.ServerConnection, code: int, **flags: bool) -> None:
        self._send(ws, {"type": "exit", "exit_code": code, "timed_out": False, "oom": False,
                        **flags})  # fmt: skip
        ws.close()

    def _stdin(self, ws: Any) -> Iterator[bytes | dict[str, Any]]:
        """Client messages: stdin bytes, or decoded control events."""
        for message in ws:
            if isinstance(message, bytes):
                assert message[0] == 0
                yield message[1:]
            else:
                event = json.loads(message)
                if event["type"] == "signal":
                    self.signals.append(event["signal"])
                yield event

    def _run_echo(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        ws.send(b"\x01" + " ".join(start["argv"][1:]).encode() + b"\n")
        self._exit(ws, 0)

    def _run_cat(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        for item in self._stdin(ws):
            if isinstance(item, bytes):
                ws.send(b"\x01" + item)
            elif item["type"] == "stdin_eof":
                break
        self._exit(ws, 0)

    def _run_noisy(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        ws.send(b"\x01" + b"begin\n")
        chunk = b"\x02" + b"e" * 65536
        for _ in range(BIG_STDERR // 65536):
            ws.send(chunk)
        ws.send(b"\x01" + b"done\n")
        self._exit(ws, 0)

    def _run_exit(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        ws.send(b"\x02" + b"bye\n")
        self._exit(ws, int(start["argv"][1]))

    def _run_sleep(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        for item in self._stdin(ws):
            if isinstance(item, dict) and item["type"] == "signal":
                self._exit(ws, 128 + signal.Signals[item["signal"]].value)
                return

    def _run_slow(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        ws.send(b"\x01" + b"partial\n")
        self._exit(ws, 124, timed_out=True)

    def _run_hog(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        self._exit(ws, 137, oom=True)

    def _run_drop(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        ws.send(b"\x01" + b"partial\n")
        ws.close(1011, "sandbox gone")

    def _run_tty(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        ws.send(b"\x01" + f"pty={start['pty']} {start['cols']}x{start['rows']}\r\n".encode())
        for item in self._stdin(ws):
            if isinstance(item, bytes):
                ws.send(b"\x01" + item)
            elif item["type"] == "resize":
                ws.send(b"\x01" + f"resized {item['cols']}x{item['rows']}\r\n".encode())
            elif item["type"] == "stdin_eof":
                break
        self._exit(ws, 0)

    def _run_env(self, ws: Any, start: dict[str, Any]) -> None:
        self._send(ws, {"type": "started"})
        ws.send(b"\x01" + json.dumps(start).encode())
        self._exit(ws, 0)


def operator_access(token: str) -> AccessService:
    """The server's access check with ``token`` as its admin token and no keys (for apps
    built from single routers in unit tests)."""
    return AccessService(cast(Store, None), token)
