"""Volume names are per tenant in the store, and a database from before that is migrated
with every volume kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from stockade.server.state.records import VolumeRecord
from stockade.server.state.store import SQLiteStore

_OLD_VOLUMES = """
CREATE TABLE volumes (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL
);
"""


async def test_two_tenants_may_use_one_name(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    try:
        await store.put_volume(VolumeRecord("vol-a", "data", 1.0, 64, tenant="acme"))
        await store.put_volume(VolumeRecord("vol-b", "data", 2.0, 64, tenant="globex"))
        assert [v.id for v in await store.list_volumes()] == ["vol-a", "vol-b"]
        found = await store.get_volume("data", "globex")
        assert found is not None and found.id == "vol-b"
        assert await store.get_volume("data", "initech") is None
        by_id = await store.get_volume("vol-a", "globex")  # IDs are global; callers check
        assert by_id is not None and by_id.tenant == "acme"
    finally:
        await store.close()


async def test_an_older_database_is_migrated_keeping_every_volume(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(_OLD_VOLUMES)
    old = VolumeRecord("vol-old", "cache", 1.0, 128)  # before tenants: no tenant in data
    legacy = old.to_json().replace(',"tenant":"default"', "")
    tenanted = VolumeRecord("vol-t", "models", 2.0, 64, tenant="acme")
    db.executemany(
        "INSERT INTO volumes VALUES (?, ?, ?, ?)",
        [(old.id, old.name, 1.0, legacy), (tenanted.id, tenanted.name, 2.0, tenanted.to_json())],
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        got = await store.get_volume("cache", "default")
        assert got is not None and got.id == "vol-old" and got.tenant == "default"
        got = await store.get_volume("models", "acme")
        assert got is not None and got.id == "vol-t"
        # The new rule holds on the migrated table: the name is free for another tenant.
        await store.put_volume(VolumeRecord("vol-n", "models", 3.0, 64, tenant="globex"))
        assert len(await store.list_volumes()) == 3
    finally:
        await store.close()
    again = SQLiteStore(path)  # opening a migrated database again changes nothing
    try:
        assert len(await again.list_volumes()) == 3
    finally:
        await again.close()
