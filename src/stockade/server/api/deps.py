"""What every handler needs: the services, and the bearer-token check."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from ...errors import AuthenticationError
from ..service.wiring import Services

__all__ = [
    "Services",
    "bearer_credentials",
    "check_token",
    "require_token",
    "server_token",
    "services",
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


def check_token(conn: HTTPConnection) -> None:
    """Raise AuthenticationError unless the connection carries the admin bearer token.

    Any malformed header (another scheme, no credentials, bytes that are not ASCII) is a
    wrong token, never an error of the server's own.
    """
    expected: str = conn.app.state.services.config.token
    # The raw bytes, not conn.headers: those are latin-1-decoded str, which compare_digest
    # refuses (TypeError) as soon as they hold a non-ASCII character.
    header = next((v for k, v in conn.scope["headers"] if k.lower() == b"authorization"), b"")
    if not header.strip():
        raise AuthenticationError(
            "missing token: send `Authorization: Bearer <token>` (the SDK and CLI read "
            "STOCKADE_TOKEN or the server's token file)"
        )
    given = bearer_credentials(header)
    # Compared even when the scheme is wrong, so that every refusal takes as long.
    matches = hmac.compare_digest(given or b"", expected.encode())
    if given is None or not matches:
        raise AuthenticationError(
            "wrong token: send `Authorization: Bearer <token>` with the token in the "
            "server's token file or STOCKADE_TOKEN"
        )


async def require_token(conn: HTTPConnection) -> None:
    check_token(conn)
