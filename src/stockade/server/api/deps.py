"""What every handler needs: the services, and the bearer-token check."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from ...errors import AuthenticationError
from ..code.service import CodeService
from ..config import ServerConfig
from ..images.builder import ImageBuilder
from ..images.catalog import ImageCatalog
from ..service.execs import ExecService
from ..service.files import FileService
from ..service.pools import PoolManager
from ..service.sandboxes import SandboxService
from ..service.snapshots import SnapshotService
from ..service.volumes import VolumeService

__all__ = ["Services", "check_token", "require_token", "services"]


@dataclass
class Services:
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


def services(conn: HTTPConnection) -> Services:
    svc: Services = conn.app.state.services
    return svc


def check_token(conn: HTTPConnection) -> None:
    """Raise AuthenticationError unless the connection carries the admin bearer token."""
    expected: str = conn.app.state.services.config.token
    header = conn.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if not header:
        raise AuthenticationError(
            "missing token: send `Authorization: Bearer <token>` (the SDK and CLI read "
            "STOCKADE_TOKEN or the server's token file)"
        )
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), expected):
        raise AuthenticationError(
            "wrong token: use the one in the server's token file or STOCKADE_TOKEN"
        )


async def require_token(conn: HTTPConnection) -> None:
    check_token(conn)
