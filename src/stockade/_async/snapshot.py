"""Memory snapshots: a sandbox's processes, memory and files, restorable any number of
times into new sandboxes."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import TYPE_CHECKING

from stockade import _base
from stockade._async.client import AsyncClient, client_for
from stockade.models import SnapshotInfo

if TYPE_CHECKING:
    from stockade._async.sandbox import AsyncSandbox

__all__ = ["AsyncSnapshot"]


class AsyncSnapshot:
    """A memory snapshot (``sn-…``), made by :meth:`AsyncSandbox.snapshot`.

    Restoring it gives a new sandbox whose processes carry on where they were: a Python
    REPL keeps its variables, a loop keeps counting, a server keeps its listening socket.
    Snapshots stay on the server (and survive its restarts) until deleted.

    Example::

        snap = await sb.snapshot()
        copy = await snap.restore()
        await snap.delete()
    """

    def __init__(self, info: SnapshotInfo, client: AsyncClient) -> None:
        self.info = info
        self.client = client

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        return f"<Snapshot {self.id} of {self.info.sandbox_id}>"

    @classmethod
    async def from_id(
        cls,
        snapshot_id: str,
        *,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> AsyncSnapshot:
        """The snapshot with ID ``snapshot_id``; raises :class:`~stockade.NotFoundError`."""
        client = client_for(client, url, token)
        data = await client.request("GET", _base.snapshot_path(snapshot_id))
        return cls(_base.parse(SnapshotInfo.from_json, data, "snapshot"), client)

    @classmethod
    async def list(
        cls,
        *,
        sandbox_id: str | None = None,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> builtins.list[AsyncSnapshot]:
        """Every snapshot on the server, newest first (or only those of ``sandbox_id``)."""
        client = client_for(client, url, token)
        params = {"sandbox_id": sandbox_id} if sandbox_id else None
        data = await client.request("GET", "/v1/snapshots", params=params)
        items = _base.field_list(data, "snapshots", "snapshot list")
        return [cls(_base.parse(SnapshotInfo.from_json, i, "snapshot"), client) for i in items]

    async def restore(
        self,
        *,
        timeout: float | None = None,
        tags: Mapping[str, str] | None = None,
        idle_timeout: float | None = None,
        on_timeout: str | None = None,
        auto_resume: bool = False,
    ) -> AsyncSandbox:
        """A new sandbox restored from this snapshot (the same as
        ``AsyncSandbox.create(snapshot=snap)``); the snapshot stays for more restores."""
        from stockade._async.sandbox import AsyncSandbox

        return await AsyncSandbox.create(
            snapshot=self, timeout=timeout, tags=tags, idle_timeout=idle_timeout,
            on_timeout=on_timeout, auto_resume=auto_resume, client=self.client,
        )  # fmt: skip

    async def delete(self) -> None:
        """Delete the snapshot and free its disk space."""
        await self.client.request("DELETE", _base.snapshot_path(self.id))
