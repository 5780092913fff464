"""Persistence of server state behind one interface.

:class:`Store` is what the service layer uses; :class:`SQLiteStore` is the embedded default
(one file in the data directory). A multi-host deployment plugs in another implementation
of the same protocol.

Concurrency: SQLiteStore is safe to use from the event loop; each call runs on a worker
thread under one lock, because a sqlite3 connection must not be used concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .records import (
    USAGE_FIELDS,
    AuditRecord,
    KeyRecord,
    SandboxRecord,
    SnapshotRecord,
    TenantRecord,
    UsageRecord,
    VolumeRecord,
)

__all__ = ["SQLiteStore", "Store"]


class Store(Protocol):
    async def put_sandbox(self, record: SandboxRecord) -> None: ...
    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None: ...
    async def list_sandboxes(self, status: str | None = None) -> list[SandboxRecord]: ...
    async def delete_sandbox(self, sandbox_id: str) -> None: ...
    async def put_snapshot(self, record: SnapshotRecord) -> None: ...
    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None: ...
    async def list_snapshots(self) -> list[SnapshotRecord]: ...
    async def delete_snapshot(self, snapshot_id: str) -> None: ...
    async def put_volume(self, record: VolumeRecord) -> None: ...
    async def get_volume(
        self, volume_id: str, tenant: str | None = None
    ) -> VolumeRecord | None: ...
    async def list_volumes(self) -> list[VolumeRecord]: ...
    async def delete_volume(self, volume_id: str) -> None: ...
    async def put_tenant(self, record: TenantRecord) -> None: ...
    async def get_tenant(self, name: str) -> TenantRecord | None: ...
    async def list_tenants(self) -> list[TenantRecord]: ...
    async def delete_tenant(self, name: str) -> None: ...
    async def put_key(self, record: KeyRecord) -> None: ...
    async def list_keys(self) -> list[KeyRecord]: ...
    async def delete_key(self, key_id: str) -> None: ...
    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        """Append entries (each gets its ``seq``, in order)."""

    async def list_audit(
        self,
        *,
        tenant: str | None = None,
        sandbox: str | None = None,
        since: float | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Entries oldest first: with ``seq`` past ``after``, started at or after ``since``;
        None: any tenant or sandbox."""
        ...

    async def prune_audit(self, before: float) -> int:
        """Remove entries that started before ``before``; how many went."""
        ...

    async def add_usage(self, records: Sequence[UsageRecord]) -> None:
        """Add each record's figures to its tenant's minute (making it if new)."""

    async def sum_usage(
        self, *, tenant: str | None, since: float, until: float
    ) -> list[UsageRecord]:
        """Per tenant (None: every tenant), the sums over the minutes that start in
        [``since`` rounded down to its minute, ``until``)."""
        ...

    async def close(self) -> None: ...


# A volume's name is unique within its tenant.
_VOLUMES = """
CREATE TABLE IF NOT EXISTS volumes (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL DEFAULT 'default',
    name       TEXT NOT NULL,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL,
    UNIQUE (tenant, name)
);
"""

_SCHEMA = _VOLUMES + """
CREATE TABLE IF NOT EXISTS sandboxes (
    id         TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_status ON sandboxes(status);
CREATE TABLE IF NOT EXISTS snapshots (
    id         TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    name       TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         REAL NOT NULL,
    tenant     TEXT NOT NULL,
    sandbox    TEXT,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE INDEX IF NOT EXISTS audit_tenant ON audit(tenant, seq);
CREATE INDEX IF NOT EXISTS audit_sandbox ON audit(sandbox, seq);
CREATE TABLE IF NOT EXISTS usage (
    tenant             TEXT NOT NULL,
    minute             INTEGER NOT NULL,
    sandbox_seconds    REAL NOT NULL DEFAULT 0,
    cpu_seconds        REAL NOT NULL DEFAULT 0,
    memory_gib_seconds REAL NOT NULL DEFAULT 0,
    snapshot_gib_hours REAL NOT NULL DEFAULT 0,
    volume_gib_hours   REAL NOT NULL DEFAULT 0,
    execs              INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, minute)
);
"""


