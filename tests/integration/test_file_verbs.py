"""rename, chmod, exists, watch and signed URLs against a real gVisor sandbox; and the
agent's watch bounds (watch cap, kernel queue overflow, window) on the host, where a test
can make the kernel's limits bite quickly."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from stockade import (
    AsyncClient,
    AsyncSandbox,
    AuthenticationError,
    Client,
    FileEvent,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    StockadeConnectionError,
    StockadeError,
)
from stockade.errors import SandboxPausedError
from stockade.server.agent.protocol import Frame, FrameType, encode, encode_window

from . import test_agent_host as host_tests
from .conftest import LiveServer
from .helpers import random_file, sha256_file, unique
from .test_agent_host import HostAgent

# The agent's host-test fixtures: its binary (built once per module) and a scratch dir.
binary = host_tests.binary
workdir = host_tests.workdir

WATCH_DEADLINE_S = 20.0


@pytest.mark.runsc
def test_rename_moves_and_exists_follows(sb: Sandbox) -> None:
    sb.files.write("/tmp/verbs/a.txt", "one")
    info = sb.files.rename("/tmp/verbs/a.txt", "/tmp/verbs/b.txt")
    assert (info.path, info.name, info.size_bytes) == ("/tmp/verbs/b.txt", "b.txt", 3)
    assert not sb.files.exists("/tmp/verbs/a.txt")
    assert sb.files.exists("/tmp/verbs/b.txt")
    assert sb.run("cat /tmp/verbs/b.txt").stdout == "one"
    # Paths are normalised as for every other file call.
    sb.files.rename("/tmp//verbs/./b.txt", "/tmp/verbs/sub/../c.txt")
    assert sb.files.read_text("/tmp/verbs/c.txt") == "one"
    # A directory moves with its contents; a file at the destination is replaced.
    sb.files.write("/tmp/verbs/d1/inner", "x")
    sb.files.rename("/tmp/verbs/d1", "/tmp/verbs/d2")
    assert sb.files.read_text("/tmp/verbs/d2/inner") == "x"
    sb.files.write("/tmp/verbs/e.txt", "old")
    sb.files.rename("/tmp/verbs/c.txt", "/tmp/verbs/e.txt")
    assert sb.files.read_text("/tmp/verbs/e.txt") == "one"


@pytest.mark.runsc
def test_rename_bad_input(sb: Sandbox, http: httpx.Client) -> None:
    sb.files.write("/tmp/verbs2/f", "x")
    with pytest.raises(NotFoundError, match="parent directory does not exist"):
        sb.files.rename("/tmp/verbs2/f", "/tmp/verbs2/missing/f")
    with pytest.raises(NotFoundError):
        sb.files.rename("/tmp/verbs2/nope", "/tmp/verbs2/g")
    with pytest.raises(InvalidArgumentError, match="relative"):
        sb.files.rename("/tmp/verbs2/f", "tmp/g")
    with pytest.raises(InvalidArgumentError, match="rename /"):
        sb.files.rename("/", "/x")
    answer = http.post(f"/v1/sandboxes/{sb.id}/files/rename", json={"src": "/tmp/verbs2/f"})
    assert answer.status_code in (400, 422)
    assert "error" in answer.json()


@pytest.mark.runsc
def test_chmod_sets_the_mode_that_stat_shows(sb: Sandbox, http: httpx.Client) -> None:
    sb.files.write("/tmp/verbs3/run.sh", "#!/bin/sh\necho ran\n")
    assert sb.files.chmod("/tmp/verbs3/run.sh", 0o750).mode & 0o7777 == 0o750
    assert sb.files.stat("/tmp/verbs3/run.sh").mode & 0o7777 == 0o750
    assert sb.run("stat -c %a /tmp/verbs3/run.sh").stdout.strip() == "750"
    assert sb.run("/tmp/verbs3/run.sh").stdout == "ran\n"
    assert sb.files.chmod("/tmp/verbs3/run.sh", 0o4711).mode & 0o7777 == 0o4711
    for bad in (0o10000, -1):
        with pytest.raises(InvalidArgumentError, match=r"0\.\.0o7777"):
            sb.files.chmod("/tmp/verbs3/run.sh", bad)
    with pytest.raises(NotFoundError):
        sb.files.chmod("/tmp/verbs3/missing", 0o644)
    # "755" is not silently read as decimal 755.
    answer = http.post(
        f"/v1/sandboxes/{sb.id}/files/chmod", json={"path": "/tmp/verbs3/run.sh", "mode": "755"}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["code"]


async def _collect(
    asb: AsyncSandbox, path: str, script: str, until: tuple[str, str], *, recursive: bool
) -> list[FileEvent]:
    """The events of a watch on ``path`` while ``script`` runs, up to ``until`` (a type
    and path)."""
    seen: list[FileEvent] = []
    async with asyncio.timeout(WATCH_DEADLINE_S):
        async with asb.files.watch(path, recursive=recursive) as events:
            await asb.run(script, check=True)
            async for event in events:
                seen.append(event)
                if (event.type, event.path) == until:
                    break
    return seen


@pytest.mark.runsc
async def test_watch_reports_a_recursive_trees_changes(sb: Sandbox) -> None:
    asb = await AsyncSandbox.from_id(sb.id)
    await asb.run("rm -rf /tmp/w && mkdir -p /tmp/w/sub/deep", check=True)
    script = (
        "echo a > /tmp/w/sub/deep/f && echo b >> /tmp/w/sub/deep/f && "
        "mv /tmp/w/sub/deep/f /tmp/w/g && mkdir /tmp/w/new && sleep 0.5 && "
        "echo c > /tmp/w/new/h && rm /tmp/w/g && rm -r /tmp/w/new"
    )
    seen = await _collect(asb, "/tmp/w", script, ("delete", "/tmp/w/new"), recursive=True)
    kinds = {(e.type, e.path, e.dest) for e in seen}
    assert ("create", "/tmp/w/sub/deep/f", None) in kinds  # two levels down, set at start
    assert ("modify", "/tmp/w/sub/deep/f", None) in kinds
    assert ("rename", "/tmp/w/sub/deep/f", "/tmp/w/g") in kinds
    assert ("create", "/tmp/w/new", None) in kinds
    assert ("create", "/tmp/w/new/h", None) in kinds  # a directory made after the start
    assert ("delete", "/tmp/w/g", None) in kinds
    assert next(e for e in seen if e.path == "/tmp/w/new").is_dir
    order = [(e.type, e.path) for e in seen]
    assert order.index(("create", "/tmp/w/sub/deep/f")) < order.index(("delete", "/tmp/w/g"))


@pytest.mark.runsc
async def test_watch_without_recursive_sees_one_level(sb: Sandbox) -> None:
    asb = await AsyncSandbox.from_id(sb.id)
    await asb.run("rm -rf /tmp/w1 && mkdir -p /tmp/w1/sub", check=True)
    script = "echo x > /tmp/w1/sub/inner && echo y > /tmp/w1/top"
    seen = await _collect(asb, "/tmp/w1", script, ("modify", "/tmp/w1/top"), recursive=False)
    assert all(not (e.path or "").startswith("/tmp/w1/sub/") for e in seen)
    assert ("create", "/tmp/w1/top") in [(e.type, e.path) for e in seen]


def _inotify_fds(sb: Sandbox) -> int:
    # The agent is PID 1: its descriptors show what a watch left behind.
    out = sb.run("ls -l /proc/1/fd 2>/dev/null | grep -c inotify || true").stdout
    return int(out.strip() or 0)


@pytest.mark.runsc
def test_watch_of_a_missing_path_is_404_and_a_closed_watch_leaves_no_fd(
    sb: Sandbox, http: httpx.Client
) -> None:
    with pytest.raises(NotFoundError, match="/tmp/no-such-dir"), sb.files.watch("/tmp/no-such-dir"):
        pass
    answer = http.get(f"/v1/sandboxes/{sb.id}/files/watch", params={"path": "/tmp/no-such"})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"

    before = _inotify_fds(sb)
    sb.run("mkdir -p /tmp/w2/a/b", check=True)
    with sb.files.watch("/tmp/w2", recursive=True):
        assert _inotify_fds(sb) == before + 1
    deadline = time.monotonic() + 10
    while _inotify_fds(sb) != before:
        assert time.monotonic() < deadline, "the agent kept the watch's inotify descriptor"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    path = tmp_path_factory.mktemp("signed") / "big.bin"
    digest = random_file(path, 50 * 1024 * 1024 + 123)
    yield path, digest
    path.unlink(missing_ok=True)


@pytest.mark.runsc
def test_signed_urls_stream_50_mib_both_ways_without_a_token(
    sb: Sandbox, big_file: tuple[Path, str], tmp_path: Path
) -> None:
    local, digest = big_file
    up = sb.files.upload_url("/tmp/signed/big.bin", expires=600)
    down = sb.files.download_url("/tmp/signed/big.bin", expires=600)
    assert "Authorization" not in up and "sig=" in up and "sig=" in down
    with httpx.Client(timeout=120) as plain:  # no Authorization header at all
        with local.open("rb") as body:
            answer = plain.put(up, content=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["size"] == local.stat().st_size
        out = tmp_path / "back.bin"
        with plain.stream("GET", down) as response, out.open("wb") as f:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                f.write(chunk)
    assert sha256_file(out) == digest
    assert sb.run("sha256sum /tmp/signed/big.bin").stdout.split()[0] == digest


def _tampered(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    params.update(changes)
    return parts._replace(query=urlencode(params)).geturl()


@pytest.mark.runsc
def test_signed_urls_refuse_the_wrong_use(sb: Sandbox, server: LiveServer) -> None:
    sb.files.write("/tmp/signed2/f", "secret")
    down = sb.files.download_url("/tmp/signed2/f")
    up = sb.files.upload_url("/tmp/signed2/f")
    with httpx.Client(timeout=30) as plain:
        assert plain.get(down).content == b"secret"
        cases = {
            "upload with a download URL": plain.put(down, content=b"x"),
            "download with an upload URL": plain.get(up),
            "another path": plain.get(_tampered(down, path="/etc/shadow")),
            "a tampered signature": plain.get(_tampered(down, sig="0" * 64)),
            "a longer lifetime": plain.get(_tampered(down, expires=str(2**40))),
            "no signature": plain.get(down.split("?")[0] + "?path=/tmp/signed2/f"),
        }
        for what, answer in cases.items():
            assert answer.status_code == 403, what
            assert answer.json()["error"]["code"] == "forbidden", what
        assert "upload_url" in cases["upload with a download URL"].json()["error"]["message"]
        # The file was neither read nor written by any of them.
        assert sb.files.read_text("/tmp/signed2/f") == "secret"

        short = sb.files.download_url("/tmp/signed2/f", expires=1)
        time.sleep(2.1)
        expired = plain.get(short)
        assert expired.status_code == 410
        assert expired.json()["error"]["code"] == "expired"
        for bad in (0, 7 * 24 * 3600 + 1):
            with pytest.raises(InvalidArgumentError):
                sb.files.download_url("/tmp/signed2/f", expires=bad)


@pytest.mark.runsc
def test_signed_url_stops_working_when_the_sandbox_ends(server: LiveServer) -> None:
    other = Sandbox.create(image="debian", timeout=120)
    try:
        other.files.write("/tmp/f", "data")
        url = other.files.download_url("/tmp/f")
        with httpx.Client(timeout=30) as plain:
            assert plain.get(url).content == b"data"
            other.terminate()
            answer = plain.get(url)
        assert 400 <= answer.status_code < 500
        error = answer.json()["error"]
        assert error["code"] in ("sandbox_terminated", "not_found", "conflict"), error
    finally:
        other.terminate()


# ------------------------------------------------------------------ keys: revoked, audited


def _new_key(server: LiveServer, tenant: str, role: str) -> dict[str, str]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as admin:
        made = admin.post("/v1/keys", json={"tenant": tenant, "role": role})
    assert made.status_code == 201, made.text
    return {"key": made.json()["key"], "id": made.json()["id"]}


def _revoke(server: LiveServer, key_id: str) -> None:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as admin:
        assert admin.delete(f"/v1/keys/{key_id}").status_code == 200


@pytest.fixture(scope="module")
def tenant_sb(server: LiveServer) -> Iterator[tuple[str, str]]:
    """A sandbox of a tenant of its own (made with one of its keys): (tenant, sandbox ID)."""
    tenant = unique("tn")
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as admin:
        assert admin.post("/v1/tenants", json={"name": tenant}).status_code == 201
    with Client(server.url, _new_key(server, tenant, "user")["key"]) as client:
        sandbox_id = Sandbox.create(image="debian", timeout=600, client=client).id
    try:
        Sandbox.from_id(sandbox_id).run("mkdir -p /tmp/keyed", check=True)
        yield tenant, sandbox_id
    finally:
        Sandbox.from_id(sandbox_id).terminate()


@pytest.mark.runsc
def test_a_revoked_key_ends_its_file_watch(server: LiveServer, tenant_sb: tuple[str, str]) -> None:
    tenant, sandbox_id = tenant_sb
    made = _new_key(server, tenant, "readonly")  # a watch is a read
    seen: list[FileEvent] = []

    async def scenario() -> None:
        async with AsyncClient(server.url, made["key"]) as client, asyncio.timeout(
            WATCH_DEADLINE_S
        ):  # fmt: skip
            asb = await AsyncSandbox.from_id(sandbox_id, client=client)
            async with asb.files.watch("/tmp/keyed") as events:
                _revoke(server, made["id"])
                # Made after the revoke, with the admin token: the watch must not tell.
                Sandbox.from_id(sandbox_id).files.write("/tmp/keyed/after-revoke", "x")
                async for event in events:
                    seen.append(event)

    with pytest.raises(AuthenticationError, match=f"API key {made['id']} was revoked"):
        asyncio.run(scenario())
    assert [e for e in seen if e.path == "/tmp/keyed/after-revoke"] == []


def _signed_entries(server: LiveServer, tenant: str, key_id: str) -> list[dict[str, object]]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as admin:
        page = admin.get("/v1/audit", params={"tenant": tenant, "limit": 1000}).json()
    return [
        e for e in page["entries"]
        if e["key_id"] == key_id and str(e["path"]).startswith("/v1/signed/")
    ]  # fmt: skip


@pytest.mark.runsc
def test_a_signed_url_is_audited_under_its_key_and_ends_with_it(
    server: LiveServer, tenant_sb: tuple[str, str]
) -> None:
    tenant, sandbox_id = tenant_sb
    made = _new_key(server, tenant, "user")
    with Client(server.url, made["key"]) as client:
        sb = Sandbox.from_id(sandbox_id, client=client)
        up = sb.files.upload_url("/tmp/keyed/in.bin")
        down = sb.files.download_url("/tmp/keyed/in.bin")
    assert f"key={made['id']}" in up and f"key={made['id']}" in down
    with httpx.Client(timeout=30) as plain:
        assert plain.put(up, content=b"hello").status_code == 200
        assert plain.get(down).content == b"hello"
        # Both uses are in the audit log, under the key that minted the URLs (written in
        # batches: wait for them).
        deadline = time.monotonic() + 10
        while len(entries := _signed_entries(server, tenant, made["id"])) < 2:
            assert time.monotonic() < deadline, entries
            time.sleep(0.2)
        by_method = {e["method"]: e for e in entries}
        path = f"/v1/signed/sandboxes/{sandbox_id}/files"  # never the query: no signature
        assert {k: by_method["PUT"][k] for k in ("path", "status", "sandbox", "bytes_in")} == {
            "path": path, "status": 200, "sandbox": sandbox_id, "bytes_in": 5
        }  # fmt: skip
        assert {k: by_method["GET"][k] for k in ("path", "status", "bytes_out")} == {
            "path": path, "status": 200, "bytes_out": 5
        }  # fmt: skip
        assert all(e["tenant"] == tenant for e in entries)

        _revoke(server, made["id"])
        for answer in (plain.get(down), plain.put(up, content=b"later")):
            assert answer.status_code == 403, answer.text
            message = answer.json()["error"]["message"]
            assert f"API key {made['id']}, which was revoked" in message
    assert Sandbox.from_id(sandbox_id).files.read_text("/tmp/keyed/in.bin") == "hello"
    # URLs the admin token mints name it, and keep working.
    admins = Sandbox.from_id(sandbox_id).files.download_url("/tmp/keyed/in.bin")
    assert "key=admin" in admins
    assert httpx.get(admins, timeout=30).content == b"hello"


@pytest.mark.runsc
def test_a_signed_url_does_not_resume_a_paused_sandbox(server: LiveServer) -> None:
    paused = Sandbox.create(image="debian", timeout=300, auto_resume=True)
    try:
        paused.files.write("/tmp/f", "data")
        url = paused.files.download_url("/tmp/f")
        paused.pause()
        answer = httpx.get(url, timeout=30)
        assert answer.status_code == SandboxPausedError.status, answer.text
        assert answer.json()["error"]["code"] == SandboxPausedError.code
        assert paused.info().status == "paused"  # the URL's holder woke nothing
        # The owner's own call does resume it (auto_resume), and the URL works again.
        assert paused.files.read_text("/tmp/f") == "data"
        assert httpx.get(url, timeout=30).content == b"data"
    finally:
        paused.terminate()


# ------------------------------------------------------------------ the agent on the host


@pytest.fixture
def host_agent(binary: Path, workdir: Path) -> Iterator[HostAgent]:
    a = HostAgent(binary, workdir / "watch-agent.log")
    try:
        a.hello()
        yield a
    finally:
        a.stop()


def _events(frames: list[Frame]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for f in frames:
        if f.type == FrameType.DATA:
            out += f.json()["events"]
    return out


def _watch_frames(a: HostAgent, ch: int, until: str, timeout: float = 20.0) -> list[Frame]:
    """DATA frames of watch channel ``ch``, granting their window, until an event of type
    ``until`` arrives."""
    got: list[Frame] = []
    deadline = time.monotonic() + timeout
    while not any(e["type"] == until for e in _events(got)):
        assert time.monotonic() < deadline, f"no {until} event; got {_events(got)[-5:]}"
        a.pump(0.2)
        mine = [f for f in a.inbox if f.channel == ch]
        a.inbox = [f for f in a.inbox if f.channel != ch]
        for f in mine:
            assert f.type == FrameType.DATA, f
            got.append(f)
            a.send(encode_window(ch, len(f.payload)))
    return got


def test_agent_caps_the_watches_of_a_tree_and_says_so(host_agent: HostAgent, workdir: Path) -> None:
    root = workdir / "many"
    for i in range(8200):
        (root / f"d{i}").mkdir(parents=True)
    host_agent.request(FrameType.FILE_WATCH, 900, {"path": str(root), "recursive": True})
    ready = host_agent.wait_for(lambda f: f.channel == 900)
    assert ready.type == FrameType.READY, ready
    limit = [e for e in _events(_watch_frames(host_agent, 900, "limit")) if e["type"] == "limit"]
    assert len(limit) == 1 and "not watched" in str(limit[0]["message"])
    # The root and what it holds are still watched.
    (root / "late").write_text("x")
    _watch_frames(host_agent, 900, "create")
    host_agent.send(encode(FrameType.CLOSE, 900))


def test_agent_reports_overflow_instead_of_buffering(host_agent: HostAgent, workdir: Path) -> None:
    root = workdir / "burst"
    root.mkdir()
    host_agent.request(FrameType.FILE_WATCH, 901, {"path": str(root)})
    assert host_agent.wait_for(lambda f: f.channel == 901).type == FrameType.READY
    # Nothing is read or granted meanwhile: the agent spends its window, keeps what its
    # queue holds (512 KiB of raw events) and drops the rest, as gVisor's inotify, which
    # has no queue cap of its own, would not.
    for i in range(12000):
        (root / f"f{i}").touch()
        (root / f"f{i}").unlink()
    frames = _watch_frames(host_agent, 901, "overflow")
    assert sum(len(f.payload) for f in frames) < 8 * 1024 * 1024
    assert all(len(f.payload) <= 256 * 1024 for f in frames)
    host_agent.send(encode(FrameType.CLOSE, 901))


def test_agent_watch_protocol_errors(host_agent: HostAgent, workdir: Path) -> None:
    missing = host_agent.file_op(FrameType.FILE_WATCH, path=str(workdir / "nope"))
    assert missing.type == FrameType.ERROR and missing.json()["errno"] == 2
    bad = host_agent.file_op(FrameType.FILE_WATCH, path=str(workdir), recursive="yes")
    assert bad.type == FrameType.ERROR and "recursive" in bad.json()["message"]
    chmod = host_agent.file_op(FrameType.FILE_CHMOD, path=str(workdir), mode=0o10000)
    assert chmod.type == FrameType.ERROR and "0..4095" in chmod.json()["message"]
    rename = host_agent.file_op(FrameType.FILE_RENAME, path=str(workdir))
    assert rename.type == FrameType.ERROR and "dest" in rename.json()["message"]


@pytest.mark.runsc
def test_cli_mv_chmod_url_and_watch(sb: Sandbox) -> None:
    from .test_cli import STOCKADE, cli

    sb.files.write("/tmp/clif/a", "cli")
    assert cli("mv", sb.id, "/tmp/clif/a", "/tmp/clif/b").returncode == 0
    assert sb.files.read_text("/tmp/clif/b") == "cli"
    assert cli("chmod", sb.id, "640", "/tmp/clif/b").returncode == 0
    assert sb.files.stat("/tmp/clif/b").mode & 0o7777 == 0o640
    bad = cli("chmod", sb.id, "9x", "/tmp/clif/b")
    assert bad.returncode != 0 and "octal" in bad.stderr
    url = cli("url", sb.id, "/tmp/clif/b").stdout.strip()
    assert httpx.get(url, timeout=30).content == b"cli"

    with subprocess.Popen(
        [str(STOCKADE), "watch", sb.id, "/tmp/clif", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
    ) as watcher:  # fmt: skip
        assert watcher.stdout is not None and watcher.stderr is not None
        try:
            # The watch is in place once the CLI has its answer; retouch until it reports.
            deadline = time.monotonic() + WATCH_DEADLINE_S
            event: dict[str, object] = {}
            while event.get("path") != "/tmp/clif/c":
                assert time.monotonic() < deadline, "stockade watch printed no event"
                sb.run("echo x > /tmp/clif/c", check=True)
                ready, _, _ = select.select([watcher.stdout], [], [], 1.0)
                if ready:
                    event = json.loads(watcher.stdout.readline())
            assert event["type"] in ("create", "modify")
        finally:
            watcher.send_signal(signal.SIGINT)
            try:
                # Ctrl-C lands at the latest with the stream's next heartbeat (15 s).
                watcher.wait(30)
            except subprocess.TimeoutExpired:
                watcher.kill()
                raise
        assert watcher.returncode == 0, watcher.stderr.read()


@pytest.mark.runsc
async def test_a_watch_whose_sandbox_ends_raises_instead_of_hanging(server: LiveServer) -> None:
    asb = await AsyncSandbox.create(image="debian", timeout=120)
    try:
        async with asyncio.timeout(WATCH_DEADLINE_S):
            async with asb.files.watch("/tmp") as events:
                await asb.terminate()
                with pytest.raises(StockadeError) as info:
                    async for event in events:
                        assert event.type in ("create", "modify", "delete", "rename")
        # The server's own error event, not a connection cut midway.
        assert not isinstance(info.value, StockadeConnectionError), info.value
        assert asb.id in str(info.value)
    finally:
        await asb.terminate()
