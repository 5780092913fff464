"""Tenants and API keys over a real SQLite store: what a key is, how it is checked, and
that only its hash is kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stockade.errors import (
    AuthenticationError,
    ConflictError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
)
from stockade.server.service.access import OPERATOR, AccessService, Principal, is_key
from stockade.server.state.records import SandboxRecord, SandboxStatus, VolumeRecord
from stockade.server.state.store import SQLiteStore

ADMIN = "sk_admin_0123456789"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "state.db")
    yield store
    await store.close()


@pytest.fixture
async def access(store: SQLiteStore) -> AccessService:
    service = AccessService(store, ADMIN)
    await service.start()
    return service


async def test_the_admin_token_is_the_operator_and_the_default_tenant_exists(
    access: AccessService,
) -> None:
    assert access.authenticate(ADMIN.encode()) == OPERATOR
    assert OPERATOR.operator and OPERATOR.tenant == "default"
    assert [t.name for t in await access.tenants()] == ["default"]


async def test_a_key_is_random_shown_once_and_stored_only_as_its_hash(
    access: AccessService, tmp_path: Path
) -> None:
    await access.create_tenant("acme", {})
    record, key = await access.create_key("acme", "user", name="ci-bot", expires_in=None)
    again, other = await access.create_key("acme", "user", name=None, expires_in=None)
    assert is_key(key.encode()) and key != other and record.id != again.id
    secret = key[len("stk_0123456789abcdef_"):]
    assert len(secret) == 43  # 256 random bits, base64url
    assert key.startswith(f"stk_{record.id.removeprefix('key-')}_")  # the check is a lookup
    assert access.authenticate(key.encode()) == Principal("acme", "user", record.id)
    database = (tmp_path / "state.db").read_bytes() + (tmp_path / "state.db-wal").read_bytes()
    assert secret.encode() not in database and record.secret_sha256.encode() in database
    # A server started afresh over the same store knows the key.
    fresh = AccessService(access.store, ADMIN)
    await fresh.start()
    assert fresh.authenticate(key.encode()).tenant == "acme"


@pytest.mark.parametrize(
    "credential",
    [
        b"", b"nope", b"stk_", b"stk_0123456789abcdef_short", b"\xff\xfe" * 30,
        b"stk_0123456789abcdef_" + b"A" * 43,  # the shape of a key, but no such key
    ],
)  # fmt: skip
async def test_anything_else_is_a_wrong_token(access: AccessService, credential: bytes) -> None:
    with pytest.raises(AuthenticationError, match="wrong token"):
        access.authenticate(credential)


async def test_a_key_with_one_character_changed_is_refused(access: AccessService) -> None:
    await access.create_tenant("acme", {})
    _, key = await access.create_key("acme", "user", name=None, expires_in=None)
    flipped = key[:-1] + ("A" if key[-1] != "A" else "B")
    with pytest.raises(AuthenticationError, match="wrong token"):
        access.authenticate(flipped.encode())


async def test_revoked_and_expired_keys_stop_working_at_once(access: AccessService) -> None:
    await access.create_tenant("acme", {})
    record, key = await access.create_key("acme", "admin", name=None, expires_in=None)
    revoked: list[str] = []
    access.on_revoke.append(revoked.append)
    await access.revoke_key(record.id, tenant="acme")
    assert revoked == [record.id]
    with pytest.raises(AuthenticationError, match="revoked"):
        access.authenticate(key.encode())
    short, short_key = await access.create_key("acme", "user", name=None, expires_in=0.05)
    assert access.authenticate(short_key.encode()).key_id == short.id
    await asyncio.sleep(0.06)
    with pytest.raises(AuthenticationError, match="expired"):
        access.authenticate(short_key.encode())


async def test_a_tenant_cannot_see_or_revoke_another_tenants_keys(access: AccessService) -> None:
    for name in ("acme", "globex"):
        await access.create_tenant(name, {})
    theirs, _ = await access.create_key("globex", "admin", name=None, expires_in=None)
    with pytest.raises(NotFoundError, match="does not exist"):
        await access.revoke_key(theirs.id, tenant="acme")
    assert access.keys("acme") == [] and access.keys("globex") == [theirs]
    assert await access.revoke_key(theirs.id, tenant=None)  # the operator may


async def test_roles_cover_the_ones_below(access: AccessService) -> None:
    reader = Principal("acme", "readonly", "key-0")
    reader.check("readonly", "reading")
    with pytest.raises(ForbiddenError, match="needs a user key; this readonly key"):
        reader.check("user", "POST /v1/sandboxes")
    Principal("acme", "admin", "key-1").check("user", "exec")
    with pytest.raises(ForbiddenError, match="admin token"):
        Principal("acme", "admin", "key-1").check("operator", "creating a tenant")
    OPERATOR.check("operator", "creating a tenant")


async def test_tenant_names_and_bad_values_are_refused_clearly(access: AccessService) -> None:
    for bad in ("", "Acme", "-x", "a" * 64, "a/b", "a..b"):
        with pytest.raises(InvalidArgumentError, match="tenant name"):
            await access.create_tenant(bad, {})
    await access.create_tenant("acme", {"max_sandboxes": 3})
    with pytest.raises(ConflictError, match="exists"):
        await access.create_tenant("acme", {})
    with pytest.raises(NotFoundError, match="tenant 'nope' does not exist"):
        await access.create_key("nope", "user", name=None, expires_in=None)
    with pytest.raises(InvalidArgumentError, match="expires_in"):
        await access.create_key("acme", "user", name=None, expires_in=-1)


async def test_quotas_are_set_and_removed(access: AccessService) -> None:
    await access.create_tenant("acme", {"max_sandboxes": 3})
    updated = await access.set_quotas("acme", {"max_cpu": 4.0, "max_sandboxes": None})
    assert updated.quotas == {"max_cpu": 4.0}
    assert (await access.tenant("acme")).quotas == {"max_cpu": 4.0}


async def test_a_tenant_goes_only_once_it_owns_nothing(
    access: AccessService, store: SQLiteStore
) -> None:
    await access.create_tenant("acme", {})
    _, key = await access.create_key("acme", "user", name=None, expires_in=None)
    live = SandboxRecord(
        id="sb-1", image="debian", cpu=1, memory=256, disk=256, timeout=60,
        status=SandboxStatus.RUNNING, tenant="acme",
    )  # fmt: skip
    await store.put_sandbox(live)
    await store.put_volume(VolumeRecord("vol-1", "data", 1.0, 10, tenant="acme"))
    with pytest.raises(ConflictError, match="still owns 2"):
        await access.delete_tenant("acme")
    live.status = SandboxStatus.TERMINATED
    await store.put_sandbox(live)
    await store.delete_volume("vol-1")
    await access.delete_tenant("acme")
    with pytest.raises(AuthenticationError):  # its keys went with it
        access.authenticate(key.encode())
    with pytest.raises(ConflictError, match="default tenant"):
        await access.delete_tenant("default")
