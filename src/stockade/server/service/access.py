"""Who may call the API: tenants, their API keys and roles, and the operator's token.

The server's admin token (``STOCKADE_TOKEN`` or the token file) is the operator's: it
manages tenants, reaches every tenant's objects, and its own objects belong to the
``default`` tenant, so scripts written before tenants existed keep working.

A tenant's API key looks like ``stk_<16 hex>_<43 characters>``: the hex names the key
(its ID is ``key-<16 hex>``), the rest is 256 random bits of which only the SHA-256 is
stored and compared, in constant time. Keys are held in memory once read, so checking
one costs a dictionary lookup and a hash, not a database query; creating or revoking one
updates both. So are the tenants' quotas, which every create looks up (quotas.py).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from ...errors import (
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
)
from ..state.records import KeyRecord, Role, TenantRecord
from ..state.store import Store

__all__ = [
    "DEFAULT_TENANT",
    "KEY_PREFIX",
    "OPERATOR",
    "AccessService",
    "Principal",
    "is_key",
]

DEFAULT_TENANT = "default"
KEY_PREFIX = "stk_"
_KEY = re.compile(r"stk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Each role may do what the ones before it may.
_RANK: dict[str, int] = {"readonly": 0, "user": 1, "admin": 2, "operator": 3}
_MAX_KEY_LIFETIME = 10 * 365 * 86400.0
_NO_QUOTAS: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant's key with its role, or the operator."""

    tenant: str  # whose objects it sees and makes (the operator's own: "default")
    role: str  # "readonly" | "user" | "admin" | "operator"
    key_id: str | None = None  # None: the operator's token

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    def sees(self, tenant: str) -> bool:
        """Whether this caller may see an object of ``tenant`` (the operator sees all)."""
        return self.operator or tenant == self.tenant

    def check(self, needed: str, doing: str) -> None:
        """Raise ForbiddenError unless this caller's role covers ``needed``."""
        if _RANK[self.role] < _RANK[needed]:
            who = "the server's admin token" if needed == "operator" else f"a {needed} key"
            raise ForbiddenError(
                f"{doing} needs {who}; this {self.role} key of tenant {self.tenant} "
                "may not (ask an admin of the tenant for a key with that role)"
            )


OPERATOR = Principal(DEFAULT_TENANT, "operator")


