"""Stockade's exceptions, shared by the SDK, the CLI and the server.

Every error Stockade raises derives from one root::

    StockadeError
    ├── AuthenticationError            401 unauthorized
    │   ├── ForbiddenError             403 forbidden: the key's role may not do that
    │   └── RegistryAuthError          403 registry_auth_failed
    ├── NotFoundError                  404 not_found
    │   └── ImageNotFoundError         404 image_not_found
    ├── InvalidArgumentError           400 bad_request, 413 payload_too_large, 422 invalid_argument
    │   └── UnsupportedImageError      422 unsupported_image
    │       └── UnsafeLayerError       422 unsafe_layer
    ├── ConflictError                  409 conflict
    │   ├── SandboxTerminatedError     409 sandbox_terminated
    │   ├── SandboxPausedError         409 sandbox_paused
    │   ├── SandboxStartingError       409 sandbox_starting
    │   └── KernelUnavailableError     409 kernel_unavailable
    ├── QuotaExceededError             429 quota_exceeded: past one of the tenant's quotas
    │   └── RateLimitedError           429 rate_limited: creates_per_minute; has `retry_after`
    ├── StockadeTimeoutError           504 timeout, and an exec that ran past its `timeout`
    │   └── CommandTimeoutError        (stockade.commands) `run()` past its timeout; has the output
    ├── CommandError                   (stockade.commands) `run(check=True)` exited non-zero
    ├── BuildError                     422 build_failed
    ├── RegistryError                  502 registry_error
    │   ├── RegistryUnreachableError   502 registry_unreachable
    │   └── DigestMismatchError        502 digest_mismatch
    ├── ServerError                    500 internal (and any other 5xx)
    └── StockadeConnectionError        the server could not be reached

The server answers every error with ``{"error": {"code": ..., "message": ...}}``; the SDK
turns that body back into the class below through :func:`error_from_body`, the one place
where codes map to classes. A subclass keeps its base's HTTP status (except
:class:`ForbiddenError` and :class:`RegistryAuthError`), so an SDK that does not know a
code yet still raises the base class. An error may carry HTTP headers too
(:meth:`StockadeError.headers`): :class:`RateLimitedError`'s ``Retry-After``.
"""

from __future__ import annotations

import builtins
import math
from typing import Any, ClassVar

__all__ = [
    "AuthenticationError",
    "BuildError",
    "ConflictError",
    "DigestMismatchError",
    "ForbiddenError",
    "ImageNotFoundError",
    "InvalidArgumentError",
    "KernelUnavailableError",
    "NotFoundError",
    "QuotaExceededError",
    "RateLimitedError",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachableError",
    "SandboxPausedError",
    "SandboxStartingError",
    "SandboxTerminatedError",
    "ServerError",
    "StockadeConnectionError",
    "StockadeError",
    "StockadeTimeoutError",
    "UnsafeLayerError",
    "UnsupportedImageError",
    "error_from_body",
]


class StockadeError(Exception):
    """Root of every Stockade error: ``code`` is the API's error code, ``status`` the HTTP one."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance override of the class default
        if status is not None:
            self.status = status  # type: ignore[misc]
        self.request_id = request_id

    def to_body(self) -> dict[str, Any]:
        """The JSON error body the server sends for this error."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.request_id:
            body["request_id"] = self.request_id
        return {"error": body}

    def headers(self) -> dict[str, str]:
        """The HTTP headers the server sends with this error's body (most have none)."""
        return {}


class AuthenticationError(StockadeError):
    """The token was missing or wrong."""

    code = "unauthorized"
    status = 401


class ForbiddenError(AuthenticationError):
    """The credential is good, but its role may not make this call; the message names the
    role needed (readonly < user < admin < the server's admin token)."""

    code = "forbidden"
    status = 403


class NotFoundError(StockadeError):
    """The sandbox, image, file or route does not exist."""

    code = "not_found"
    status = 404


class InvalidArgumentError(StockadeError):
    """A request value was malformed or out of range; the message names the allowed range."""

    code = "invalid_argument"
    status = 422


class ConflictError(StockadeError):
    """The operation does not fit the current state of its target."""

    code = "conflict"
    status = 409


class SandboxTerminatedError(ConflictError):
    """The sandbox is no longer running; the message says how it ended."""

    code = "sandbox_terminated"
    status = 409


class SandboxPausedError(ConflictError):
    """The sandbox is paused: resume it first, or create it with ``auto_resume=True``."""

    code = "sandbox_paused"
    status = 409


class SandboxStartingError(ConflictError):
    """The sandbox is still starting (its status is ``starting``): try again in a moment."""

    code = "sandbox_starting"
    status = 409


class KernelUnavailableError(ConflictError):
    """The sandbox's image has no kernel for the code's language; the message names an
    image that has one (``code-interpreter``)."""

    code = "kernel_unavailable"
    status = 409


