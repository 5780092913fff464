"""A directory listing is bounded on the server: a directory of 100 000 long names that are
not UTF-8 comes back cut, saying so, and the rest is never taken in."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from stockade.server.agent.protocol import FrameType, encode
from stockade.server.runtime.agent_link import AgentLink
from stockade.server.service import files
from stockade.server.service.files import FileService
from tests.unit.server.runtime.test_agent_link_bounds import FakeAgent

PART = 896 * 1024  # the agent starts a new part past this much JSON


def _entry(i: int) -> dict[str, Any]:
    raw = b"%06d-" % i + bytes(range(0x80, 0x80 + 120)) * 2  # 247 bytes, none valid UTF-8
    name = raw.decode("utf-8", "surrogateescape")
    return {"path": f"/d/{name}", "name": name, "type": "file", "size": 0, "mode": 420,
            "mtime": 0.0, "target": None}  # fmt: skip


class _Sandboxes:
    def __init__(self, link: AgentLink) -> None:
        self._link = link

    async def ready_for_use(self, sandbox_id: str) -> Any:
        return SimpleNamespace(disk=1024)

    async def link(self, sandbox_id: str) -> AgentLink:
        return self._link


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[FakeAgent, AgentLink, FileService]]:
    agent = FakeAgent(tmp_path)
    agent.start()
    errors: list[str] = []
    link = AgentLink("sb-1", agent.in_path, agent.out_path, on_protocol_error=errors.append)
    await link.connect(resync=False)
    service = FileService(cast(Any, SimpleNamespace(sandboxes=_Sandboxes(link))))
    try:
        yield agent, link, service
    finally:
        assert errors == []  # a cut listing is no protocol error
        link.close()
        agent.close()


async def _serve_listing(agent: FakeAgent, count: int) -> int:
    """Answer the FILE_LIST like the agent: parts of entries in order, until CLOSE.
    Returns the bytes sent."""
    for _ in range(10_000):
        if any(f.type == FrameType.FILE_LIST for f in agent.requests):
            break
        await asyncio.sleep(0.001)
    channel = agent.request(FrameType.FILE_LIST).channel
    sent = 0
    i = 0
    while i < count:
        if any(f.type == FrameType.CLOSE and f.channel == channel for f in agent.requests):
            break
        batch: list[str] = []
        size = 0
        while i < count and size < PART:
            item = json.dumps(_entry(i))
            batch.append(item)
            size += len(item) + 1
            i += 1
        ftype = FrameType.RESULT if i == count else FrameType.DATA
        payload = ('{"entries":[' + ",".join(batch) + "]}").encode()
        await agent.send(encode(ftype, channel, payload))
        sent += len(payload)
        await asyncio.sleep(0)
    return sent


async def test_a_huge_listing_is_cut_and_says_so(
    setup: tuple[FakeAgent, AgentLink, FileService],
) -> None:
    agent, link, service = setup
    count = 100_000
    server = asyncio.create_task(_serve_listing(agent, count))
    listing = await service.listing("sb-1", "/d")
    sent = await asyncio.wait_for(server, 30)
    assert listing.truncated
    whole = count * len(json.dumps(_entry(0)))
    assert sent < whole // 10  # the agent was told to stop long before the end
    taken = len(listing.entries) * len(json.dumps(_entry(0)))
    assert taken <= files.LIST_MAX_BYTES + PART + 65536
    # The first entries by name, in order, bytes intact.
    names = [e.name for e in listing.entries]
    assert names == sorted(names) and names[0] == _entry(0)["name"]
    assert names[0].encode("utf-8", "surrogateescape").startswith(b"000000-\x80\x81")
    assert any(f.type == FrameType.CLOSE for f in agent.requests)
    assert not link.dead


async def test_the_entry_count_is_bounded_too(
    setup: tuple[FakeAgent, AgentLink, FileService], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, _link, service = setup
    monkeypatch.setattr(files, "LIST_MAX_ENTRIES", 1000)
    server = asyncio.create_task(_serve_listing(agent, 5000))
    listing = await service.listing("sb-1", "/d")
    await asyncio.wait_for(server, 30)
    assert listing.truncated and len(listing.entries) == 1000


async def test_a_listing_in_parts_within_the_bounds_is_whole(
    setup: tuple[FakeAgent, AgentLink, FileService],
) -> None:
    agent, _link, service = setup
    server = asyncio.create_task(_serve_listing(agent, 1000))  # three parts
    listing = await service.listing("sb-1", "/d")
    await asyncio.wait_for(server, 30)
    assert not listing.truncated and len(listing.entries) == 1000
    assert [e.name for e in listing.entries] == [_entry(i)["name"] for i in range(1000)]