class SQLiteStore:
    """SQLite in WAL mode; every write is committed before the call returns."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        # The records hold every sandbox's env and access tokens: owner-only. SQLite gives
        # its -wal and -shm files the database file's mode, so making this one 0600 first
        # covers all three (chmod too: a database made by an older server was 0644).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for name in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(name, 0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (what restart safety needs); only a
        # power loss can drop the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a database written by an older server up to this schema."""
        (volumes,) = self._db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'volumes'"
        ).fetchone()
        if "tenant" not in volumes:
            # Volume names were one space for the whole server; now each tenant has its
            # own, so the table is rebuilt with (tenant, name) unique instead of name.
            self._db.executescript(
                "BEGIN;"
                "ALTER TABLE volumes RENAME TO volumes_old;"
                + _VOLUMES
                + "INSERT INTO volumes(id, tenant, name, created_at, data) "
                "SELECT id, COALESCE(json_extract(data, '$.tenant'), 'default'), name, "
                "created_at, data FROM volumes_old;"
                "DROP TABLE volumes_old;"
                "COMMIT;"
            )

    def _put(self, record: SandboxRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO sandboxes(id, status, created_at, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET status=excluded.status, data=excluded.data",
                (record.id, record.status, record.created_at, record.to_json()),
            )

    def _get(self, sandbox_id: str) -> SandboxRecord | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM sandboxes WHERE id = ?", (sandbox_id,)
            ).fetchone()
        return SandboxRecord.from_json(row[0]) if row else None

    def _list(self, status: str | None) -> list[SandboxRecord]:
        with self._lock:
            if status is None:
                rows = self._db.execute(
                    "SELECT data FROM sandboxes ORDER BY created_at DESC"
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT data FROM sandboxes WHERE status = ? ORDER BY created_at DESC",
                    (status,),
                ).fetchall()
        return [SandboxRecord.from_json(r[0]) for r in rows]

    def _exec(self, sql: str, args: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute(sql, args)

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute(sql, args).fetchall()]

    async def put_sandbox(self, record: SandboxRecord) -> None:
        await asyncio.to_thread(self._put, record)

    async def delete_sandbox(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM sandboxes WHERE id = ?", (sandbox_id,))

    async def put_snapshot(self, record: SnapshotRecord) -> None:
        await asyncio.to_thread(
            self._exec,
            "INSERT OR REPLACE INTO snapshots(id, created_at, data) VALUES (?, ?, ?)",
            (record.id, record.created_at, record.to_json()),
        )

    async def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        rows = await asyncio.to_thread(
            self._rows, "SELECT data FROM snapshots WHERE id = ?", (snapshot_id,)
        )
        return SnapshotRecord.from_json(rows[0]) if rows else None

    async def list_snapshots(self) -> list[SnapshotRecord]:
        rows = await asyncio.to_thread(
            self._rows, "SELECT data FROM snapshots ORDER BY created_at DESC"
        )
        return [SnapshotRecord.from_json(r) for r in rows]

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM snapshots WHERE id = ?", (snapshot_id,))

    async def put_volume(self, record: VolumeRecord) -> None:
        await asyncio.to_thread(
            self._exec,
            "INSERT OR REPLACE INTO volumes(id, tenant, name, created_at, data) "
            "VALUES (?, ?, ?, ?, ?)",
            (record.id, record.tenant, record.name, record.created_at, record.to_json()),
        )

    async def get_volume(self, volume_id: str, tenant: str | None = None) -> VolumeRecord | None:
        """By ID (``vol-…``, any tenant's), or by name: ``tenant``'s (None: any tenant's)."""
        sql = "SELECT data FROM volumes WHERE id = ? OR (name = ? AND tenant = ?)"
        args: tuple[object, ...] = (volume_id, volume_id, tenant)
        if tenant is None:
            sql, args = "SELECT data FROM volumes WHERE id = ? OR name = ?", (volume_id, volume_id)
        rows = await asyncio.to_thread(self._rows, sql, args)
        return VolumeRecord.from_json(rows[0]) if rows else None

    async def list_volumes(self) -> list[VolumeRecord]:
        rows = await asyncio.to_thread(self._rows, "SELECT data FROM volumes ORDER BY name")
        return [VolumeRecord.from_json(r) for r in rows]

    async def delete_volume(self, volume_id: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM volumes WHERE id = ?", (volume_id,))

    async def put_tenant(self, record: TenantRecord) -> None:
        await asyncio.to_thread(
            self._exec,
            "INSERT OR REPLACE INTO tenants(name, created_at, data) VALUES (?, ?, ?)",
            (record.name, record.created_at, record.to_json()),
        )

    async def get_tenant(self, name: str) -> TenantRecord | None:
        rows = await asyncio.to_thread(
            self._rows, "SELECT data FROM tenants WHERE name = ?", (name,)
        )
        return TenantRecord.from_json(rows[0]) if rows else None

    async def list_tenants(self) -> list[TenantRecord]:
        rows = await asyncio.to_thread(self._rows, "SELECT data FROM tenants ORDER BY name")
        return [TenantRecord.from_json(r) for r in rows]

    async def delete_tenant(self, name: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM tenants WHERE name = ?", (name,))

    async def put_key(self, record: KeyRecord) -> None:
        await asyncio.to_thread(
            self._exec,
            "INSERT OR REPLACE INTO keys(id, tenant, created_at, data) VALUES (?, ?, ?, ?)",
            (record.id, record.tenant, record.created_at, record.to_json()),
        )

    async def list_keys(self) -> list[KeyRecord]:
        rows = await asyncio.to_thread(self._rows, "SELECT data FROM keys ORDER BY created_at")
        return [KeyRecord.from_json(r) for r in rows]

    async def delete_key(self, key_id: str) -> None:
        await asyncio.to_thread(self._exec, "DELETE FROM keys WHERE id = ?", (key_id,))

    def _add_audit(self, records: Sequence[AuditRecord]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for r in records:
                    r.seq = 0
                    cur = self._db.execute(
                        "INSERT INTO audit(at, tenant, sandbox, data) VALUES (?, ?, ?, ?)",
                        (r.at, r.tenant, r.sandbox, r.to_json()),
                    )
                    r.seq = cur.lastrowid or 0
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    async def add_audit(self, records: Sequence[AuditRecord]) -> None:
        if records:
            await asyncio.to_thread(self._add_audit, records)

    def _list_audit(
        self, tenant: str | None, sandbox: str | None, since: float | None, after: int, limit: int
    ) -> list[AuditRecord]:
        where, args = ["seq > ?"], list[object]([after])
        for column, value in (("tenant = ?", tenant), ("sandbox = ?", sandbox), ("at >= ?", since)):
            if value is not None:
                where.append(column)
                args.append(value)
        with self._lock:
            rows = self._db.execute(
                f"SELECT seq, data FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                (*args, limit),
            ).fetchall()
        out = []
        for seq, data in rows:
            record = AuditRecord.from_json(data)
            record.seq = seq
            out.append(record)
        return out

    async def list_audit(
        self,
        *,
        tenant: str | None = None,
        sandbox: str | None = None,
        since: float | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        return await asyncio.to_thread(self._list_audit, tenant, sandbox, since, after, limit)

    def _prune_audit(self, before: float) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM audit WHERE at < ?", (before,)).rowcount

    async def prune_audit(self, before: float) -> int:
        return await asyncio.to_thread(self._prune_audit, before)

    def _add_usage(self, records: Sequence[UsageRecord]) -> None:
        columns = ", ".join(USAGE_FIELDS)
        marks = ", ".join("?" for _ in USAGE_FIELDS)
        adds = ", ".join(f"{f} = {f} + excluded.{f}" for f in USAGE_FIELDS)
        sql = (
            f"INSERT INTO usage(tenant, minute, {columns}) VALUES (?, ?, {marks}) "
            f"ON CONFLICT(tenant, minute) DO UPDATE SET {adds}"
        )
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for r in records:
                    self._db.execute(
                        sql, (r.tenant, r.minute, *(getattr(r, f) for f in USAGE_FIELDS))
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    async def add_usage(self, records: Sequence[UsageRecord]) -> None:
        if records:
            await asyncio.to_thread(self._add_usage, records)

    def _sum_usage(self, tenant: str | None, since: float, until: float) -> list[UsageRecord]:
        sums = ", ".join(f"SUM({f})" for f in USAGE_FIELDS)
        where = "minute >= ? AND minute < ?"
        args: list[object] = [int(since // 60 * 60), until]
        if tenant is not None:
            where += " AND tenant = ?"
            args.append(tenant)
        with self._lock:
            rows = self._db.execute(
                f"SELECT tenant, {sums} FROM usage WHERE {where} GROUP BY tenant ORDER BY tenant",
                args,
            ).fetchall()
        out = []
        for tenant_name, *sums in rows:
            figures = {f: v or 0 for f, v in zip(USAGE_FIELDS, sums, strict=True)}
            figures["execs"] = int(figures["execs"])
            out.append(UsageRecord(tenant_name, 0, **figures))
        return out

    async def sum_usage(
        self, *, tenant: str | None, since: float, until: float
    ) -> list[UsageRecord]:
        return await asyncio.to_thread(self._sum_usage, tenant, since, until)

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        return await asyncio.to_thread(self._get, sandbox_id)

    async def list_sandboxes(self, status: str | None = None) -> list[SandboxRecord]:
        return await asyncio.to_thread(self._list, status)

    async def close(self) -> None:
        with self._lock:
            self._db.close()
