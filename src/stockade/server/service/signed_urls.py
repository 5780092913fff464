"""Time-limited URLs for one file of one sandbox, in one direction, that need no API key.

A URL carries its grant in the query (``path``, ``op``, ``tenant``, ``expires``) and an
HMAC-SHA256 ``sig`` over those and the sandbox ID, keyed with a secret kept in the data
directory (``url-signing.key``, 0600, made once). :meth:`UrlSigner.verify` checks the
signature in constant time before anything else is looked at, so a forged or altered URL
costs the server one hash and reaches no sandbox. A URL stops working when it expires, and
when its sandbox ends (the file calls behind it need a running sandbox). Changing the key
file revokes every URL at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from ...errors import ForbiddenError, InvalidArgumentError, StockadeError
from .files import check_path

__all__ = [
    "DEFAULT_EXPIRES_S",
    "KEY_FILE",
    "MAX_EXPIRES_S",
    "OPS",
    "Grant",
    "UrlExpiredError",
    "UrlSigner",
    "check_expires",
]

KEY_FILE = "url-signing.key"
DEFAULT_EXPIRES_S = 3600
MAX_EXPIRES_S = 7 * 24 * 3600
OPS = ("download", "upload")
_SCHEME = "v1"


class UrlExpiredError(StockadeError):
    """The signed URL was genuine but its time is up: ask for a new one."""

    code = "expired"
    status = 410


@dataclass(frozen=True)
class Grant:
    """What a verified URL allows: ``op`` on ``path`` of ``sandbox_id`` of ``tenant``."""

    sandbox_id: str
    path: str
    op: str
    tenant: str
    expires: int


def check_expires(expires: object) -> int:
    """A lifetime in seconds: 1..MAX_EXPIRES_S."""
    if isinstance(expires, bool) or not isinstance(expires, int):
        raise InvalidArgumentError(f"expires must be a whole number of seconds, not {expires!r}")
    if not 1 <= expires <= MAX_EXPIRES_S:
        raise InvalidArgumentError(
            f"expires={expires} is out of range: give 1..{MAX_EXPIRES_S} seconds (7 days)"
        )
    return expires


class UrlSigner:
    """Signs and verifies file URLs with one secret key. Thread-safe (it holds no state
    but the key)."""

    _cache: dict[Path, UrlSigner] = {}  # noqa: RUF012  # one per data directory
    _lock = threading.Lock()

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the URL signing key must be at least 32 bytes")
        self._key = key

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> UrlSigner:
        """The signer of the server whose data directory is ``data_dir``: its key is read
        from, or made once in, ``data_dir / KEY_FILE`` (mode 0600)."""
        with cls._lock:
            signer = cls._cache.get(data_dir)
            if signer is None:
                signer = cls._cache[data_dir] = cls(_load_key(data_dir / KEY_FILE))
            return signer

    def _mac(self, sandbox_id: str, path: str, op: str, tenant: str, expires: int) -> str:
        # A JSON array: no field can run into the next, whatever bytes a path holds.
        message = json.dumps([_SCHEME, sandbox_id, path, op, tenant, expires])
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def sign(
        self, sandbox_id: str, path: str, op: str, tenant: str, expires_in: int,
        *, now: float | None = None,
    ) -> tuple[str, int]:  # fmt: skip
        """The query string granting ``op`` on ``path``, and its expiry (unix seconds)."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}")
        path = check_path(path)
        expires = int(now if now is not None else time.time()) + check_expires(expires_in)
        sig = self._mac(sandbox_id, path, op, tenant, expires)
        query = urlencode(
            {"path": path, "op": op, "tenant": tenant, "expires": expires, "sig": sig}
        )
        return query, expires

    def verify(
        self, sandbox_id: str, params: dict[str, str], op: str, *, now: float | None = None
    ) -> Grant:
        """The grant of a URL's query ``params`` used for ``op``, or ForbiddenError (forged,
        altered, or for the other direction) or UrlExpiredError. Nothing but the signature
        is trusted before it is checked."""
        path, tenant = params.get("path", ""), params.get("tenant", "")
        signed_op, sig, raw_expires = (
            params.get("op", ""),
            params.get("sig", ""),
            params.get("expires", ""),
        )
        if not (path and tenant and sig and raw_expires.isdigit() and len(raw_expires) < 16):
            raise ForbiddenError(
                "not a signed file URL: it needs path, op, tenant, expires and sig; get one "
                "from files.upload_url() / files.download_url()"
            )
        expires = int(raw_expires)
        expected = self._mac(sandbox_id, path, signed_op, tenant, expires)
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            raise ForbiddenError(
                "the URL's signature does not match: it was altered, or signed by another "
                "server; ask for a new URL"
            )
        if signed_op != op:
            method, other = (
                ("GET", "download_url") if signed_op == "download" else ("PUT", "upload_url")
            )
            raise ForbiddenError(
                f"this URL is for {signed_op}s only (HTTP {method}); for an {op} ask for "
                f"files.{'upload_url' if op == 'upload' else 'download_url'}() instead of "
                f"files.{other}()"
            )
        if (now if now is not None else time.time()) >= expires:
            raise UrlExpiredError(
                f"this URL expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires))}"
                "; ask for a new one (expires= sets its lifetime, up to 7 days)"
            )
        return Grant(sandbox_id, path, signed_op, tenant, expires)


def _load_key(path: Path) -> bytes:
    """The key in ``path``, made there first (0600, whole before it appears: a second
    server starting on the same directory reads the same key, never half of it)."""
    if not path.exists():
        temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}.new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):  # another made it first: theirs
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # a copy restored with looser bits must not stay readable
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise StockadeError(
            f"{path} does not hold a URL signing key (64 hex digits); delete it and "
            "restart the server to make a new one (URLs signed before stop working)"
        )
    return key
