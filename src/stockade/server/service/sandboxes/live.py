"""What the server holds in memory for each sandbox it knows, beside the stored record.

The record (state/records.py) is what survives a restart; a :class:`LiveSandbox` is what
this process alone knows about the sandbox: its lock, its agent link, the task watching
for its end, its network slot, its activity. One object per sandbox, so that everything
about one sandbox is found in one place and forgotten at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

from ...runtime.agent_link import AgentLink
from ...runtime.output_log import OutputLog

__all__ = ["Background", "LiveSandbox", "LiveSandboxes"]


@dataclass(eq=False)
class LiveSandbox:
    """One sandbox as this server process holds it."""

    id: str
    # Its tenant, once this process has seen its record: the owner check of every request
    # that names it is then a lookup here, not a database read.
    tenant: str | None = None
    # Serialises the sandbox's transitions (create, pause, resume, terminate, its end);
    # reads of the record need no lock.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # Launch: the network slot it holds (live or being cleaned up), its agent link and
    # the copier of its output into the capped output.log.
    slot: int | None = None
    link: AgentLink | None = None
    link_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Its FIFOs were made by this process and only it used them: no stale bytes to clear.
    fresh: bool = False
    output: OutputLog | None = None

    # Exits: the task waiting for the runsc process to end, `runsc wait`'s answer, and
    # the entrypoint's exit code as the agent reported it.
    watcher: asyncio.Task[None] | None = None
    exit_code: asyncio.Future[int | None] | None = None
    entry_code: int | None = None
    # OOM kills counted when it ended (runsc delete removes the cgroup that counts them).
    final_ooms: int = 0

    # Activity and lifetime: the last exec, file or API activity (time.time(); in memory
    # only, so after a restart a sandbox counts as active from the start), live exec
    # sessions (one keeps it from idling), its idle_timeout as the timeout loop last saw
    # it, and whether that loop is applying its deadline now.
    last_active: float | None = None
    busy: int = 0
    idle_limit: float = 0.0
    expiring: bool = False


class LiveSandboxes:
    """Every :class:`LiveSandbox` of this process, by sandbox ID.

    An entry is made on first use and kept until the sandbox's record is purged: a lock
    must outlive every transition that may still wait on it.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, LiveSandbox] = {}

    def __getitem__(self, sandbox_id: str) -> LiveSandbox:
        live = self._by_id.get(sandbox_id)
        if live is None:
            live = self._by_id[sandbox_id] = LiveSandbox(sandbox_id)
        return live

    def get(self, sandbox_id: str) -> LiveSandbox | None:
        """The sandbox's entry if it has one; makes none."""
        return self._by_id.get(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        self._by_id.pop(sandbox_id, None)

    def __iter__(self) -> Iterator[LiveSandbox]:
        return iter(list(self._by_id.values()))

    def watched(self) -> list[str]:
        """The sandboxes whose end is being watched: those running here now."""
        return [live.id for live in self._by_id.values() if live.watcher is not None]


class Background:
    """Fire-and-forget tasks, held so they are not garbage-collected mid-flight, and
    cancelled together when the server stops."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks)
