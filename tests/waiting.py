"""Waiting for a condition in tests: the one deadline loop, sync and async."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["wait_for", "wait_for_async"]

_T = TypeVar("_T")


def wait_for(
    probe: Callable[[], _T | None], *, timeout: float, interval: float = 0.1, what: str = ""
) -> _T:
    """Call ``probe`` until it returns something other than None (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or probe}")
        time.sleep(interval)


async def wait_for_async(
    probe: Callable[[], Awaitable[_T | None]],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "",
) -> _T:
    """Await ``probe()`` until it gives something other than None (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or probe}")
        await asyncio.sleep(interval)
