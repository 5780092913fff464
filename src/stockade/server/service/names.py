"""Sandbox names: chosen by the caller, unique per tenant among its live sandboxes.

A name is held by a sandbox that is starting, running or paused; one that ended frees
it. Two creates with one name: the first to take the tenant's name lock makes its sandbox
while the second waits, then finds the name taken (409 naming the sandbox that holds
it). The locks are in memory: one server owns its store (state/store.py), so they cover
every create it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable

from ...errors import ConflictError, InvalidArgumentError, NotFoundError
from ..state.records import SandboxRecord, SandboxStatus
from ..state.store import Store

__all__ = ["NAME_PATTERN", "Names", "check_name", "holds_name"]

NAME_PATTERN = r"^[a-z0-9._-]{1,63}$"
_NAME = re.compile(NAME_PATTERN)


def check_name(name: str) -> str:
    """``name`` if it may name a sandbox, else InvalidArgumentError saying what is allowed.
    A name shaped like an ID (``sb-…``) is refused: a verb given either must never have
    to guess which one it got."""
    if not _NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"sandbox name {name[:80]!r} must be 1-63 characters of a-z, 0-9, '-', '_', '.'"
        )
    if name.startswith("sb-"):
        raise InvalidArgumentError(
            f"sandbox name {name!r} looks like a sandbox ID (sb-…); pick one not starting 'sb-'"
        )
    return name


def holds_name(record: SandboxRecord) -> bool:
    """Whether ``record``'s sandbox still holds its name (starting, running, paused)."""
    return record.name is not None and record.status in (
        SandboxStatus.STARTING, SandboxStatus.RUNNING, SandboxStatus.PAUSED,
    )  # fmt: skip


class Names:
    """Looks sandboxes up by name and keeps two creates from taking one name.

    Coroutine-safe within one event loop (the server's).
    """

    def __init__(self, store: Callable[[], Store]) -> None:
        # Read on use: the sandbox service's store (an unnamed create never needs it).
        self._store = store
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._waiting: dict[tuple[str, str], int] = {}

    async def find(self, tenant: str, name: str) -> SandboxRecord | None:
        """The tenant's live sandbox named ``name``, or None."""
        for record in await self._store().list_sandboxes():
            if record.tenant == tenant and record.name == name and holds_name(record):
                return record
        return None

    async def get(self, tenant: str, name: str) -> SandboxRecord:
        """The tenant's live sandbox named ``name``; NotFoundError otherwise (another
        tenant's name answers exactly as a missing one)."""
        record = await self.find(tenant, check_name(name))
        if record is None:
            raise NotFoundError(
                f"no running or paused sandbox is named {name!r} (ended sandboxes free "
                "their names; `stockade ls` lists the live ones)"
            )
        return record

    @contextlib.asynccontextmanager
    async def claim(self, tenant: str, name: str | None) -> AsyncIterator[None]:
        """Hold ``name`` for a create in the block: ConflictError if a live sandbox of
        ``tenant`` has it; a second claim of the same name waits for the first block to end
        (and then, the first sandbox made, fails). ``None``: an unnamed create, no lock."""
        if name is None:
            yield
            return
        key = (tenant, check_name(name))
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            async with lock:
                holder = await self.find(tenant, name)
                if holder is not None:
                    raise ConflictError(
                        f"sandbox name {name!r} is taken by {holder.id} ({holder.status}); "
                        "terminate it, pick another name, or use Sandbox.from_name()"
                    )
                yield
        finally:
            # The lock goes when nobody waits on it, so names tried once cost nothing.
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]
                self._locks.pop(key, None)
