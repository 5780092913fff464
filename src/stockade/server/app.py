"""The FastAPI application: routes, auth, error handling and the services' lifetime."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI

from .._version import __version__
from .api import (
    access,
    audit,
    code,
    execs,
    file_urls,
    files,
    image_export,
    images,
    ingress,
    mcp,
    pools,
    port_tunnel,
    sandboxes,
    snapshots,
    usage,
    volumes,
)
from .api.deps import require_token
from .api.errors import BodyLimit, JsonByDefault, RequestIds, install_error_handlers
from .api.openapi import bearer_scheme
from .api.schemas import ErrorBody
from .config import ServerConfig
from .service.wiring import open_services

__all__ = ["create_app"]

log = logging.getLogger("stockade.server")

JSON_BODY_LIMIT = 1024 * 1024

_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": desc}
    for status, desc in {
        400: "Malformed request", 401: "Missing or wrong token",
        403: "The key's role may not make this call", 404: "Not found",
        409: "Conflict, e.g. the sandbox has ended", 422: "Invalid argument",
        500: "Internal error (carries a request ID)",
    }.items()
}  # fmt: skip


def create_app(config: ServerConfig) -> FastAPI:
    mcp_endpoint = mcp.McpEndpoint()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(config) as services, mcp_endpoint.running(config):
            app.state.services = services
            # The port proxy (api/ingress.py) resolves sandbox ports through the service.
            app.state.port_targets = services.sandboxes
            yield

    app = FastAPI(
        title="Stockade",
        version=__version__,
        description="Self-hosted gVisor sandboxes. See docs/api.md for the streaming formats.",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    install_error_handlers(app)
    # require_token checks the token; bearer_scheme only declares it in the OpenAPI document.
    auth = [Depends(require_token), Depends(bearer_scheme)]
    app.include_router(sandboxes.router, dependencies=auth)
    app.include_router(execs.router, dependencies=auth)
    app.include_router(files.router, dependencies=auth)
    app.include_router(file_urls.router, dependencies=auth)
    # Signed file URLs carry their own credential (api/file_urls.py): no bearer token.
    app.include_router(file_urls.signed_router)
    app.include_router(images.router, dependencies=auth)
    app.include_router(image_export.router, dependencies=auth)
    app.include_router(pools.router, dependencies=auth)
    app.include_router(code.router, dependencies=auth)
    app.include_router(snapshots.router, dependencies=auth)
    app.include_router(volumes.router, dependencies=auth)
    app.include_router(access.router, dependencies=auth)
    app.include_router(audit.router, dependencies=auth)
    app.include_router(usage.router, dependencies=auth)
    # WebSocket routes check the token themselves, to answer with an error frame.
    app.include_router(execs.ws_router)
    # Checks the admin token itself, like the exec WebSocket.
    app.include_router(port_tunnel.router)
    # MCP for agents (api/mcp.py): checks the bearer credential itself, before any MCP work.
    app.router.routes.append(mcp.route(mcp_endpoint))

    @app.get("/healthz", tags=["health"], summary="Liveness check (no token needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.add_middleware(JsonByDefault)
    app.add_middleware(BodyLimit, limit=JSON_BODY_LIMIT)
    # Inside RequestIds, so that each entry carries its call's request ID.
    app.add_middleware(audit.AuditTrail)
    app.add_middleware(RequestIds)
    # Outermost: traffic for sandbox ports (`/proxy/...` or a `{port}-{id}.` host) never
    # meets the API's auth, body limits or JSON rewriting.
    app.add_middleware(
        ingress.SandboxProxy, targets_getter=lambda: getattr(app.state, "port_targets", None)
    )
    return app
