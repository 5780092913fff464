"""Warm pools against real runsc: handed out fresh, configured like a cold create, refilled."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockade import Client, Sandbox

from .conftest import LiveServer
from .helpers import force_cleanup, runsc_binary, wait_for


@pytest.fixture(scope="module")
def pooled() -> Iterator[LiveServer]:
    tmp = Path(tempfile.mkdtemp(prefix="stockade-pool-test-"))
    live = LiveServer(
        data_dir=tmp / "data",
        token="sk_test_" + secrets.token_hex(8),
        extra_args=["--pool", "debian=2"],
    )
    live.start()
    try:
        yield live
    finally:
        live.stop()
        force_cleanup(tmp, live.data_dir)


@pytest.fixture
def client(pooled: LiveServer) -> Iterator[Client]:
    with Client(pooled.url, pooled.token) as c:
        yield c


def _pool(live: LiveServer) -> dict[str, Any]:
    pools = httpx.get(f"{live.url}/v1/pools", headers=live.headers).json()["pools"]
    return next(p for p in pools if p["image"] == "debian")


def _wait_ready(live: LiveServer, n: int) -> None:
    wait_for(lambda: True if _pool(live)["ready"] == n else None, timeout=60, what=f"{n} ready")


def _booted(live: LiveServer) -> set[str]:
    """The IDs of the sandboxes runsc runs for the server now, pooled ones included (the
    API lists no pooled sandbox): one created from the pool was among them before."""
    listed = subprocess.run(
        [runsc_binary(), f"--root={live.data_dir / 'runsc'}", "list", "--format=json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return {str(item["id"]) for item in json.loads(listed.stdout or "[]") or []}


def test_a_pooled_sandbox_is_configured_like_a_cold_one(pooled: LiveServer, client: Client) -> None:
    _wait_ready(pooled, 2)
    waiting = _booted(pooled)
    sb = Sandbox.create(
        image="debian", env={"GREETING": "hi"}, tags={"who": "pool-test"}, workdir="/work/dir",
        timeout=4, client=client,
    )  # fmt: skip
    try:
        assert sb.id in waiting, (sb.id, waiting)  # it came from the pool
        r = sb.run('echo "$GREETING $(pwd)"')
        assert r.stdout == "hi /work/dir\n"
        info = sb.info()
        assert info.tags == {"who": "pool-test"} and info.timeout == 4
        assert [s.id for s in Sandbox.list(tags={"who": "pool-test"}, client=client)] == [sb.id]
        # Its lifetime starts when it is handed out, and is honoured.
        ended = wait_for(
            lambda: i if (i := sb.info()).status != "running" else None, timeout=10, what="end"
        )
        assert ended.reason == "timeout"
    finally:
        sb.terminate()
    _wait_ready(pooled, 2)  # refilled in the background


def test_a_pooled_sandbox_gets_the_callers_network(pooled: LiveServer, client: Client) -> None:
    _wait_ready(pooled, 2)
    with Sandbox.create(
        image="debian", block_network=True, ports=[8080], client=client, timeout=60
    ) as sb:
        info = sb.info()
        assert info.network is not None and info.network.mode == "blocked" and info.network.ip
        assert [p.port for p in info.ports] == [8080] and info.access_token
        # The host refuses everything it sends (the pool booted it with the default policy).
        r = sb.run(["bash", "-c", "exec 3<>/dev/tcp/203.0.113.1/80 && echo connected"])
        assert r.exit_code != 0 and "connected" not in r.stdout
    with Sandbox.create(
        image="debian", outbound_cidr_allowlist=["203.0.113.0/24"], client=client, timeout=60
    ) as sb:
        assert sb.last_info.network is not None
        assert sb.last_info.network.outbound_cidr_allowlist == ["203.0.113.0/24"]


def test_pooled_sandboxes_are_never_reused(pooled: LiveServer, client: Client) -> None:
    seen: set[str] = set()
    for _ in range(4):
        _wait_ready(pooled, 2)
        waiting = _booted(pooled)
        sb = Sandbox.create(image="debian", client=client)
        try:
            assert sb.id in waiting, "not from the pool: a cold sandbox is fresh anyway"
            assert sb.id not in seen
            seen.add(sb.id)
            assert not sb.files.exists("/root/mark"), (
                "a pooled sandbox carried a previous user's file"
            )
            sb.files.write("/root/mark", "used")
        finally:
            sb.terminate()


def test_pool_sandboxes_are_not_listed_and_other_shapes_start_cold(
    pooled: LiveServer, client: Client
) -> None:
    _wait_ready(pooled, 2)
    assert Sandbox.list(status="running", client=client) == []
    waiting = _booted(pooled)
    sb = Sandbox.create(image="debian", memory=256, client=client)
    try:
        assert sb.info().memory == 256
        assert sb.id not in waiting  # booted for this create, not taken from the pool
        assert _pool(pooled)["ready"] == 2
        assert sb.run("echo cold").stdout == "cold\n"
    finally:
        sb.terminate()


def test_resizing_a_pool_through_the_api(pooled: LiveServer) -> None:
    with httpx.Client(base_url=pooled.url, headers=pooled.headers, timeout=60) as http:
        bad = http.put("/v1/pools/debian", json={"size": 1000})
        assert bad.status_code == 422 and "allowed" in bad.json()["error"]["message"]
        assert http.put("/v1/pools/nope", json={"size": 1}).status_code == 404
        assert http.put("/v1/pools/debian", json={"size": 0}).json()["size"] == 0
        _wait_ready(pooled, 0)
        assert http.put("/v1/pools/debian", json={"size": 2}).json()["size"] == 2
        _wait_ready(pooled, 2)


def test_pooled_sandboxes_survive_a_restart(pooled: LiveServer) -> None:
    _wait_ready(pooled, 2)
    waiting = _booted(pooled)
    pooled.restart(signal.SIGKILL)
    # The new server finds the same two, still fresh, and hands them out.
    assert _pool(pooled)["ready"] == 2
    with Client(pooled.url, pooled.token) as c:
        sb = Sandbox.create(image="debian", client=c)
        try:
            assert sb.id in waiting
            assert sb.run("echo after-restart").stdout == "after-restart\n"
        finally:
            sb.terminate()
