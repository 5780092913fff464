"""The one place the server's parts are built and joined: the composition root that both
the HTTP app and the ahead-of-time image build (prebuild) use, so the two cannot drift."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..config import ServerConfig
from ..images.catalog import ImageCatalog
from ..network.manager import NetworkManager
from ..runtime.reaper import Reaper
from ..state.store import SQLiteStore
from .access import AccessService
from .audit import AuditLog
from .builder import ImageBuilder, build_policy, pip_env
from .code.service import CodeService
from .creation import Creator
from .execs import ExecService
from .files import FileService
from .image_export import ImageExporter
from .images import ImageService
from .pools import PoolManager, parse_pool_specs
from .quotas import Quotas
from .recipes import add_recipes
from .sandboxes import SandboxService
from .snapshots import SnapshotService
from .usage import Meter
from .volumes import VolumeService

__all__ = ["Services", "open_services"]


@dataclass
class Services:
    """Every service of a running server, as the HTTP handlers reach them."""

    config: ServerConfig
    images: ImageCatalog
    sandboxes: SandboxService
    execs: ExecService
    files: FileService
    pools: PoolManager
    builder: ImageBuilder
    code: CodeService
    volumes: VolumeService
    snapshots: SnapshotService
    creator: Creator
    image_service: ImageService
    exporter: ImageExporter
    access: AccessService
    quotas: Quotas
    usage: Meter
    audit: AuditLog


@contextlib.asynccontextmanager
async def open_services(config: ServerConfig) -> AsyncIterator[Services]:
    """Build the services over ``config``, start them (reconciling what a previous server
    left running), and stop them on the way out. Sandboxes keep running across a stop: the
    next server picks them up again."""
    reaper = Reaper()
    reaper.start()
    store = SQLiteStore(config.db_path)
    catalog = ImageCatalog(config.cache_dir, data_dir=config.data_dir)
    network = NetworkManager(
        config.data_dir, config.cache_dir, enabled=config.network,
        dns_upstreams=config.dns_upstreams,
    )  # fmt: skip
    meter = Meter(store)
    sandboxes = SandboxService(config, store, catalog, reaper, network, meter=meter)
    access = AccessService(store, config.token)
    quotas = Quotas(store, access.quotas)
    volumes = VolumeService(config, store, quotas)
    execs = ExecService(sandboxes)
    pools = PoolManager(sandboxes, parse_pool_specs(config.pools))
    builder = ImageBuilder(
        config.cache_dir, catalog, sandboxes, execs,
        policy=build_policy(config), step_env=pip_env(config.pip_index_url),
    )  # fmt: skip
    add_recipes(catalog, builder)
    code = CodeService(
        sandboxes, execs, config.data_dir / "kernels", output_limit=config.code_output_limit
    )
    snapshots = SnapshotService(config, store, sandboxes, catalog, code, quotas)
    services = Services(
        config=config, images=catalog, sandboxes=sandboxes, execs=execs,
        files=FileService(execs), pools=pools, builder=builder, code=code,
        snapshots=snapshots, volumes=volumes,
        creator=Creator(sandboxes, pools, snapshots, code, quotas),
        image_service=ImageService(catalog, builder, snapshots),
        exporter=ImageExporter(catalog, config.cache_dir),
        access=access, quotas=quotas, usage=meter,
        audit=AuditLog(store, retention=config.audit_retention, enabled=config.audit),
    )  # fmt: skip
    try:
        # Before any request: the default tenant and the keys.
        await services.access.start()
        # Before the sandboxes: those found running are billed from here on.
        await meter.start()
        # Volumes first: sandboxes that resume or boot from here on bind their disks.
        await volumes.start()
        await sandboxes.start()
        await snapshots.start()
        await code.start()
        await pools.start()
        services.audit.start()
        yield services
    finally:
        await services.audit.stop()
        await pools.stop()
        await code.stop()
        await sandboxes.stop()
        # Last before the store closes: what was used up to the stop is written.
        await meter.stop()
        await store.close()
        await reaper.stop()
