"""Exec routes: NDJSON over plain HTTP, and a WebSocket for interactive use.

Both move the events of one :class:`~..service.execs.ExecSession`; see docs/api.md for the
wire format. When the client goes away the command is killed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.requests import HTTPConnection

from ...errors import AuthenticationError, InvalidArgumentError, StockadeError
from ..service.access import Principal
from ..service.execs import ExecSession, ExitInfo, OutputChunk
from ..service.files import check_path
from . import ndjson
from .audit import exec_entry
from .deps import Caller, Services, check_owner, check_token, services
from .errors import error_response
from .limits import check_range
from .params import SandboxIdP
from .schemas import ExecRequest, WsExecRequest

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/exec", tags=["exec"])
ws_router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/exec", tags=["exec"])
Svc = Annotated[Services, Depends(services)]

_MAX_EXEC_TIMEOUT = 86400.0


def _validate(argv: list[str], workdir: str | None, timeout: float | None) -> str | None:
    if not argv or not argv[0]:
        raise InvalidArgumentError('argv must name a command, e.g. ["echo", "hi"]')
    if any("\x00" in a for a in argv):
        raise InvalidArgumentError("argv must not contain NUL bytes")
    if timeout is not None:
        check_range("timeout", timeout, 0.001, _MAX_EXEC_TIMEOUT, " seconds")
    return check_path(workdir) if workdir is not None else None


def exit_event(info: ExitInfo) -> dict[str, Any]:
    return {
        "type": "exit",
        "exit_code": info.exit_code,
        "timed_out": info.timed_out,
        "oom": info.oom,
    }


@router.post(
    "",
    summary="Run a command, streaming its output as NDJSON events",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def exec_ndjson(
    sandbox_id: SandboxIdP, body: ExecRequest, svc: Svc, who: Caller, request: Request
) -> StreamingResponse:
    workdir = _validate(body.argv, body.workdir, body.timeout)
    if body.stdin is not None and body.stdin_b64 is not None:
        raise InvalidArgumentError("give either stdin or stdin_b64, not both")
    stdin = body.stdin.encode() if body.stdin is not None else b""
    if body.stdin_b64 is not None:
        try:
            stdin = base64.b64decode(body.stdin_b64, validate=True)
        except ValueError as exc:
            # binascii.Error for bad base64; a plain ValueError for non-ASCII text.
            raise InvalidArgumentError(f"stdin_b64 is not valid base64: {exc}") from None
    started = time.perf_counter()
    session = await svc.execs.start(
        sandbox_id, body.argv, env=body.env, workdir=workdir, timeout=body.timeout,
        user=body.user,
    )  # fmt: skip
    request.state.audited = True  # the exec's own entry, below, says more than the call's

    async def feed() -> None:
        if stdin:
            await session.write_stdin(stdin)
        await session.close_stdin()

    cut: list[str] = []

    def revoked(key_id: str) -> None:
        # The key this stream was opened with stops working now, stream included: the
        # command is killed and the stream ends with the reason.
        if key_id == who.key_id and not cut:
            cut.append(key_id)
            session.cut()

    async def events() -> AsyncIterator[bytes]:
        feeder = asyncio.create_task(feed())
        svc.access.on_revoke.append(revoked)
        try:
            yield ndjson.line({"type": "started"})
            try:
                async for event in session.events():
                    if cut:
                        raise AuthenticationError(f"API key {cut[0]} was revoked")
                    if isinstance(event, OutputChunk):
                        name = "stdout" if event.stream == 1 else "stderr"
                        data = base64.b64encode(event.data).decode()
                        yield ndjson.line({"type": name, "data": data})
                    else:
                        yield ndjson.line(exit_event(event))
            except StockadeError as err:
                # Headers are gone already: the error travels as the stream's last event.
                yield ndjson.line({"type": "error", **err.to_body()})
        finally:
            svc.access.on_revoke.remove(revoked)
            feeder.cancel()
            await session.aclose()
            _ended(svc, who, session, request, "HTTP", started)

    return StreamingResponse(events(), media_type="application/x-ndjson")


async def _send_error(ws: WebSocket, err: StockadeError) -> None:
    body = err.to_body()
    body["type"] = "error"
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps(body))
        await ws.close(code=1000)


@ws_router.websocket("/ws")
async def exec_ws(ws: WebSocket, sandbox_id: str) -> None:
    """Interactive exec; see docs/api.md for the frames."""
    svc: Services = ws.app.state.services
    try:
        # Refuse the handshake itself with a plain HTTP error when we can, so that a bad
        # token or an ended sandbox looks the same as on every other route.
        who = check_token(ws, "user")
        await check_owner(ws, who)
        await svc.sandboxes.ready_for_use(sandbox_id)
    except StockadeError as err:
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(error_response(err.status, err.code, err.message))
        else:
            await ws.accept()
            await _send_error(ws, err)
        return
    await ws.accept()
    try:
        first = await ws.receive_text()
        try:
            req = WsExecRequest.model_validate_json(first)
        except ValidationError as exc:
            raise InvalidArgumentError(f"bad exec request: {exc.errors()[0].get('msg')}") from None
        workdir = _validate(req.argv, req.workdir, req.timeout)
        started = time.perf_counter()
        session = await svc.execs.start(
            sandbox_id, req.argv, env=req.env, workdir=workdir, timeout=req.timeout,
            pty_size=(req.cols, req.rows) if req.pty else None, user=req.user,
        )  # fmt: skip
    except StockadeError as err:
        await _send_error(ws, err)
        return
    except (WebSocketDisconnect, KeyError, RuntimeError):
        return
    await ws.send_text('{"type":"started"}')
    reader = asyncio.create_task(_client_to_session(ws, session))
    stream = asyncio.current_task()
    cut: list[str] = []

    def revoked(key_id: str) -> None:
        # The key this stream was opened with stops working now, stream included.
        if key_id == who.key_id and stream is not None and not cut:
            cut.append(key_id)
            stream.cancel()

    svc.access.on_revoke.append(revoked)
    try:
        try:
            async for event in session.events():
                if isinstance(event, OutputChunk):
                    await ws.send_bytes(bytes([event.stream]) + event.data)
                else:
                    await ws.send_text(json.dumps(exit_event(event)))
        except StockadeError as err:
            await _send_error(ws, err)
            return
        with contextlib.suppress(Exception):
            await ws.close(code=1000)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left: the command is killed below
    except asyncio.CancelledError:
        if not cut or stream is None:
            raise  # not ours: the server is stopping
        stream.uncancel()
        with contextlib.suppress(Exception):
            await _send_error(ws, AuthenticationError(f"API key {cut[0]} was revoked"))
    finally:
        svc.access.on_revoke.remove(revoked)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        await session.aclose()
        _ended(svc, who, session, ws, "WEBSOCKET", started)


def _ended(
    svc: Services,
    who: Principal,
    session: ExecSession,
    conn: HTTPConnection,
    transport: str,
    started: float,
) -> None:
    """Account for an exec that is over: its audit entry (queued: never waits) and its
    count in the usage of its sandbox's tenant."""
    rid = conn.scope.get("state", {}).get("request_id")
    duration = time.perf_counter() - started
    svc.audit.record(
        exec_entry(who, session, request_id=rid, transport=transport, duration=duration)
    )
    # Billed to the sandbox's tenant (the operator's exec in a tenant's sandbox too). Counted
    # here, not in ExecService, so the server's own execs (kernels, build steps) are not.
    svc.usage.count_exec(session.tenant)


async def _client_to_session(ws: WebSocket, session: ExecSession) -> None:
    """Apply the client's frames (stdin, EOF, resize, signal) until it disconnects."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                await session.kill()
                return
            data = message.get("bytes")
            if data is not None:
                if data[:1] == b"\x00":
                    await session.write_stdin(data[1:])
                continue
            text = message.get("text")
            if not text:
                continue
            try:
                ctl = json.loads(text)
            except json.JSONDecodeError:
                continue
            kind = ctl.get("type") if isinstance(ctl, dict) else None
            if kind == "stdin_eof":
                await session.close_stdin()
            elif kind == "resize":
                with contextlib.suppress(TypeError, ValueError, OSError):
                    session.resize(int(ctl["cols"]), int(ctl["rows"]))
            elif kind == "signal":
                with contextlib.suppress(StockadeError):
                    await session.signal(str(ctl.get("signal", "SIGTERM")))
    except WebSocketDisconnect:
        await session.kill()
