"""What every handler needs: the services, and who is calling (the bearer credential's
check, with the role each route needs)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from ...errors import AuthenticationError, NotFoundError
from ..service.access import Principal
from ..service.wiring import Services

__all__ = [
    "Caller",
    "Services",
    "bearer_credentials",
    "caller",
    "check_owner",
    "check_token",
    "require_token",
    "server_token",
    "services",
    "tenant_scope",
]


def services(conn: HTTPConnection) -> Services:
    svc: Services = conn.app.state.services
    return svc


def bearer_credentials(value: bytes) -> bytes | None:
    """The credentials of an ``Authorization: Bearer <credentials>`` header value, as sent;
    None for any other scheme or an empty one.

    Works on the raw bytes: a header may carry any byte a client puts there (latin-1 or
    UTF-8 text, garbage), and none of it may raise.
    """
    scheme, _, credentials = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return credentials.strip() or None


def server_token(app: object) -> bytes | None:
    """The admin token of the Stockade ``app``, or None while its services are not set up."""
    services = getattr(getattr(app, "state", None), "services", None)
    token = getattr(getattr(services, "config", None), "token", None)
    return token.encode() if isinstance(token, str) and token else None


def check_token(conn: HTTPConnection, needed: str = "readonly") -> Principal:
    """Who the connection's bearer credential stands for, if it may do what ``needed``
    (a role) allows; AuthenticationError (401) or ForbiddenError (403) otherwise.

    Any malformed header (another scheme, no credentials, bytes that are not ASCII) is a
    wrong credential, never an error of the server's own.
    """
    # The raw bytes, not conn.headers: those are latin-1-decoded str, which compare_digest
    # refuses (TypeError) as soon as they hold a non-ASCII character.
    header = next((v for k, v in conn.scope["headers"] if k.lower() == b"authorization"), b"")
    if not header.strip():
        raise AuthenticationError(
            "missing token: send `Authorization: Bearer <token>` (the SDK and CLI read "
            "STOCKADE_TOKEN or the server's token file)"
        )
    caller = services(conn).access.authenticate(bearer_credentials(header) or b"")
    # Known before its role is checked: a refused call is audited too (api/audit.py).
    conn.state.principal = caller
    method = conn.scope.get("method", "WEBSOCKET")
    caller.check(needed, f"{method} {conn.scope.get('path', '')}")
    return caller


# Warm pools and the layer store are the server's, shared by every tenant: a key may use
# them (a create may be handed a pooled sandbox), only the operator may change them, and
# pools are not even shown to keys (their sizes and fill say how busy other tenants are).
_OPERATORS_ONLY = ("/v1/pools", "/v1/images/gc")
_OPERATORS_SEE = ("/v1/pools",)


async def require_token(conn: HTTPConnection) -> None:
    """The routes' guard: reading (GET, HEAD) needs a readonly key or better, anything
    else a user key or better, changing images and pools the operator; and an object named
    in the path must be the caller's tenant's. Routes that need more check it themselves."""
    method = conn.scope.get("method", "")
    needed = "readonly" if method in ("GET", "HEAD") else "user"
    if needed == "user" and conn.url.path.startswith(_OPERATORS_ONLY):
        needed = "operator"
    if conn.url.path.startswith(_OPERATORS_SEE):
        needed = "operator"
    await check_owner(conn, check_token(conn, needed))


async def check_owner(conn: HTTPConnection, who: Principal) -> None:
    """404 for an object of another tenant named in the path, exactly as for one that does
    not exist: every route under it (files, exec, code, snapshots, ports, its WebSocket)
    is guarded by this one check, so a route added later is too."""
    if who.operator:
        return
    svc = services(conn)
    params = conn.path_params
    if (sandbox_id := params.get("sandbox_id")) is not None:
        await svc.sandboxes.check_owner(sandbox_id, who.tenant)
    if (snapshot_id := params.get("snapshot_id")) is not None:
        await svc.snapshots.get_owned(snapshot_id, who.tenant)
    if (volume := params.get("name_or_id")) is not None and conn.url.path.startswith(
        "/v1/volumes/"
    ):
        await svc.volumes.get_owned(volume, who.tenant)


def caller(conn: HTTPConnection) -> Principal:
    """The caller that require_token (or check_token) let in."""
    principal: Principal = conn.state.principal
    return principal


Caller = Annotated[Principal, Depends(caller)]


def tenant_scope(who: Principal, tenant: str | None) -> str | None:
    """The tenant a read of per-tenant records covers: the operator's choice (None: every
    tenant), a key's own whatever it asks. A key that names another tenant gets 404, as
    for one that does not exist: it learns nothing of the others."""
    if who.operator:
        return tenant
    if tenant is not None and tenant != who.tenant:
        raise NotFoundError(f"tenant {tenant[:80]!r} does not exist")
    return who.tenant
