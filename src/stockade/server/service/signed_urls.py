"""Time-limited URLs for one file of one sandbox, in one direction, that need no API key.

A URL carries its grant in the query (``path``, ``op``, ``tenant``, ``key``, ``expires``)
and an HMAC-SHA256 ``sig`` over those and the sandbox ID, keyed with a secret kept in the
data directory (``url-signing.key``, 0600, made once). :meth:`UrlSigner.verify` checks the
signature in constant time before anything else is looked at, so a forged or altered URL
costs the server one hash and reaches no sandbox. ``key`` names the API key that minted the
URL (``admin``: the server's admin token): the route serving it refuses the URL once that
key is revoked or expired (api/file_urls.py). A URL stops working when it expires, and
when its sandbox ends (the file calls behind it need a running sandbox). Replacing or
deleting the key file revokes every URL at once: the file is stat'ed on each use and read
again when it changed, so no restart is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from ...errors import ForbiddenError, InvalidArgumentError, StockadeError
from .files import check_path

__all__ = [
    "ADMIN_MINTER",
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
# v2 signs the minting key too: a v1 URL (no key) is refused as malformed.
_SCHEME = "v2"
# The ``key`` of a URL minted with the server's admin token (key IDs are ``key-<hex>``).
ADMIN_MINTER = "admin"
# Unix seconds: ASCII digits only (str.isdigit also takes "²" and other scripts' digits,
# which int() refuses or reads), and few enough that int() stays cheap.
_EXPIRES = re.compile(r"[0-9]{1,15}")
# (device, inode, mtime, size) of the key file: a replaced or rewritten file differs.
_FileId = tuple[int, int, int, int]


class UrlExpiredError(StockadeError):
    """The signed URL was genuine but its time is up: ask for a new one."""

    code = "expired"
    status = 410


@dataclass(frozen=True)
class Grant:
    """What a verified URL allows: ``op`` on ``path`` of ``sandbox_id`` of ``tenant``,
    minted by the API key ``key_id`` (None: the server's admin token)."""

    sandbox_id: str
    path: str
    op: str
    tenant: str
    expires: int
    key_id: str | None = None


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
    """Signs and verifies file URLs with one secret key. Thread-safe: the key, re-read
    when its file changes, is swapped under a lock."""

    _cache: dict[Path, UrlSigner] = {}  # noqa: RUF012  # one per data directory
    _lock = threading.Lock()

    def __init__(self, key: bytes, *, key_file: Path | None = None) -> None:
        """A signer with ``key``; with ``key_file`` (where ``key`` was read), the file is
        read again whenever it changes."""
        if len(key) < 32:
            raise ValueError("the URL signing key must be at least 32 bytes")
        self._key = key
        self._key_file = key_file
        self._file_id: _FileId | None = None
        self._reload = threading.Lock()

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> UrlSigner:
        """The signer of the server whose data directory is ``data_dir``: its key is read
        from, or made once in, ``data_dir / KEY_FILE`` (mode 0600), and read again when
        the file is replaced (or made anew when it is deleted)."""
        with cls._lock:
            signer = cls._cache.get(data_dir)
            if signer is None:
                path = data_dir / KEY_FILE
                key, file_id = _load_key(path)
                signer = cls._cache[data_dir] = cls(key, key_file=path)
                signer._file_id = file_id
            return signer

    def _current_key(self) -> bytes:
        """The key, read again if its file changed since it was read: replacing the file
        revokes every URL at once, in every server process, with no restart."""
        if self._key_file is None:
            return self._key
        try:
            st = os.stat(self._key_file)
            seen: _FileId | None = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None  # deleted: a new key is made below
        if seen is None or seen != self._file_id:
            with self._reload:
                self._key, self._file_id = _load_key(self._key_file)
        return self._key

    def _mac(
        self, sandbox_id: str, path: str, op: str, tenant: str, minter: str, expires: int
    ) -> str:
        # A JSON array: no field can run into the next, whatever bytes a path holds.
        message = json.dumps([_SCHEME, sandbox_id, path, op, tenant, minter, expires])
        return hmac.new(self._current_key(), message.encode(), hashlib.sha256).hexdigest()

    def sign(
        self, sandbox_id: str, path: str, op: str, tenant: str, expires_in: int,
        *, key_id: str | None = None, now: float | None = None,
    ) -> tuple[str, int]:  # fmt: skip
        """The query string granting ``op`` on ``path``, minted by the API key ``key_id``
        (None: the admin token), and its expiry (unix seconds)."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}")
        path = check_path(path)
        minter = key_id if key_id is not None else ADMIN_MINTER
        expires = int(now if now is not None else time.time()) + check_expires(expires_in)
        sig = self._mac(sandbox_id, path, op, tenant, minter, expires)
        query = urlencode(
            {"path": path, "op": op, "tenant": tenant, "key": minter, "expires": expires,
             "sig": sig}
        )  # fmt: skip
        return query, expires

    def verify(
        self, sandbox_id: str, params: dict[str, str], op: str, *, now: float | None = None
    ) -> Grant:
        """The grant of a URL's query ``params`` used for ``op``, or ForbiddenError (forged,
        altered, or for the other direction) or UrlExpiredError. Nothing but the signature
        is trusted before it is checked."""
        path, tenant = params.get("path", ""), params.get("tenant", "")
        signed_op, sig, raw_expires, minter = (
            params.get("op", ""),
            params.get("sig", ""),
            params.get("expires", ""),
            params.get("key", ""),
        )
        if not (path and tenant and sig and minter and _EXPIRES.fullmatch(raw_expires)):
            raise ForbiddenError(
                "not a signed file URL: it needs path, op, tenant, key, expires and sig; get "
                "one from files.upload_url() / files.download_url()"
            )
        expires = int(raw_expires)
        expected = self._mac(sandbox_id, path, signed_op, tenant, minter, expires)
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
        key_id = None if minter == ADMIN_MINTER else minter
        return Grant(sandbox_id, path, signed_op, tenant, expires, key_id)


def _load_key(path: Path) -> tuple[bytes, _FileId]:
    """The key in ``path``, made there first (0600, whole before it appears: a second
    server starting on the same directory reads the same key, never half of it), and the
    identity of the file it was read from (stat'ed on the descriptor read: a file replaced
    meanwhile is noticed at the next use)."""
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
    with path.open("rb") as f:
        st = os.fstat(f.fileno())
        if st.st_mode & 0o077:
            os.fchmod(f.fileno(), 0o600)  # a copy restored with looser bits must not stay so
            st = os.fstat(f.fileno())
        text = f.read(4096).decode("ascii", "replace").strip()
    file_id = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise StockadeError(
            f"{path} does not hold a URL signing key (64 hex digits); delete it to have "
            "a new one made (URLs signed before stop working)"
        )
    return key, file_id
