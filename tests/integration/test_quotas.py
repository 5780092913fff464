"""Tenants' quotas against a real server and real sandboxes: each limit refuses with 429
and a message naming it, nothing is left behind by a refusal, and concurrent creates
never slip under a limit together."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from stockade import (
    AsyncClient,
    AsyncSandbox,
    Client,
    QuotaExceededError,
    RateLimitedError,
    Sandbox,
)

from .conftest import LiveServer
from .helpers import unique, wait_for

pytestmark = pytest.mark.runsc

SMALL: dict[str, Any] = {"image": "debian", "memory": 128, "timeout": 120}


@pytest.fixture
def admin(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
        yield http


def _tenant(admin: httpx.Client, **quotas: float) -> str:
    """A new tenant with ``quotas``, and a user key of it."""
    name = unique("tq")
    made = admin.post("/v1/tenants", json={"name": name, **quotas})
    assert made.status_code == 201, made.text
    key = admin.post("/v1/keys", json={"tenant": name, "role": "user"})
    assert key.status_code == 201, key.text
    return str(key.json()["key"])


def _live(client: Client) -> list[str]:
    return [s.id for s in Sandbox.list(status="running", client=client)]


def test_max_sandboxes_refuses_the_next_until_one_ends(
    server: LiveServer, admin: httpx.Client
) -> None:
    key = _tenant(admin, max_sandboxes=1)
    with Client(server.url, key) as client:
        first = Sandbox.create(**SMALL, client=client)
        try:
            with pytest.raises(QuotaExceededError) as info:
                Sandbox.create(**SMALL, client=client)
            assert info.value.status == 429 and info.value.code == "quota_exceeded"
            assert "has 1 live sandboxes of max_sandboxes=1" in info.value.message
            assert "--max-sandboxes N" in info.value.message
            assert _live(client) == [first.id]  # the refused one left nothing
        finally:
            first.terminate()
        second = Sandbox.create(**SMALL, client=client)
        second.terminate()


def test_max_memory_and_max_timeout(server: LiveServer, admin: httpx.Client) -> None:
    key = _tenant(admin, max_memory=200, max_timeout=300)
    with Client(server.url, key) as client:
        with pytest.raises(QuotaExceededError, match="use 0 MiB of max_memory=200 MiB"):
            Sandbox.create(image="debian", memory=256, timeout=60, client=client)
        with pytest.raises(QuotaExceededError, match="timeout=301 is longer than tenant"):
            Sandbox.create(**{**SMALL, "timeout": 301}, client=client)
        sb = Sandbox.create(**SMALL, client=client)
        try:
            with pytest.raises(QuotaExceededError, match="max_memory=200"):
                Sandbox.create(**SMALL, client=client)  # 128 + 128
            with pytest.raises(QuotaExceededError, match="max_timeout=300"):
                sb.set_timeout(600)
            assert sb.set_timeout(300).timeout == 300
            # A fork is a create: it counts too, and is refused before any capture.
            with pytest.raises(QuotaExceededError, match="max_memory=200"):
                sb.fork()
            assert _live(client) == [sb.id]
        finally:
            sb.terminate()
        assert _live(client) == []


def test_creates_per_minute_answers_rate_limited_with_retry_after(
    server: LiveServer, admin: httpx.Client
) -> None:
    key = _tenant(admin, creates_per_minute=2)
    made: list[Sandbox] = []
    with Client(server.url, key) as client:
        try:
            made += [Sandbox.create(**SMALL, client=client) for _ in range(2)]
            started = time.monotonic()
            with pytest.raises(RateLimitedError) as info:
                Sandbox.create(**SMALL, client=client)
            assert info.value.status == 429 and info.value.code == "rate_limited"
            assert info.value.retry_after is not None
            # A token every 30 s; the two creates took some of that already.
            assert 1 <= info.value.retry_after <= 30 + (time.monotonic() - started)
            assert "creates_per_minute=2" in info.value.message
            raw = httpx.post(
                f"{server.url}/v1/sandboxes", json=SMALL,
                headers={"Authorization": f"Bearer {key}"}, timeout=60,
            )  # fmt: skip
            assert raw.status_code == 429 and raw.json()["error"]["code"] == "rate_limited"
            assert raw.headers["retry-after"].isdigit() and int(raw.headers["retry-after"]) >= 1
        finally:
            for sb in made:
                sb.terminate()


async def test_concurrent_creates_leave_exactly_the_limit(
    server: LiveServer, admin: httpx.Client
) -> None:
    key = _tenant(admin, max_sandboxes=2)
    async with AsyncClient(server.url, key) as client:
        results = await asyncio.gather(
            *(AsyncSandbox.create(**SMALL, client=client) for _ in range(4)),
            return_exceptions=True,
        )
        made = [r for r in results if isinstance(r, AsyncSandbox)]
        try:
            refused = [r for r in results if isinstance(r, QuotaExceededError)]
            assert (len(made), len(refused)) == (2, 2), results
            listed = await AsyncSandbox.list(status="running", client=client)
            assert sorted(s.id for s in listed) == sorted(s.id for s in made)
        finally:
            for sb in made:
                await sb.terminate()


def test_a_warm_pool_never_takes_a_tenant_past_its_quota(
    server: LiveServer, admin: httpx.Client
) -> None:
    key = _tenant(admin, max_sandboxes=1)
    shape = {"cpu": 1.0, "memory": 128}  # a shape no other test's create asks for

    def ready() -> int:
        pools = admin.get("/v1/pools").json()["pools"]
        return int(next((p["ready"] for p in pools if p["image"] == "debian"), 0))

    assert admin.put("/v1/pools/debian", json={"size": 1, **shape}).status_code == 200
    try:
        wait_for(lambda: ready() == 1 or None, timeout=120, what="a pooled sandbox")
        with Client(server.url, key) as client:
            first = Sandbox.create(**SMALL, client=client)
            try:
                wait_for(lambda: ready() == 1 or None, timeout=120, what="the pool refilled")
                with pytest.raises(QuotaExceededError, match="max_sandboxes=1"):
                    Sandbox.create(**SMALL, client=client)
                # Refused before the pool was asked: its sandbox still waits there.
                assert ready() == 1 and _live(client) == [first.id]
            finally:
                first.terminate()
            Sandbox.create(**SMALL, client=client).terminate()
    finally:
        admin.put("/v1/pools/debian", json={"size": 0, **shape})


def test_max_disk_refuses_a_volume_that_does_not_fit(
    server: LiveServer, admin: httpx.Client
) -> None:
    key = _tenant(admin, max_disk=100)
    with Client(server.url, key) as client:
        with pytest.raises(QuotaExceededError, match=r"volume '.*' needs 200 MiB more"):
            client.request("POST", "/v1/volumes", json={"name": unique("vol"), "size": 200})
        name = unique("vol")
        client.request("POST", "/v1/volumes", json={"name": name, "size": 64})
        try:
            with pytest.raises(QuotaExceededError, match="use 64 MiB of max_disk=100"):
                client.request("POST", "/v1/volumes", json={"name": unique("vol"), "size": 64})
        finally:
            client.request("DELETE", f"/v1/volumes/{name}")
