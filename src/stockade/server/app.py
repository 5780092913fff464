"""The FastAPI application: routes, auth, error handling and the services' lifetime."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI

from .._version import __version__
from .api import code, execs, files, image_export, images, pools, sandboxes, snapshots, volumes
from .api.deps import Services, require_token
from .api.errors import BodyLimit, JsonByDefault, RequestIds, install_error_handlers
from .api.openapi import bearer_scheme
from .api.schemas import ErrorBody
from .code.service import CodeService
from .config import ServerConfig
from .images.builder import ImageBuilder, build_policy, pip_env
from .images.catalog import ImageCatalog
from .images.recipes import add_recipes
from .network import ingress
from .network.manager import NetworkManager
from .runtime.reaper import Reaper
from .service.execs import ExecService
from .service.files import FileService
from .service.pools import PoolManager, parse_pool_specs
from .service.sandboxes import SandboxService
from .service.snapshots import SnapshotService
from .service.volumes import VolumeService
from .state.store import SQLiteStore

__all__ = ["create_app"]

log = logging.getLogger("stockade.server")

JSON_BODY_LIMIT = 1024 * 1024

_ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": desc}
    for status, desc in {
        400: "Malformed request", 401: "Missing or wrong token", 404: "Not found",
        409: "Conflict, e.g. the sandbox has ended", 422: "Invalid argument",
        500: "Internal error (carries a request ID)",
    }.items()
}  # fmt: skip


def create_app(config: ServerConfig) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reaper = Reaper()
        reaper.start()
        store = SQLiteStore(config.db_path)
        catalog = ImageCatalog(config.cache_dir, data_dir=config.data_dir)
        network = NetworkManager(
            config.data_dir,
            config.cache_dir,
            enabled=config.network,
            dns_upstreams=config.dns_upstreams,
        )
        sandbox_service = SandboxService(config, store, catalog, reaper, network)
        volume_service = VolumeService(config, store)
        exec_service = ExecService(sandbox_service)
        pool_manager = PoolManager(sandbox_service, parse_pool_specs(config.pools))
        builder = ImageBuilder(
            config.cache_dir,
            catalog,
            sandbox_service,
            exec_service,
            policy=build_policy(config),
            step_env=pip_env(config.pip_index_url),
        )
        add_recipes(catalog, builder)
        code_service = CodeService(
            sandbox_service,
            exec_service,
            config.data_dir / "kernels",
            output_limit=config.code_output_limit,
        )
        app.state.services = Services(
            config=config,
            images=catalog,
            sandboxes=sandbox_service,
            execs=exec_service,
            files=FileService(exec_service),
            pools=pool_manager,
            builder=builder,
            code=code_service,
            snapshots=SnapshotService(config, store, sandbox_service, catalog, code_service),
            volumes=volume_service,
        )
        # Volumes first: sandboxes that resume or boot from here on bind their disks.
        await volume_service.start()
        await sandbox_service.start()
        await app.state.services.snapshots.start()
        await code_service.start()
        # The port proxy (network/ingress.py) resolves sandbox ports through the service.
        app.state.port_targets = sandbox_service
        await pool_manager.start()
        try:
            yield
        finally:
            await pool_manager.stop()
            await app.state.services.code.stop()
            # Sandboxes keep running: a restarted server picks them up again.
            await sandbox_service.stop()
            await store.close()
            await reaper.stop()

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
    app.include_router(images.router, dependencies=auth)
    app.include_router(image_export.router, dependencies=auth)
    app.include_router(pools.router, dependencies=auth)
    app.include_router(code.router, dependencies=auth)
    app.include_router(snapshots.router, dependencies=auth)
    app.include_router(volumes.router, dependencies=auth)
    # WebSocket routes check the token themselves, to answer with an error frame.
    app.include_router(execs.ws_router)
    # Checks the admin token itself, like the exec WebSocket.
    app.include_router(ingress.router)

    @app.get("/healthz", tags=["health"], summary="Liveness check (no token needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    app.add_middleware(JsonByDefault)
    app.add_middleware(BodyLimit, limit=JSON_BODY_LIMIT)
    app.add_middleware(RequestIds)
    # Outermost: traffic for sandbox ports (`/proxy/...` or a `{port}-{id}.` host) never
    # meets the API's auth, body limits or JSON rewriting.
    app.add_middleware(
        ingress.SandboxProxy, targets_getter=lambda: getattr(app.state, "port_targets", None)
    )
    return app
