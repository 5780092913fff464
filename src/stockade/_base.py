"""IO-free client logic shared by the sync and async SDKs.

Request bodies, query parameters, response parsing and the translation of transport
errors live here once; ``_async/`` does the IO and ``_sync/`` is generated from it.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import json
import math
import os
import ssl
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

import httpx
import websockets.exceptions

from stockade import _config
from stockade.errors import (
    InvalidArgumentError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    StockadeConnectionError,
    StockadeError,
    StockadeTimeoutError,
    error_from_body,
)

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from stockade.models import SandboxInfo

_T = TypeVar("_T")

# Network reads move in pieces of this size: big enough to keep syscalls rare, small
# enough that streaming a 200 MB file never holds more than a few of them.
CHUNK_SIZE = 1024 * 1024

# Operations that may legitimately take long: create (may build the base image first),
# image builds, exec streams (bounded by the command's own timeout) and followed logs.
# Their read timeout is off; connecting still times out.
CONNECT_TIMEOUT = 10.0
DEFAULT_TIMEOUT = 60.0
LONG_TIMEOUT = httpx.Timeout(None, connect=CONNECT_TIMEOUT)


class Readable(Protocol):
    """A binary file object, or anything else with ``read(n) -> bytes``."""

    def read(self, size: int = ..., /) -> bytes: ...


class Writable(Protocol):
    """A binary file object, or anything else with ``write(bytes)``."""

    def write(self, data: bytes, /) -> object: ...


FileContent = bytes | bytearray | memoryview | str | Readable | Iterable[bytes]
"""What ``files.write`` accepts: data, a binary file object, or an iterator of chunks."""


def user_agent() -> str:
    """The ``User-Agent`` the SDK sends."""
    from stockade import __version__

    return f"stockade-python/{__version__}"


def auth_headers(token: str) -> dict[str, str]:
    """Headers every API request carries."""
    return {"Authorization": f"Bearer {token}", "User-Agent": user_agent()}


def ws_url(base_url: str, path: str) -> str:
    """The WebSocket URL for ``path`` on the server at ``base_url``."""
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :] + path
    return "ws://" + base_url[len("http://") :] + path


def snapshot_path(snapshot_id: str) -> str:
    return f"/v1/snapshots/{quote(snapshot_id, safe='')}"


def sandbox_path(sandbox_id: str, suffix: str = "") -> str:
    """``/v1/sandboxes/{id}{suffix}`` with the ID escaped."""
    if not sandbox_id or not isinstance(sandbox_id, str):
        raise InvalidArgumentError(f"a sandbox ID is a string like 'sb-…', got {sandbox_id!r}")
    return f"/v1/sandboxes/{quote(sandbox_id, safe='')}{suffix}"


def image_path(name: str, suffix: str = "") -> str:
    """``/v1/images/{name}{suffix}`` with the name escaped."""
    return f"/v1/images/{quote(name, safe='')}{suffix}"


class HasId(Protocol):
    """Anything named by a server ID: a Volume, a Snapshot, an Image."""

    @property
    def id(self) -> str: ...


def ref_id(obj: str | HasId) -> str:
    return obj if isinstance(obj, str) else obj.id


def create_body(
    *,
    image: str,
    cpu: float | None,
    memory: int | None,
    disk: int | None,
    timeout: float | None,
    env: Mapping[str, str] | None,
    workdir: str | None,
    tags: Mapping[str, str] | None,
    entrypoint: str | Sequence[str] | None,
    block_network: bool = False,
    outbound_cidr_allowlist: Sequence[str] | None = None,
    outbound_domain_allowlist: Sequence[str] | None = None,
    ports: Sequence[int | Mapping[str, Any]] | None = None,
    image_entrypoint: bool = False,
    volumes: Mapping[str, str] | None = None,
    idle_timeout: float | None = None,
    on_timeout: str | None = None,
    auto_resume: bool = False,
    snapshot: str | None = None,
    name: str | None = None,
    user: str | None = None,
    readiness: int | str | Sequence[str] | None = None,
    readiness_timeout: float | None = None,
) -> dict[str, Any]:
    """The body of ``POST /v1/sandboxes``; unset values are left to the server's defaults."""
    body: dict[str, Any] = {"image": image}
    if readiness is not None:
        body["readiness"] = readiness if isinstance(readiness, int | str) else list(readiness)
    if volumes:
        body["volumes"] = dict(volumes)
    if auto_resume:
        body["auto_resume"] = True
    if snapshot is not None:
        body["snapshot"] = snapshot
    if image_entrypoint:
        body["image_entrypoint"] = True
    body.update(
        network_body(
            block_network=block_network,
            outbound_cidr_allowlist=outbound_cidr_allowlist,
            outbound_domain_allowlist=outbound_domain_allowlist,
        )
    )
    if ports:
        body["ports"] = [p if isinstance(p, int) else dict(p) for p in ports]
    optional: dict[str, Any] = {
        "cpu": cpu,
        "memory": memory,
        "disk": disk,
        "timeout": timeout,
        "workdir": workdir,
        "idle_timeout": idle_timeout,
        "on_timeout": on_timeout,
        "name": name,
        "user": user,
        "readiness_timeout": readiness_timeout,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if env:
        body["env"] = dict(env)
    if tags:
        body["tags"] = dict(tags)
    if entrypoint is not None:
        # A string would otherwise be sent as a list of characters; treat it as a shell line,
        # as run() does.
        from stockade._protocol import command_argv

        body["entrypoint"] = command_argv(entrypoint)
    return body


def network_body(
    *,
    block_network: bool,
    outbound_cidr_allowlist: Sequence[str] | None,
    outbound_domain_allowlist: Sequence[str] | None,
) -> dict[str, Any]:
    """A network policy as the API spells it (``PUT .../network`` and create)."""
    body: dict[str, Any] = {}
    if block_network:
        body["block_network"] = True
    for key, value in (
        ("outbound_cidr_allowlist", outbound_cidr_allowlist),
        ("outbound_domain_allowlist", outbound_domain_allowlist),
    ):
        if value is not None:
            if isinstance(value, str):
                # A lone string would be sent as a list of characters.
                raise InvalidArgumentError(f"{key} must be a list of strings, e.g. [{value!r}]")
            body[key] = list(value)
    return body


def port_url(base_url: str, info: SandboxInfo, port: int) -> str:
    """The URL of an exposed port: host-based when the server has a domain for them."""
    exposed = next((p for p in info.ports if p.port == port), None)
    if exposed is None:
        listed = ", ".join(str(p.port) for p in info.ports) or "none"
        raise NotFoundError(
            f"port {port} of sandbox {info.id} is not exposed (exposed: {listed}); "
            "create the sandbox with ports=[...] or call sb.expose(port)"
        )
    if exposed.host:
        scheme = "https" if base_url.startswith("https") else "http"
        return f"{scheme}://{exposed.host}/"
    return base_url.rstrip("/") + exposed.path


def list_params(*, tags: Mapping[str, str] | None, status: str | None) -> httpx.QueryParams:
    """Query parameters of ``GET /v1/sandboxes`` (``tag`` repeats, one per pair)."""
    params: list[tuple[str, str | int | float | bool | None]] = []
    if status:
        params.append(("status", status))
    for key, value in (tags or {}).items():
        params.append(("tag", f"{key}={value}"))
    return httpx.QueryParams(params)


# A point in time as the SDK takes one: an aware datetime (a naive one is UTC), Unix
# seconds, or a string the server reads (ISO 8601, UTC unless it says).
When = dt.datetime | float | str


def time_param(when: When) -> str:
    """A :data:`When` as a query parameter of the API."""
    if isinstance(when, dt.datetime):
        aware = when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
        return aware.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(when, bool) or not isinstance(when, int | float | str):
        raise InvalidArgumentError(
            f"a time must be a datetime, Unix seconds or an ISO 8601 string, got {when!r}"
        )
    return when if isinstance(when, str) else repr(float(when))


def usage_params(tenant: str | None, since: When | None, until: When | None) -> dict[str, str]:
    """Query parameters of ``GET /v1/usage``."""
    params = {"tenant": tenant} if tenant is not None else {}
    for name, when in (("since", since), ("until", until)):
        if when is not None:
            params[name] = time_param(when)
    return params


def parse(build: Callable[[Any], _T], data: Any, what: str) -> _T:
    """Build a model from response JSON; a malformed body becomes a :class:`ServerError`."""
    try:
        return build(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServerError(f"the server sent a malformed {what}: {exc}") from exc


def field_list(data: Any, key: str, what: str) -> list[Any]:
    """``data[key]`` when it is a list, else a :class:`ServerError`."""
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, list):
        raise ServerError(f"the server sent a malformed {what}: no {key!r} list")
    return value


_END_HINTS = {
    "timeout": "pass a larger `timeout=` to Sandbox.create() (CLI: --timeout) to keep it longer",
    "oom": "pass a larger `memory=` to Sandbox.create() (CLI: --memory)",
}


def ended_message(info: SandboxInfo) -> str:
    """Why a sandbox is no longer running, with the fix when there is an obvious one."""
    text = f"sandbox {info.id} is {info.status}"
    if info.reason:
        text += f" (reason: {info.reason})"
    if info.message:
        text += f": {info.message}"
    hint = _END_HINTS.get(info.reason or "")
    return f"{text}; {hint}" if hint else text


def error_for_response(
    status: int, content: bytes, headers: Mapping[str, str] | None = None
) -> StockadeError:
    """The typed exception for an error response with body ``content`` (and ``headers``:
    a rate limit's ``Retry-After`` becomes :attr:`RateLimitedError.retry_after`)."""
    try:
        body: object = json.loads(content) if content else None
    except ValueError:
        body = content.decode("utf-8", "replace")[:500]
    error = error_from_body(status, body)
    if isinstance(body, str) and body.strip() and "without an error body" in error.message:
        # A proxy's HTML/text error page: keep its start, it usually says what went wrong.
        error = type(error)(
            f"the server answered HTTP {status}: {body.strip()[:200]}",
            code=error.code,
            status=status,
        )
    if isinstance(error, RateLimitedError) and headers is not None:
        error.retry_after = retry_after_seconds(headers.get("retry-after"))
    return error


def retry_after_seconds(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header value asks to wait (a number of seconds or an
    HTTP date); None when there is none or it is unreadable."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def transport_error(exc: Exception, *, url: str, action: str) -> StockadeError:
    """Translate an httpx/websockets/socket failure into the Stockade exception for it.

    ``action`` names the step (``"POST /v1/sandboxes"``) so the message says what failed.
    """
    if isinstance(exc, StockadeError):
        return exc
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        kind = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for an answer"
        return StockadeTimeoutError(
            f"{action}: timed out {kind} from the Stockade server at {url}; "
            "check that it is running and reachable"
        )
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        response = exc.response
        return error_for_response(
            response.status_code, bytes(response.body or b""), response.headers
        )
    bad_url = websockets.exceptions.InvalidURI | httpx.InvalidURL | httpx.UnsupportedProtocol
    if isinstance(exc, bad_url):
        return InvalidArgumentError(f"{action}: {url} is not a usable server URL: {exc}")
    tls = _tls_failure(exc)
    if tls is not None:
        return StockadeConnectionError(f"{action}: {_tls_message(tls, url)}")
    detail = str(exc) or type(exc).__name__
    # What a server that serves TLS does to a plain request: takes the connection, then
    # hangs up (or resets it) without an answer.
    hung_up = (
        httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError
        | websockets.exceptions.InvalidMessage | ConnectionResetError
    )  # fmt: skip
    if isinstance(exc, hung_up) and url.startswith(("http://", "ws://")):
        return StockadeConnectionError(
            f"{action}: the server at {url} hung up ({detail}); if it serves HTTPS (started "
            "with --tls-cert or --tls-self-signed), use an https:// URL, else see its log"
        )
    return StockadeConnectionError(
        f"{action}: could not reach the Stockade server at {url} ({detail}); start it with "
        "`stockade serve` (or `make run` in a checkout), or point STOCKADE_URL at it"
    )


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error under ``exc``: httpx wraps it twice (httpx, then httpcore)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _tls_message(error: ssl.SSLError, url: str) -> str:
    """What went wrong in a TLS handshake, and the fix."""
    if isinstance(error, ssl.SSLCertVerificationError):
        why = error.verify_message or error.reason or str(error)
        if why.startswith(("Hostname mismatch", "IP address mismatch")):
            return (
                f"the certificate of the Stockade server at {url} is not valid for this "
                f"name ({why}); connect by a name it covers (the server prints them at "
                "start), or give the server a certificate for this one"
            )
        return (
            f"the certificate of the Stockade server at {url} is not trusted ({why}); set "
            f"{_config.CA_BUNDLE_ENV} to the server's certificate (`stockade serve "
            "--tls-self-signed` prints its path) or to the CA that signed it, or pass "
            "verify='/path/to/cert.pem' to the client"
        )
    return (
        f"the TLS handshake with the Stockade server at {url} failed ({error.reason or error}); "
        "check that it serves HTTPS (started with --tls-cert or --tls-self-signed), or use an "
        "http:// URL for one that does not"
    )


def sync_chunks(data: FileContent) -> Iterator[bytes]:
    """Upload data as chunks, reading file objects a piece at a time."""
    if isinstance(data, str):
        yield data.encode("utf-8")
    elif isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif hasattr(data, "read"):
        while True:
            chunk = data.read(CHUNK_SIZE)
            if not chunk:
                return
            yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)
    else:
        for chunk in data:
            yield chunk.encode("utf-8") if isinstance(chunk, str) else bytes(chunk)


def is_sync_content(data: object) -> TypeIs[FileContent]:
    """Whether ``data`` can be read without awaiting (everything but async iterables)."""
    return (
        isinstance(data, str | bytes | bytearray | memoryview)
        or hasattr(data, "read")
        or not hasattr(data, "__aiter__")
    )


def whole_content(data: object) -> bytes | None:
    """``data`` as one body when it is already in memory, so the request gets a length."""
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    return None


VerifyTypes = bool | str | os.PathLike[str] | ssl.SSLContext
"""What a client's ``verify=`` takes: ``True`` (the system's CAs, plus ``$STOCKADE_CA_BUNDLE``),
``False`` (no check), a CA bundle's path, or a ready :class:`ssl.SSLContext`."""


@functools.cache
def ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """One TLS context per process (per CA bundle), shared by every client.

    Building one loads the CA store, which costs tens of milliseconds: far more than a
    whole request to a local server. Clients are cheap to make only if they share it.
    ``ca_bundle`` (a PEM file, or a directory of hashed certificates) is trusted on top of
    the system's CAs, so a private CA adds a server without taking away public ones (an
    ``https://`` ``HTTPS_PROXY``, say). It is read once per process.
    """
    context = ssl.create_default_context()
    if ca_bundle is not None:
        if os.path.isdir(ca_bundle):
            context.load_verify_locations(capath=ca_bundle)
        else:
            context.load_verify_locations(cafile=ca_bundle)
    return context


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def client_ssl_context(verify: VerifyTypes = True) -> ssl.SSLContext:
    """The TLS context of a client made with ``verify=`` (see :data:`VerifyTypes`), which
    its HTTP requests and its WebSockets share."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    resolved = _config.resolve_verify(verify)
    if resolved is False:
        return _unverified_context()
    if resolved is True:
        return ssl_context()
    try:
        return ssl_context(resolved)
    except (ssl.SSLError, OSError) as exc:
        source = f"{_config.CA_BUNDLE_ENV}={resolved}" if verify is True else f"verify={resolved!r}"
        raise InvalidArgumentError(
            f"{source} holds no usable PEM certificate ({exc}); point it at the server's "
            "certificate (a file starting with -----BEGIN CERTIFICATE-----) or its CA's"
        ) from None