def is_key(credential: bytes) -> bool:
    """Whether ``credential`` has the shape of a Stockade API key (to keep it from ever
    being passed on, e.g. by the port proxy to a sandbox)."""
    return credential.startswith(KEY_PREFIX.encode())


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class AccessService:
    """Tenants and keys, and the check of every request's credential."""

    def __init__(self, store: Store, admin_token: str) -> None:
        self.store = store
        self._admin = admin_token.encode()
        self._keys: dict[str, KeyRecord] = {}
        self._quotas: dict[str, dict[str, float]] = {}  # tenant → its quotas, if any
        # Told the ID of each key revoked (open streams made with it are closed).
        self.on_revoke: list[Callable[[str], None]] = []

    async def start(self) -> None:
        """Make sure the default tenant exists (a server upgraded from before tenants
        keeps its objects there) and read the keys."""
        if await self.store.get_tenant(DEFAULT_TENANT) is None:
            await self.store.put_tenant(TenantRecord(DEFAULT_TENANT, created_at=time.time()))
        self._keys = {k.id: k for k in await self.store.list_keys()}
        for record in await self.store.list_tenants():
            self._remember(record)

    # ------------------------------------------------------------------ credentials

    def authenticate(self, credential: bytes) -> Principal:
        """The caller that ``credential`` (a bearer token's bytes) stands for."""
        if hmac.compare_digest(credential, self._admin):
            return OPERATOR
        match = _KEY.fullmatch(credential.decode("latin-1"))
        record = self._keys.get(f"key-{match.group(1)}") if match else None
        secret = match.group(2) if match else "-"
        # Hashed and compared even for an unknown key, so that every refusal takes as long.
        expected = record.secret_sha256 if record is not None else _digest("")
        if not hmac.compare_digest(_digest(secret), expected) or record is None:
            raise AuthenticationError(
                "wrong token: send `Authorization: Bearer <token>` with an API key of your "
                "tenant (`stockade key create`) or the server's admin token"
            )
        if record.revoked_at is not None:
            raise AuthenticationError(f"API key {record.id} was revoked; create a new one")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise AuthenticationError(f"API key {record.id} has expired; create a new one")
        return Principal(record.tenant, record.role, record.id)

    def holder(self, key_id: str | None) -> Principal:
        """The caller that the key ``key_id`` (None: the admin token) stands for now, for a
        grant it made earlier (a signed URL): ForbiddenError naming the key once it is
        revoked, expired or gone, as the key itself would be refused."""
        if key_id is None:
            return OPERATOR
        record = self._keys.get(key_id)
        why = (
            "no longer exists" if record is None
            else "was revoked" if record.revoked_at is not None
            else "has expired" if record.expires_at is not None and record.expires_at <= time.time()
            else None
        )  # fmt: skip
        if record is None or why is not None:
            raise ForbiddenError(
                f"this URL was made with API key {key_id[:80]}, which {why}; ask for a new "
                "URL made with a valid key"
            )
        return Principal(record.tenant, record.role, record.id)

    # ------------------------------------------------------------------ tenants

    async def create_tenant(self, name: str, quotas: dict[str, float]) -> TenantRecord:
        if not _TENANT_NAME.fullmatch(name):
            raise InvalidArgumentError(
                f"tenant name {name[:80]!r} must be 1 to 63 lowercase letters, digits and "
                "dashes, starting with a letter or digit"
            )
        if await self.store.get_tenant(name) is not None:
            raise ConflictError(f"tenant {name} exists already")
        record = TenantRecord(name, created_at=time.time(), quotas=dict(quotas))
        await self.store.put_tenant(record)
        self._remember(record)
        return record

    async def tenant(self, name: str) -> TenantRecord:
        record = await self.store.get_tenant(name)
        if record is None:
            raise NotFoundError(f"tenant {name[:80]!r} does not exist; `stockade tenant ls`")
        return record

    async def tenants(self) -> list[TenantRecord]:
        return await self.store.list_tenants()

    async def set_quotas(self, name: str, quotas: dict[str, float | None]) -> TenantRecord:
        """Change some of a tenant's quotas (None: remove that limit)."""
        record = await self.tenant(name)
        for quota, value in quotas.items():
            if value is None:
                record.quotas.pop(quota, None)
            else:
                record.quotas[quota] = value
        await self.store.put_tenant(record)
        self._remember(record)
        return record

    def quotas(self, tenant: str) -> Mapping[str, float]:
        """The quotas of ``tenant`` by name (empty: no limits), from memory."""
        return self._quotas.get(tenant, _NO_QUOTAS)

    def _remember(self, record: TenantRecord) -> None:
        if record.quotas:
            self._quotas[record.name] = dict(record.quotas)
        else:
            self._quotas.pop(record.name, None)

    async def delete_tenant(self, name: str) -> None:
        """Remove a tenant that owns nothing any more, and its keys."""
        await self.tenant(name)
        if name == DEFAULT_TENANT:
            raise ConflictError("the default tenant holds the operator's objects; it stays")
        owned = sum(
            1 for r in await self.store.list_sandboxes() if r.tenant == name and not r.ended
        )
        owned += sum(1 for r in await self.store.list_snapshots() if r.tenant == name)
        owned += sum(1 for r in await self.store.list_volumes() if r.tenant == name)
        if owned:
            raise ConflictError(
                f"tenant {name} still owns {owned} sandboxes, snapshots or volumes; remove "
                "them first"
            )
        for key in [k for k in self._keys.values() if k.tenant == name]:
            await self.store.delete_key(key.id)
            self._forget(key.id)
        await self.store.delete_tenant(name)
        self._quotas.pop(name, None)

    # ------------------------------------------------------------------ keys

    async def create_key(
        self, tenant: str, role: Role, *, name: str | None, expires_in: float | None
    ) -> tuple[KeyRecord, str]:
        """A new key of ``tenant``: its record, and the key itself (shown only now)."""
        await self.tenant(tenant)
        if expires_in is not None and not (0 < expires_in <= _MAX_KEY_LIFETIME):
            raise InvalidArgumentError(
                f"expires_in={expires_in:g} must be a positive number of seconds, at most "
                f"{_MAX_KEY_LIFETIME:g} (ten years)"
            )
        if expires_in is not None and not math.isfinite(expires_in):
            raise InvalidArgumentError("expires_in must be a finite number of seconds")
        hex_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)  # 256 bits
        now = time.time()
        record = KeyRecord(
            id=f"key-{hex_id}", tenant=tenant, role=role, secret_sha256=_digest(secret),
            created_at=now, name=name, expires_at=None if expires_in is None else now + expires_in,
        )  # fmt: skip
        await self.store.put_key(record)
        self._keys[record.id] = record
        return record, f"{KEY_PREFIX}{hex_id}_{secret}"

    def keys(self, tenant: str | None) -> list[KeyRecord]:
        """The keys of ``tenant`` (None: all), oldest first."""
        found = [k for k in self._keys.values() if tenant is None or k.tenant == tenant]
        return sorted(found, key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str, *, tenant: str | None) -> KeyRecord:
        """Revoke a key at once; ``tenant``: the caller's, whose keys alone it may revoke
        (None: the operator, any key). Another tenant's key answers as if it did not exist."""
        record = self._keys.get(key_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            raise NotFoundError(f"API key {key_id[:80]!r} does not exist; `stockade key ls`")
        if record.revoked_at is None:
            record.revoked_at = time.time()
            await self.store.put_key(record)
            for listener in self.on_revoke:
                listener(record.id)
        return record

    def _forget(self, key_id: str) -> None:
        self._keys.pop(key_id, None)
        for listener in self.on_revoke:
            listener(key_id)