class QuotaExceededError(StockadeError):
    """The call would take the tenant past one of its quotas (live sandboxes, cores, memory,
    disk, the longest timeout); the message names the limit, its value and the current
    use, and what frees room. The server's operator sets the quotas
    (``stockade tenant set``)."""

    code = "quota_exceeded"
    status = 429


class RateLimitedError(QuotaExceededError):
    """The tenant creates sandboxes faster than its ``creates_per_minute``.

    ``retry_after``: seconds until the create would be let in (the ``Retry-After``
    header), or None when the answer did not say.

    Example::

        try:
            sb = Sandbox.create()
        except RateLimitedError as exc:
            time.sleep(exc.retry_after or 1.0)
            sb = Sandbox.create()
    """

    code = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status, request_id=request_id)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        # Whole seconds, rounded up: a client that waits that long is let in.
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class StockadeTimeoutError(StockadeError, builtins.TimeoutError):
    """An operation or a command ran past its deadline."""

    code = "timeout"
    status = 504


class ServerError(StockadeError):
    """The server failed unexpectedly; the message carries the request ID it logged."""

    code = "internal"
    status = 500


class StockadeConnectionError(StockadeError, builtins.ConnectionError):
    """The server could not be reached."""

    code = "connection_error"
    status = 0


# Registry pulls (stockade.server.images.oci); the code tells them apart from their bases.


class ImageNotFoundError(NotFoundError):
    """The registry has no such repository, tag or digest."""

    code = "image_not_found"


class UnsupportedImageError(InvalidArgumentError):
    """The image exists but cannot run here (no linux/amd64, an artifact, an old schema)."""

    code = "unsupported_image"


class UnsafeLayerError(UnsupportedImageError):
    """A layer archive tries to write outside its directory, or is not a valid archive."""

    code = "unsafe_layer"


class RegistryAuthError(AuthenticationError):
    """The registry refused the credentials given (or demanded some and none were given).

    403, not 401: the caller's Stockade token was fine; the registry's answer was no.
    """

    code = "registry_auth_failed"
    status = 403


class RegistryError(StockadeError):
    """The registry answered something unusable: a server error, or content that is wrong."""

    code = "registry_error"
    status = 502


class RegistryUnreachableError(RegistryError):
    """The registry could not be reached: connection refused, DNS failure or timeout."""

    code = "registry_unreachable"


class DigestMismatchError(RegistryError):
    """Downloaded content does not hash to the digest that names it: corrupt or tampered."""

    code = "digest_mismatch"


class BuildError(StockadeError):
    """An image build failed: a step exited non-zero (the message has its exit code and
    last lines of output, and names a missing package), or the build ran past its timeout.
    """

    code = "build_failed"
    status = 422


_BY_CODE: dict[str, type[StockadeError]] = {
    "unauthorized": AuthenticationError,
    "forbidden": ForbiddenError,
    "not_found": NotFoundError,
    "bad_request": InvalidArgumentError,
    "payload_too_large": InvalidArgumentError,
    "invalid_argument": InvalidArgumentError,
    "conflict": ConflictError,
    "sandbox_terminated": SandboxTerminatedError,
    "sandbox_paused": SandboxPausedError,
    "sandbox_starting": SandboxStartingError,
    "kernel_unavailable": KernelUnavailableError,
    "timeout": StockadeTimeoutError,
    "internal": ServerError,
    "image_not_found": ImageNotFoundError,
    "unsupported_image": UnsupportedImageError,
    "unsafe_layer": UnsafeLayerError,
    "registry_auth_failed": RegistryAuthError,
    "registry_error": RegistryError,
    "registry_unreachable": RegistryUnreachableError,
    "digest_mismatch": DigestMismatchError,
    "build_failed": BuildError,
    "quota_exceeded": QuotaExceededError,
    "rate_limited": RateLimitedError,
}

_BY_STATUS: dict[int, type[StockadeError]] = {
    400: InvalidArgumentError,
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: InvalidArgumentError,
    422: InvalidArgumentError,
    429: QuotaExceededError,
    504: StockadeTimeoutError,
}


def error_from_body(status: int, body: object) -> StockadeError:
    """Build the typed exception for an API error response.

    ``body`` is the decoded JSON (or anything else when the response was not JSON, e.g.
    from a proxy in between); the status then decides the class.
    """
    code: str | None = None
    message: str | None = None
    request_id: str | None = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = err.get("code") if isinstance(err.get("code"), str) else None
        message = err.get("message") if isinstance(err.get("message"), str) else None
        request_id = err.get("request_id") if isinstance(err.get("request_id"), str) else None
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else StockadeError
    if message is None:
        message = f"the server answered HTTP {status} without an error body"
    return cls(message, code=code or cls.code, status=status, request_id=request_id)
