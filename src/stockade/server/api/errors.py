"""Turn every failure into ``{"error": {"code", "message"}}`` with a fitting status.

Unexpected exceptions are logged with a request ID and answered with a 500 that carries
the same ID; a traceback never reaches a client.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...errors import InvalidArgumentError, StockadeError

__all__ = ["BodyLimit", "JsonByDefault", "RequestIds", "error_response", "install_error_handlers"]

log = logging.getLogger("stockade.server.api")

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "bad_request",
                 409: "conflict", 413: "payload_too_large", 422: "invalid_argument"}  # fmt: skip


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {"code": code, "message": message}
    if request_id:
        body["request_id"] = request_id
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def _request_id(request: Request) -> str:
    rid: str | None = request.scope.get("state", {}).get("request_id")
    return rid or "req-unknown"


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    parts: list[str] = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        kind = err.get("type", "")
        if kind == "json_invalid":
            return 400, "bad_request", f"the request body is not valid JSON: {err.get('msg')}"
        if kind in ("model_attributes_type", "dict_type") and not loc:
            return 400, "bad_request", "the request body must be a JSON object"
        if kind == "missing" and not loc:
            return 400, "bad_request", "the request needs a JSON body"
        where = ".".join(loc) or "body"
        if kind == "extra_forbidden":
            parts.append(f"{where}: unknown field")
        else:
            parts.append(f"{where}: {err.get('msg')}")
    return 422, "invalid_argument", "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StockadeError)
    async def _stockade(request: Request, exc: StockadeError) -> JSONResponse:
        rid = _request_id(request)
        if exc.status >= 500:
            log.error("%s %s failed [%s]: %s", request.method, request.url.path, rid, exc)
        request_id = rid if exc.status >= 500 else None
        # Headers too: a rate limit's Retry-After.
        return error_response(exc.status or 500, exc.code, exc.message, request_id, exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _validation_message(exc)
        return error_response(status, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(
            exc.status_code, "internal" if exc.status_code >= 500 else "bad_request"
        )
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such route: {request.method} {request.url.path}; see /openapi.json"
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /openapi.json"
        return error_response(exc.status_code, code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = _request_id(request)
        log.exception("unexpected error in %s %s [%s]", request.method, request.url.path, rid)
        return error_response(
            500,
            "internal",
            f"internal server error (request ID {rid}); the server log has details",
            rid,
        )


class RequestIds:
    """Pure ASGI middleware: give each request an ID, visible to handlers and in responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = "req-" + secrets.token_hex(6)
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)


class JsonByDefault:
    """Treat API bodies as JSON whatever Content-Type says (curl sends a form type by default).

    Every non-upload route takes JSON, so guessing otherwise only produces confusing errors.
    """

    def __init__(self, app: ASGIApp, exempt_suffix: str = "/files") -> None:
        self.app = app
        self.exempt_suffix = exempt_suffix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("POST", "PUT", "PATCH")
            and not _is_upload(scope, self.exempt_suffix)
        ):
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


# Streamed uploads of raw bytes: file contents, and the files of an image's copy steps.
_UPLOAD_PREFIX = "/v1/images/contexts/"


def _is_upload(scope: Scope, suffix: str) -> bool:
    path: str = scope["path"]
    return scope["method"] == "PUT" and (path.endswith(suffix) or path.startswith(_UPLOAD_PREFIX))


class BodyLimit:
    """Reject request bodies above ``limit`` bytes with 413, except on streamed uploads."""

    def __init__(self, app: ASGIApp, limit: int, exempt_suffix: str = "/files") -> None:
        self.app = app
        self.limit = limit
        self.exempt_suffix = exempt_suffix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_upload(scope, self.exempt_suffix):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = InvalidArgumentError(
            f"request body is larger than {self.limit // 1024} KiB; upload files with "
            "PUT /v1/sandboxes/{id}/files instead",
            code="payload_too_large",
            status=413,
        )
        if length is not None and length.isdigit() and int(length) > self.limit:
            await error_response(413, too_big.code, too_big.message)(scope, receive, send)
            return
        seen = 0
        answered = False

        async def counted() -> Message:
            nonlocal seen, answered
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not answered:
                    # Answer 413 ourselves and tell the app the client went away.
                    answered = True
                    await error_response(413, too_big.code, too_big.message)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not answered:
                await send(message)

        await self.app(scope, counted, guarded_send)
