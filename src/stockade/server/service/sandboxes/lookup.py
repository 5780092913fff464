"""Reading a sandbox's record as callers may see it, and saying why one cannot be used."""

from __future__ import annotations

from ....errors import (
    NotFoundError,
    SandboxPausedError,
    SandboxStartingError,
    SandboxTerminatedError,
    StockadeError,
)
from ...state.records import SandboxRecord, SandboxStatus
from ...state.store import Store

__all__ = ["describe_end", "get", "get_owned", "get_running", "not_found", "not_running"]


def not_found(sandbox_id: str) -> NotFoundError:
    return NotFoundError(f"sandbox {sandbox_id} does not exist; `stockade ls` lists the sandboxes")


async def get(store: Store, sandbox_id: str) -> SandboxRecord:
    """A sandbox's record as callers may see it (pooled ones belong to nobody yet)."""
    record = await store.get_sandbox(sandbox_id)
    if record is None or record.status == SandboxStatus.POOLED:
        raise not_found(sandbox_id)
    return record


async def get_owned(store: Store, sandbox_id: str, tenant: str) -> SandboxRecord:
    """The sandbox's record if ``tenant`` owns it; another tenant's answers exactly as a
    sandbox that does not exist."""
    record = await store.get_sandbox(sandbox_id)
    if record is not None and record.tenant != tenant:
        record = None
    if record is None or record.status == SandboxStatus.POOLED:
        raise not_found(sandbox_id)
    return record


async def get_running(store: Store, sandbox_id: str) -> SandboxRecord:
    """The record of a running sandbox, or an error saying why it is not running."""
    record = await get(store, sandbox_id)
    if record.status != SandboxStatus.RUNNING:
        raise not_running(sandbox_id, record)
    return record


def not_running(sandbox_id: str, record: SandboxRecord | None) -> StockadeError:
    """The error for a call that needs ``sandbox_id`` running, given its record."""
    if record is None or record.status == SandboxStatus.POOLED:
        return NotFoundError(
            f"sandbox {sandbox_id} does not exist; `stockade ls` lists the sandboxes"
        )
    if record.status == SandboxStatus.STARTING:
        return SandboxStartingError(
            f"sandbox {sandbox_id} is still starting; wait for its create to return, then "
            "try again"
        )
    if record.status == SandboxStatus.PAUSED:
        return SandboxPausedError(
            f"sandbox {sandbox_id} is paused; resume it first (sb.resume() or "
            f"`stockade resume {sandbox_id}`), or create it with auto_resume=True"
        )
    return SandboxTerminatedError(describe_end(record))


def describe_end(record: SandboxRecord) -> str:
    """Why a sandbox is not running, in words that suggest what to do next."""
    base = f"sandbox {record.id} was {record.status}"
    if record.reason:
        base += f" ({record.reason})"
    if record.message:
        base += f": {record.message}"
    return base + "; create a new sandbox to continue"
