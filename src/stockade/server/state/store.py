"""Persistence of server state behind one interface.

:class:`Store` is what the service layer uses; :class:`SQLiteStore` is the embedded default
(one file in the data directory). A multi-host deployment plugs in another implementation
of the same protocol.

Concurrency: SQLiteStore is safe to use from the event loop; each call runs on a worker
thread under one lock, because a sqlite3 connection must not be used concurrently.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from .records import SandboxRecord

__all__ = ["SQLiteStore", "Store"]


class Store(Protocol):
    async def put_sandbox(self, record: SandboxRecord) -> None: ...
    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None: ...
    async def list_sandboxes(self, status: str | None = None) -> list[SandboxRecord]: ...
    async def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sandboxes (
    id         TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_status ON sandboxes(status);
"""


class SQLiteStore:
    """SQLite in WAL mode; every write is committed before the call returns."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (what restart safety needs); only a
        # power loss can drop the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

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

    async def put_sandbox(self, record: SandboxRecord) -> None:
        await asyncio.to_thread(self._put, record)

    async def get_sandbox(self, sandbox_id: str) -> SandboxRecord | None:
        return await asyncio.to_thread(self._get, sandbox_id)

    async def list_sandboxes(self, status: str | None = None) -> list[SandboxRecord]:
        return await asyncio.to_thread(self._list, status)

    async def close(self) -> None:
        with self._lock:
            self._db.close()
