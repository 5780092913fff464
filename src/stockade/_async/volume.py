"""Named persistent volumes: find or create them by name, list and delete them."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from stockade import _base
from stockade._async.client import AsyncClient, client_for
from stockade.errors import InvalidArgumentError

__all__ = ["AsyncVolume"]


def _path(name_or_id: str) -> str:
    if not name_or_id or not isinstance(name_or_id, str):
        raise InvalidArgumentError(
            f"a volume is named by a string such as 'data' or 'vol-…', got {name_or_id!r}"
        )
    return f"/v1/volumes/{quote(name_or_id, safe='')}"


def _fields(data: Any) -> dict[str, Any]:
    """The constructor arguments for a volume from the API's JSON (strict about types)."""
    if not isinstance(data, Mapping):
        raise TypeError(f"a volume must be an object, got {data!r}")
    for key in ("id", "name"):
        if not isinstance(data[key], str):
            raise TypeError(f"{key} must be a string, got {data[key]!r}")
    size = data["size"]
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an integer, got {size!r}")
    created = data.get("created_at")
    if created is not None and not isinstance(created, str):
        raise TypeError(f"created_at must be a string, got {created!r}")
    used_by = data.get("used_by") or []
    if not isinstance(used_by, list) or not all(isinstance(s, str) for s in used_by):
        raise TypeError(f"used_by must be a list of strings, got {used_by!r}")
    return {
        "id": data["id"],
        "name": data["name"],
        "size": size,
        # fromisoformat reads the API's "...Z" suffix and gives an aware UTC time.
        "created_at": datetime.fromisoformat(created) if created else None,
        "used_by": tuple(used_by),
    }


class AsyncVolume:
    """A named persistent volume (``vol-…``) on a Stockade server.

    A volume outlives the sandboxes that mount it and the server's restarts, and several
    sandboxes may mount it at once (each sees the others' writes). Its ``size`` (MiB) is the
    most it may hold: past it, writes fail with ``ENOSPC`` inside the sandbox. Get one with
    :meth:`from_name`; mount it with ``AsyncSandbox.create(volumes={"/data": vol})``.

    ``used_by`` lists the sandboxes that had it mounted when the server described it.

    Example::

        from stockade import AsyncSandbox, AsyncVolume

        vol = await AsyncVolume.from_name("data", create_if_missing=True)
        async with await AsyncSandbox.create(volumes={"/data": vol}) as sb:
            await sb.run("echo hello > /data/greeting")
    """

    def __init__(
        self,
        *,
        id: str,
        name: str,
        size: int,
        created_at: datetime | None,
        used_by: tuple[str, ...] = (),
        client: AsyncClient,
    ) -> None:
        self.id = id
        self.name = name
        self.size = size
        self.created_at = created_at
        self.used_by = used_by
        self.client = client

    def __repr__(self) -> str:
        return f"<AsyncVolume {self.name} {self.id} {self.size} MiB>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AsyncVolume):
            return NotImplemented
        return self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id)

    @classmethod
    def _parse(cls, data: Any, client: AsyncClient) -> AsyncVolume:
        return cls(**_base.parse(_fields, data, "volume"), client=client)

    def to_json(self) -> dict[str, Any]:
        """The volume as the API spells it."""
        created = self.created_at
        return {
            "id": self.id,
            "name": self.name,
            "size": self.size,
            "created_at": (
                created.isoformat(timespec="microseconds").replace("+00:00", "Z")
                if created
                else None
            ),
            "used_by": list(self.used_by),
        }

    @classmethod
    async def from_name(
        cls,
        name: str,
        *,
        create_if_missing: bool = False,
        size: int | None = None,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> AsyncVolume:
        """The volume called ``name`` (or with ID ``name``); raises
        :class:`~stockade.NotFoundError` unless ``create_if_missing``, which makes an empty
        one of ``size`` MiB (server default: 1024). An existing volume keeps its size.

        Example::

            vol = await AsyncVolume.from_name("model-cache", create_if_missing=True, size=4096)
        """
        client = client_for(client, url, token)
        if not create_if_missing:
            if size is not None:
                raise InvalidArgumentError(
                    "size= only applies to a new volume; pass create_if_missing=True with it"
                )
            return cls._parse(await client.request("GET", _path(name)), client)
        body: dict[str, Any] = {"name": name, "create_if_missing": True}
        if size is not None:
            body["size"] = size
        return cls._parse(await client.request("POST", "/v1/volumes", json=body), client)

    @classmethod
    async def create(
        cls,
        name: str,
        *,
        size: int | None = None,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> AsyncVolume:
        """A new, empty volume of ``size`` MiB (server default: 1024); raises
        :class:`~stockade.ConflictError` if the name is taken.

        Example::

            vol = await AsyncVolume.create("scratch", size=256)
        """
        client = client_for(client, url, token)
        body: dict[str, Any] = {"name": name}
        if size is not None:
            body["size"] = size
        return cls._parse(await client.request("POST", "/v1/volumes", json=body), client)

    @classmethod
    async def list(
        cls,
        *,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> builtins.list[AsyncVolume]:
        """Every volume on the server, by name.

        Example::

            for vol in await AsyncVolume.list():
                print(vol.name, vol.size, vol.used_by)
        """
        client = client_for(client, url, token)
        data = await client.request("GET", "/v1/volumes")
        return [
            cls._parse(item, client) for item in _base.field_list(data, "volumes", "volume list")
        ]

    @classmethod
    async def delete(
        cls,
        volume: str | _base.HasId,
        *,
        client: AsyncClient | None = None,
        url: str | None = None,
        token: str | None = None,
    ) -> None:
        """Delete a volume (by name, ID or object) and its files, for good. Raises
        :class:`~stockade.ConflictError`, naming them, while sandboxes have it mounted, and
        :class:`~stockade.NotFoundError` if it does not exist.

        Example::

            await AsyncVolume.delete("scratch")
        """
        client = client_for(client, url, token)
        await client.request("DELETE", _path(_base.ref_id(volume)))
