"""The audit log against a real server and real sandboxes: every mutating call and every
exec (over HTTP and the WebSocket) leaves an entry with who, what, where, how long and how
it ended; a key reads only its own tenant's; the CLI prints and follows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockade import Client, Sandbox

from .conftest import LiveServer
from .helpers import unique

pytestmark = pytest.mark.runsc

STOCKADE = Path(sys.executable).parent / "stockade"


@pytest.fixture
def admin(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
        yield http


def _tenant_key(admin: httpx.Client, role: str = "user") -> tuple[str, str, str]:
    """A new tenant and a key of it: (tenant, key ID, key)."""
    name = unique("ta")
    assert admin.post("/v1/tenants", json={"name": name}).status_code == 201
    made = admin.post("/v1/keys", json={"tenant": name, "role": role})
    assert made.status_code == 201, made.text
    return name, made.json()["id"], made.json()["key"]


def _entries(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    got = http.get("/v1/audit", params={"limit": 1000, **params})
    assert got.status_code == 200, got.text
    entries: list[dict[str, Any]] = got.json()["entries"]
    return entries


def test_calls_and_execs_are_recorded_with_who_what_and_how(
    server: LiveServer, admin: httpx.Client
) -> None:
    tenant, key_id, key = _tenant_key(admin)
    with Client(server.url, key) as client:
        sb = Sandbox.create(image="debian", memory=128, timeout=120, client=client)
        try:
            r = sb.run("cat; printf out; exit 3", stdin="hello", workdir="/tmp")
            assert (r.exit_code, r.stdout) == (3, "helloout")
            proc = sb.exec("sh", "-c", "printf 12345; exit 0")  # the WebSocket
            assert proc.stdout.read() == "12345" and proc.wait() == 0
            sb.files.write("/tmp/f.txt", b"x" * 1000)
        finally:
            sb.terminate()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as mine:
        entries = _entries(mine, sandbox=sb.id)
    assert all(e["tenant"] == tenant and e["key_id"] == key_id for e in entries), entries
    assert all(e["request_id"] and e["request_id"].startswith("req-") for e in entries)
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    create = [e for e in entries if e["kind"] == "api" and e["method"] == "POST"]
    assert create[0]["path"] == "/v1/sandboxes" and create[0]["status"] == 201
    execs = [e for e in entries if e["kind"] == "exec"]
    http_exec = next(e for e in execs if e["method"] == "HTTP")
    assert http_exec["argv"] == ["sh", "-c", "cat; printf out; exit 3"]
    assert (http_exec["workdir"], http_exec["user"]) == ("/tmp", "root")
    assert (http_exec["exit_code"], http_exec["bytes_in"], http_exec["bytes_out"]) == (3, 5, 8)
    assert 0 < http_exec["duration"] < 60
    ws_exec = next(e for e in execs if e["method"] == "WEBSOCKET")
    assert ws_exec["argv"][-1] == "printf 12345; exit 0"
    assert (ws_exec["exit_code"], ws_exec["bytes_out"]) == (0, 5)
    # The exec's own entry stands for its HTTP call: no second, poorer one.
    assert not [e for e in entries if e["kind"] == "api" and (e["path"] or "").endswith("/exec")]
    upload = next(e for e in entries if e["method"] == "PUT")
    assert upload["status"] < 300 and upload["bytes_in"] == 1000
    delete = next(e for e in entries if e["method"] == "DELETE")
    assert delete["path"] == f"/v1/sandboxes/{sb.id}" and delete["status"] < 300


def test_a_key_reads_only_its_own_tenant(server: LiveServer, admin: httpx.Client) -> None:
    tenant_a, _, key_a = _tenant_key(admin)
    tenant_b, _, key_b = _tenant_key(admin, role="readonly")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key_a}"}) as a:
        made = a.post("/v1/volumes", json={"name": unique("va"), "size": 64})
        assert made.status_code == 201, made.text
        assert a.delete(f"/v1/volumes/{made.json()['id']}").status_code < 300
        mine = _entries(a)
        assert {e["tenant"] for e in mine} == {tenant_a}
        assert any(e["path"] == "/v1/volumes" for e in mine)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key_b}"}) as b:
        # A readonly key's refused write is audited, with the refusal.
        assert b.post("/v1/volumes", json={"name": "nope", "size": 64}).status_code == 403
        theirs = _entries(b)
        assert {e["tenant"] for e in theirs} == {tenant_b}
        assert [e["status"] for e in theirs] == [403]
        # Another tenant's entries: as if it did not exist, whether named or not.
        other = b.get("/v1/audit", params={"tenant": tenant_a})
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    # The operator reads every tenant's, or the one named.
    assert {e["tenant"] for e in _entries(admin, tenant=tenant_a)} == {tenant_a}
    everyone = {e["tenant"] for e in _entries(admin, since=time.time() - 600)}
    assert {tenant_a, tenant_b} <= everyone


def test_bad_queries_are_clear_4xx(admin: httpx.Client) -> None:
    bad = admin.get("/v1/audit", params={"since": "last tuesday"})
    assert bad.status_code == 422
    assert "ISO 8601" in bad.json()["error"]["message"]
    assert admin.get("/v1/audit", params={"limit": 0}).status_code == 422
    assert admin.get("/v1/audit", params={"after": -1}).status_code == 422
    assert admin.get("/v1/audit", params={"after": 10**30}).status_code == 422


def test_cli_prints_and_follows(server: LiveServer, admin: httpx.Client) -> None:
    _, key_id, key = _tenant_key(admin)
    env = {**os.environ, "STOCKADE_URL": server.url, "STOCKADE_TOKEN": key}
    with Client(server.url, key) as client:
        sb = Sandbox.create(image="debian", memory=128, timeout=120, client=client)
        try:
            sb.run("true")
            table = subprocess.run(
                [str(STOCKADE), "audit", "--sandbox", sb.id], env=env, capture_output=True,
                text=True, timeout=60, check=True,
            )  # fmt: skip
            assert "exec sh -c true" in table.stdout and key_id in table.stdout
            with subprocess.Popen(
                [str(STOCKADE), "audit", "--follow", "--json", "--sandbox", sb.id],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            ) as follower:  # fmt: skip
                try:
                    assert follower.stdout is not None
                    old = [json.loads(follower.stdout.readline()) for _ in range(2)]
                    assert [e["kind"] for e in old] == ["api", "exec"]
                    sb.run("echo followed")  # a new entry, printed as it comes
                    new = json.loads(follower.stdout.readline())
                    assert new["argv"] == ["sh", "-c", "echo followed"]
                    assert new["seq"] > old[-1]["seq"]
                finally:
                    follower.kill()
        finally:
            sb.terminate()


def test_an_entry_keeps_a_bounded_argv_and_names_readiness_commands(
    server: LiveServer, admin: httpx.Client
) -> None:
    _, _, key = _tenant_key(admin)
    with Client(server.url, key) as client:
        sb = Sandbox.create(
            image="debian", memory=128, timeout=120, readiness=["true"], client=client
        )
        try:
            assert sb.run(["true", "x" * 100_000, "y" * 100_000]).exit_code == 0
        finally:
            sb.terminate()
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as mine:
        entries = _entries(mine, sandbox=sb.id)
    create = next(e for e in entries if e["path"] == "/v1/sandboxes")
    assert create["argv"] == ["true"]  # the readiness command it ran
    huge = next(e for e in entries if e["kind"] == "exec")
    assert sum(len(a) for a in huge["argv"]) < 4200
    assert huge["argv"][-1].endswith("more characters, 1 more args]")
