# This file is generated from src/stockade/_async/snapshot.py by scripts/gen_sync.py.
# Do not edit it: edit the async original and run `python scripts/gen_sync.py`.
"""Memory snapshots: a sandbox's processes, memory and files, restorable any number of
times into new sandboxes."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import TYPE_CHECKING

from stockade import _base
from stockade._sync.client import Client, client_for
from stockade.models import SnapshotInfo

if TYPE_CHECKING:
    from stockade._sync.sandbox import Sandbox

__all__ = ["Snapshot"]


class Snapshot:
    """A memory snapshot (``sn-…``), made by :meth:`Sandbox.snapshot`.

    Restoring it gives a new sandbox whose processes carry on where they were: a Python
    REPL keeps its variables, a loop keeps counting, a server keeps its listening socket.
    Snapshots stay on the server (and survive its restarts) until deleted.

    Example::

        snap = sb.snapshot()
        copy = snap.restore()
        snap.delete()
    """

    def __init__(self, info: SnapshotInfo, client: Client) -> None:
        self.info = info
        self.client = client

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        return f"<Snapshot {self.id} of {self.info.sandbox_id}>"

    @classmethod
    def from_id(
        cls,
        snapshot_id: str,
        *,
        client: Client | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> Snapshot:
        """The snapshot with ID ``snapshot_id``; raises :class:`~stockade.NotFoundError`."""
        client = client_for(client, url, token)
        data = client.request("GET", _base.snapshot_path(snapshot_id))
        return cls(_base.parse(SnapshotInfo.from_json, data, "snapshot"), client)

    @classmethod
    def list(
        cls,
        *,
        sandbox_id: str | None = None,
        client: Client | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> builtins.list[Snapshot]:
        """Every snapshot on the server, newest first (or only those of ``sandbox_id``)."""
        client = client_for(client, url, token)
        params = {"sandbox_id": sandbox_id} if sandbox_id else None
        data = client.request("GET", "/v1/snapshots", params=params)
        items = _base.field_list(data, "snapshots", "snapshot list")
        return [cls(_base.parse(SnapshotInfo.from_json, i, "snapshot"), client) for i in items]

    def restore(
        self,
        *,
        timeout: float | None = None,
        tags: Mapping[str, str] | None = None,
        idle_timeout: float | None = None,
        on_timeout: str | None = None,
        auto_resume: bool = False,
    ) -> Sandbox:
        """A new sandbox restored from this snapshot (the same as
        ``Sandbox.create(snapshot=snap)``); the snapshot stays for more restores."""
        from stockade._sync.sandbox import Sandbox

        return Sandbox.create(
            snapshot=self, timeout=timeout, tags=tags, idle_timeout=idle_timeout,
            on_timeout=on_timeout, auto_resume=auto_resume, client=self.client,
        )  # fmt: skip

    def delete(self) -> None:
        """Delete the snapshot and free its disk space."""
        self.client.request("DELETE", _base.snapshot_path(self.id))
