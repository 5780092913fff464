"""Memory snapshots, filesystem snapshots, pause/resume, auto-resume and fork, against real
gVisor sandboxes: processes carry on where they were, files are exactly those of the
moment of the capture, and every error is a clear one."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from stockade import (
    Client,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    SandboxPausedError,
    SandboxTerminatedError,
    Snapshot,
    StockadeError,
)

from .conftest import LiveServer
from .helpers import COUNTER, count, counting_past, runsc_processes, runsc_state, unique, wait_for

pytestmark = [pytest.mark.runsc, pytest.mark.timeout(300)]

STOCKADE = Path(sys.executable).parent / "stockade"
UNKNOWN_SANDBOX = "sb-0000000000000000"
UNKNOWN_SNAPSHOT = "sn-0000000000000000"

# Holds a value in memory only: `set X` stores it, anything else gets it back.
STATE_SERVER = r"""
import socket
value = "unset"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 7000))
s.listen()
while True:
    c, _ = s.accept()
    with c:
        line = c.makefile().readline().strip()
        if line.startswith("set "):
            value = line[4:]
            c.sendall(b"ok\n")
        else:
            c.sendall((value + "\n").encode())
"""

ASK = (
    "import socket, sys; c = socket.create_connection(('127.0.0.1', 7000), timeout=5); "
    "c.sendall((sys.argv[1] + '\\n').encode()); print(c.makefile().readline().strip())"
)

FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')"
)


# ------------------------------------------------------------------------------ helpers


def detach(sb: Sandbox, line: str) -> None:
    """Start ``line`` in its own session, cut from the exec that started it (whose
    processes would die when the server reconnects to a restored agent)."""
    wrapped = f"setsid sh -c {shlex.quote(line)} >/dev/null 2>&1 </dev/null &"
    sb.run(wrapped, check=True)


def start_counter(sb: Sandbox) -> int:
    detach(sb, COUNTER)
    return counting_past(sb, 0)


def ask(sb: Sandbox, message: str) -> str:
    return sb.run(["python3", "-c", ASK, message], check=True).stdout.strip()


def wait_listening(sb: Sandbox, port: int) -> None:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    wait_for(
        lambda: True if sb.run(["python3", "-c", probe]).exit_code == 0 else None,
        timeout=20,
        interval=0.2,
        what=f"port {port} in {sb.id}",
    )


def fetch_inside(sb: Sandbox, url: str) -> str:
    return sb.run(["python3", "-c", FETCH, url], check=True).stdout


def fetch_proxied(sb: Sandbox, port: int, path: str) -> httpx.Response:
    return httpx.get(
        sb.tunnel(port) + path, headers={"X-Stockade-Access-Token": sb.access_token}, timeout=30
    )


def processes(sb: Sandbox) -> str:
    """Every process's command line in the sandbox (the image has no ps)."""
    return sb.run("cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '").stdout


def snapshot_ids() -> set[str]:
    return {s.id for s in Snapshot.list()}


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text
    assert 'File "' not in text, text


def terminate_all(sandboxes: list[Sandbox]) -> None:
    for sb in sandboxes:
        with contextlib.suppress(StockadeError):
            sb.terminate()


@pytest.fixture
def cleanup() -> Iterator[list[Sandbox]]:
    """Sandboxes a test makes; ended whatever happens."""
    made: list[Sandbox] = []
    try:
        yield made
    finally:
        terminate_all(made)


@pytest.fixture(scope="module")
def src(server: LiveServer) -> Iterator[Sandbox]:
    """A python sandbox with a counter, an in-memory state server on loopback, an HTTP
    server on an exposed port and some files: state a snapshot must carry over."""
    sb = Sandbox.create(image="python", timeout=900, ports=[8000], tags={"suite": "snapshots"})
    try:
        sb.files.write("/srv/state.py", STATE_SERVER)
        sb.files.write("/srv/www/hello.txt", "hello from the sandbox\n")
        sb.files.write("/data/before.txt", "written before the snapshot")
        start_counter(sb)
        detach(sb, "exec python3 /srv/state.py")
        detach(sb, "exec python3 -m http.server 8000 --directory /srv/www")
        wait_listening(sb, 7000)
        wait_listening(sb, 8000)
        yield sb
    finally:
        sb.terminate()


# ----------------------------------------------------------------------- memory snapshots


def test_memory_snapshot_carries_on(src: Sandbox, cleanup: list[Sandbox]) -> None:
    secret = unique("secret")
    assert ask(src, f"set {secret}") == "ok"
    assert ask(src, "get") == secret
    before = count(src)
    snap = src.snapshot()
    assert snap.id.startswith("sn-")
    # The source runs on, and what it does from now on is not in the snapshot.
    src.files.write("/data/after.txt", "written after the snapshot")
    assert ask(src, "set changed-after") == "ok"
    counting_past(src, count(src))

    restored = Sandbox.create(snapshot=snap)
    cleanup.append(restored)
    assert restored.id != src.id
    info = restored.info()
    assert info.status == "running"
    assert info.image == "python"
    assert info.snapshot == snap.id
    assert [p.port for p in info.ports] == [8000]

    # The counter carries on from where it was: never back to the start, and it counts.
    first = count(restored)
    assert first >= before, (first, before)
    assert counting_past(restored, first) > first
    # In-memory state of a detached process, as of the snapshot.
    assert ask(restored, "get") == secret
    # The HTTP server kept its listening socket: inside, and through the proxy.
    assert fetch_inside(restored, "http://127.0.0.1:8000/hello.txt") == "hello from the sandbox\n"
    r = fetch_proxied(restored, 8000, "hello.txt")
    assert (r.status_code, r.text) == (200, "hello from the sandbox\n")
    # Files as of the snapshot.
    assert restored.files.read_text("/data/before.txt") == "written before the snapshot"
    assert not restored.files.exists("/data/after.txt")
    assert sorted(e.name for e in restored.files.list("/data")) == ["before.txt"]
    # The restored sandbox is a sandbox like any other: exec and files work.
    restored.files.write("/data/restored.txt", "mine")
    assert restored.run("cat /data/restored.txt").stdout == "mine"
    assert not src.files.exists("/data/restored.txt")

    # The source was not disturbed.
    assert ask(src, "get") == "changed-after"
    assert src.files.read_text("/data/after.txt") == "written after the snapshot"
    assert counting_past(src, count(src)) > before
    assert src.info().status == "running"
    snap.delete()


def test_restore_list_and_delete(server: LiveServer, cleanup: list[Sandbox]) -> None:
    sb = Sandbox.create(image="debian", memory=256)
    cleanup.append(sb)
    sb.files.write("/data/f.txt", "snapshotted")
    started = time.time()
    label = unique("label")
    snap = sb.snapshot(name=label)
    assert snap.id.startswith("sn-")
    assert snap.info.sandbox_id == sb.id
    assert snap.info.image == "debian"
    assert snap.info.name == label
    assert snap.info.size_bytes > 0
    assert snap.info.created_at is not None
    assert started - 5 <= snap.info.created_at.timestamp() <= time.time() + 5

    assert snap.id in snapshot_ids()
    assert [s.id for s in Snapshot.list(sandbox_id=sb.id)] == [snap.id]
    newer = sb.snapshot()
    assert newer.info.name is None
    # Newest first.
    assert [s.id for s in Snapshot.list(sandbox_id=sb.id)] == [newer.id, snap.id]
    newer.delete()
    assert [s.id for s in Snapshot.list(sandbox_id=sb.id)] == [snap.id]
    again = Snapshot.from_id(snap.id)
    assert again.info == snap.info
    assert (server.data_dir / "snapshots" / snap.id).is_dir()

    # Both ways of restoring, and as often as wanted; the source's end changes nothing.
    a = Sandbox.create(snapshot=snap.id, tags={"via": "create"})
    cleanup.append(a)
    sb.terminate()
    b = snap.restore(tags={"via": "restore"}, timeout=120)
    cleanup.append(b)
    assert len({a.id, b.id, sb.id}) == 3
    for restored, via in ((a, "create"), (b, "restore")):
        info = restored.info()
        assert (info.status, info.tags, info.snapshot) == ("running", {"via": via}, snap.id)
        assert restored.files.read_text("/data/f.txt") == "snapshotted"
        assert restored.run("echo alive").stdout == "alive\n"
    assert b.info().timeout == 120

    snap.delete()
    assert snap.id not in snapshot_ids()
    assert Snapshot.list(sandbox_id=sb.id) == []
    assert not (server.data_dir / "snapshots" / snap.id).exists()
    with pytest.raises(NotFoundError, match="does not exist"):
        snap.restore()
    with pytest.raises(NotFoundError):
        Sandbox.create(snapshot=snap.id)
    with pytest.raises(NotFoundError):
        Snapshot.from_id(snap.id)
    with pytest.raises(NotFoundError):
        snap.delete()
    # Sandboxes restored from it live on.
    assert a.files.read_text("/data/f.txt") == "snapshotted"


def test_snapshots_survive_a_server_restart(server: LiveServer, cleanup: list[Sandbox]) -> None:
    sb = Sandbox.create(image="debian", memory=256, timeout=600)
    cleanup.append(sb)
    sb.files.write("/data/f.txt", "kept")
    before = start_counter(sb)
    snap = sb.snapshot(name="across-restart")
    server.restart()
    listed = {s.id: s for s in Snapshot.list()}
    assert snap.id in listed
    assert listed[snap.id].info == snap.info
    restored = snap.restore()
    cleanup.append(restored)
    assert restored.files.read_text("/data/f.txt") == "kept"
    first = count(restored)
    assert first >= before
    counting_past(restored, first)
    # The source came through the restart too.
    assert sb.info().status == "running"
    counting_past(sb, count(sb))
    snap.delete()


def test_fork_gives_independent_copies(src: Sandbox, cleanup: list[Sandbox]) -> None:
    secret = unique("fork")
    assert ask(src, f"set {secret}") == "ok"
    before = count(src)
    forks = src.fork(3)
    cleanup.extend(forks)
    assert len(forks) == 3
    ids = {f.id for f in forks}
    assert len(ids) == 3 and src.id not in ids
    assert all(i.startswith("sb-") for i in ids)
    for f in forks:
        info = f.info()
        assert info.status == "running"
        assert info.image == "python"
        assert info.tags == {"suite": "snapshots"}
    # Each writes its own file; nobody else sees it, not even the source.
    for n, f in enumerate(forks):
        f.files.write("/data/mine.txt", f"fork {n}")
        f.run(f"echo {n} > /data/only-{n}", check=True)
    src.files.write("/data/mine.txt", "source")
    for n, f in enumerate(forks):
        assert f.files.read_text("/data/mine.txt") == f"fork {n}"
        others = sorted(e.name for e in f.files.list("/data") if e.name.startswith("only-"))
        assert others == [f"only-{n}"]
        assert f.files.read_text("/data/before.txt") == "written before the snapshot"
        # Memory is their own too.
        assert ask(f, "get") == secret
        assert ask(f, f"set fork-{n}") == "ok"
    assert src.files.read_text("/data/mine.txt") == "source"
    assert not any(e.name.startswith("only-") for e in src.files.list("/data"))
    assert [ask(f, "get") for f in forks] == ["fork-0", "fork-1", "fork-2"]
    # Each fork's HTTP server answers through the proxy on the fork's own address.
    for f in forks:
        assert [p.port for p in f.info().ports] == [8000]
        r = fetch_proxied(f, 8000, "hello.txt")
        assert (r.status_code, r.text) == (200, "hello from the sandbox\n")
    assert ask(src, "get") == secret
    # Every copy counts on from where the source was, and so does the source.
    for sb in (*forks, src):
        first = count(sb)
        assert first >= before, (sb.id, first, before)
        counting_past(sb, first)
    # Forks are sandboxes like any other: ending one leaves the rest.
    forks[0].terminate()
    assert forks[1].run("echo still").stdout == "still\n"
    assert src.info().status == "running"


def test_source_exec_streams_survive_snapshot_and_fork(
    server: LiveServer, cleanup: list[Sandbox]
) -> None:
    sb = Sandbox.create(image="debian", memory=256)
    cleanup.append(sb)
    with sb.exec("sh", "-c", "echo start; read line; echo got $line; sleep 1; echo end") as p:
        assert p.stdout.readline() == "start\n"
        snap = sb.snapshot()
        forks = sb.fork(1)
        cleanup.extend(forks)
        p.stdin.write("after-capture\n")
        assert p.stdout.read() == "got after-capture\nend\n"
        assert p.wait() == 0
    snap.delete()
    assert forks[0].run("echo fork").stdout == "fork\n"


# ------------------------------------------------------------------- filesystem snapshots


def test_snapshot_filesystem(server: LiveServer, cleanup: list[Sandbox]) -> None:
    sb = Sandbox.create(image="debian", memory=256)
    cleanup.append(sb)
    assert sb.files.exists("/etc/issue.net")
    assert sorted(e.name for e in sb.files.list("/etc/apt/apt.conf.d")) == [
        "01autoremove",
        "70debconf",
    ]
    original_motd = sb.files.read_text("/etc/motd")
    sb.files.write("/data/new.txt", "added")
    sb.files.write("/data/sub/nested.txt", "nested")
    sb.files.write("/etc/motd", "modified motd\n")
    sb.run(
        "rm /etc/issue.net && rm -r /etc/apt/apt.conf.d && mkdir /etc/apt/apt.conf.d "
        "&& echo mine > /etc/apt/apt.conf.d/99mine && rm -r /etc/cron.d",
        check=True,
    )
    before = start_counter(sb)

    image = sb.snapshot_filesystem()
    assert image.name.startswith(f"{sb.id}:fs-"), image.name
    # The source keeps running.
    assert sb.info().status == "running"
    counting_past(sb, before)
    # What it writes from now on is not in the image.
    sb.files.write("/data/later.txt", "later")

    copy = Sandbox.create(image=image, memory=256)
    cleanup.append(copy)
    assert copy.info().image == image.name
    assert copy.files.read_text("/data/new.txt") == "added"
    assert copy.files.read_text("/data/sub/nested.txt") == "nested"
    assert copy.files.read_text("/etc/motd") == "modified motd\n"
    assert not copy.files.exists("/etc/issue.net")
    assert not copy.files.exists("/etc/cron.d")
    assert [e.name for e in copy.files.list("/etc/apt/apt.conf.d")] == ["99mine"]
    assert copy.files.read_text("/etc/apt/apt.conf.d/99mine") == "mine\n"
    assert not copy.files.exists("/data/later.txt")
    assert sorted(e.name for e in copy.files.list("/data")) == ["new.txt", "sub"]
    # Files only: no process came along, nor /tmp (gVisor keeps it in memory).
    assert "count.new" in processes(sb)
    assert "count.new" not in processes(copy)
    assert not copy.files.exists("/tmp/count")
    # The image is untouched underneath it: a plain debian sandbox still has the originals.
    plain = Sandbox.create(image="debian", memory=256)
    cleanup.append(plain)
    assert plain.files.read_text("/etc/motd") == original_motd
    assert plain.files.exists("/etc/issue.net")

    name = f"{unique('fs')}:v1"
    named = sb.snapshot_filesystem(name=name)
    assert named.name == name
    tagged = Sandbox.create(image=name, memory=256)
    cleanup.append(tagged)
    assert tagged.files.read_text("/data/later.txt") == "later"
    assert tagged.files.read_text("/data/new.txt") == "added"
    assert tagged.info().image == name
    with Client() as client:
        client.delete_image(name)

    for bad in ("Bad Name!", "x:", ":v1", "a b:c"):
        with pytest.raises(InvalidArgumentError) as exc:
            sb.snapshot_filesystem(name=bad)
        no_traceback(str(exc.value))
    assert sb.info().status == "running"
    counting_past(sb, count(sb))


def test_image_gc_keeps_what_snapshots_and_paused_sandboxes_need(
    server: LiveServer, cleanup: list[Sandbox]
) -> None:
    base = Sandbox.create(image="debian", memory=256)
    cleanup.append(base)
    base.files.write("/data/layer.txt", "in the image")
    name = f"{unique('gc')}:v1"
    base.snapshot_filesystem(name=name)
    child = Sandbox.create(image=name, memory=256)
    cleanup.append(child)
    child.files.write("/data/child.txt", "in the snapshot")
    snap = child.snapshot()
    sleeper = Sandbox.create(image=name, memory=256)
    cleanup.append(sleeper)
    sleeper.pause()
    # Nothing but the snapshot and the paused sandbox needs the image's layers now.
    base.terminate()
    child.terminate()
    with Client() as client:
        client.delete_image(name)
        client.gc_images(min_age=0)

    restored = snap.restore()
    cleanup.append(restored)
    assert restored.files.read_text("/data/layer.txt") == "in the image"
    assert restored.files.read_text("/data/child.txt") == "in the snapshot"
    assert sleeper.resume().status == "running"
    assert sleeper.files.read_text("/data/layer.txt") == "in the image"
    snap.delete()


# --------------------------------------------------------------------------- pause/resume


def test_pause_and_resume(server: LiveServer, cleanup: list[Sandbox]) -> None:
    sb = Sandbox.create(image="debian", memory=256, timeout=600)
    cleanup.append(sb)
    sb.files.write("/data/f.txt", "before the pause")
    sb.run("echo in-memory > /dev/shm/m", check=True)
    counting_past(sb, start_counter(sb) + 2)
    assert runsc_processes(sb.id), "no runsc process found for a running sandbox"

    before = count(sb)
    expires = sb.info().expires_at
    assert expires is not None
    left = expires.timestamp() - time.time()
    info = sb.pause()
    assert (info.id, info.status, info.paused) == (sb.id, "paused", True)
    assert info.paused_at is not None
    assert sb.info().status == "paused"
    assert [s.id for s in Sandbox.list(status="paused") if s.id == sb.id] == [sb.id]
    assert sb.id not in {s.id for s in Sandbox.list(status="running")}
    # Nothing of it runs on the host: runsc does not know it, no process has its ID.
    assert runsc_state(server.data_dir, sb.id) is None
    assert runsc_processes(sb.id) == []
    # Pausing again changes nothing.
    assert sb.pause().status == "paused"

    with pytest.raises(SandboxPausedError, match="paused") as exc:
        sb.run("true")
    no_traceback(str(exc.value))
    with pytest.raises(SandboxPausedError):
        sb.exec("true")
    with pytest.raises(SandboxPausedError):
        sb.files.read_text("/data/f.txt")
    with pytest.raises(SandboxPausedError):
        sb.files.write("/data/g.txt", "x")
    time.sleep(2)  # a paused sandbox's clock stands still

    resumed = sb.resume()
    assert (resumed.id, resumed.status, resumed.paused_at) == (sb.id, "running", None)
    assert runsc_processes(sb.id)
    assert resumed.expires_at is not None
    # What was left of the timeout at the pause is left again: the 2 s paused do not count.
    left_now = resumed.expires_at.timestamp() - time.time()
    assert left - 1.5 < left_now <= left + 0.5, (left, left_now)
    after = count(sb)
    # Resumed where it stopped: not restarted (it would count from 1), and counting.
    assert after >= before
    counting_past(sb, after)
    assert sb.files.read_text("/data/f.txt") == "before the pause"
    assert sb.run("cat /dev/shm/m").stdout == "in-memory\n"
    assert not sb.files.exists("/data/g.txt")
    # Resuming a running sandbox changes nothing.
    assert sb.resume().status == "running"


def test_many_pause_resume_cycles(server: LiveServer, cleanup: list[Sandbox]) -> None:
    sb = Sandbox.create(image="debian", memory=256, timeout=600)
    cleanup.append(sb)
    start_counter(sb)
    expected: dict[str, str] = {}
    deleted: set[str] = set()
    started = time.monotonic()
    for i in range(20):
        name = f"f{i:02d}.txt"
        content = f"cycle {i} " + "x" * i
        sb.files.write(f"/data/{name}", content)
        expected[name] = content
        if i % 3 == 2:
            # Delete an earlier file, and rewrite another.
            victim = f"f{i - 2:02d}.txt"
            sb.files.remove(f"/data/{victim}")
            del expected[victim]
            deleted.add(victim)
            rewrite = f"f{i - 1:02d}.txt"
            sb.files.write(f"/data/{rewrite}", f"rewritten in cycle {i}")
            expected[rewrite] = f"rewritten in cycle {i}"
        assert sb.pause().status == "paused"
        assert sb.resume().status == "running"
    elapsed = time.monotonic() - started
    listing = {e.name for e in sb.files.list("/data")}
    assert listing == set(expected), listing ^ set(expected)
    assert not listing & deleted
    for name, content in expected.items():
        assert sb.files.read_text(f"/data/{name}") == content, name
    counting_past(sb, count(sb))
    assert sb.run("echo ok").stdout == "ok\n"
    # About half a second a cycle; a generous bound that still catches a slow path.
    assert elapsed < 60, f"20 pause/resume cycles took {elapsed:.1f}s"


def test_resume_by_id(server: LiveServer, cleanup: list[Sandbox]) -> None:
    sb = Sandbox.create(image="debian", memory=256)
    cleanup.append(sb)
    sb.files.write("/data/f.txt", "by id")
    sb.pause()
    handle = Sandbox.from_id(sb.id)
    assert handle.last_info.status == "paused"
    info = handle.resume()
    assert (info.id, info.status) == (sb.id, "running")
    assert handle.files.read_text("/data/f.txt") == "by id"
    assert sb.run("echo ok").stdout == "ok\n"


def test_pause_survives_a_server_restart(server: LiveServer, cleanup: list[Sandbox]) -> None:
    sb = Sandbox.create(image="debian", memory=256, timeout=600)
    cleanup.append(sb)
    sb.files.write("/data/f.txt", "across the restart")
    before = counting_past(sb, start_counter(sb) + 2)
    sb.pause()
    server.restart()
    assert sb.info().status == "paused"
    assert runsc_processes(sb.id) == []
    with pytest.raises(SandboxPausedError):
        sb.run("true")
    assert sb.resume().status == "running"
    assert sb.files.read_text("/data/f.txt") == "across the restart"
    after = count(sb)
    assert after >= before
    counting_past(sb, after)
    assert "count.new" in processes(sb)


def test_auto_resume_wakes_on_use(server: LiveServer, cleanup: list[Sandbox]) -> None:
    sb = Sandbox.create(image="python", ports=[8000], auto_resume=True, timeout=600)
    cleanup.append(sb)
    assert sb.info().auto_resume is True
    sb.files.write("/srv/www/index.txt", "served after a nap")
    sb.files.write("/data/f.txt", "read after a nap")
    detach(sb, "exec python3 -m http.server 8000 --directory /srv/www")
    wait_listening(sb, 8000)

    sb.pause()
    assert sb.info().status == "paused"
    assert sb.run("cat /data/f.txt").stdout == "read after a nap"
    assert sb.info().status == "running"

    sb.pause()
    assert sb.info().status == "paused"
    assert sb.files.read_text("/data/f.txt") == "read after a nap"
    assert sb.info().status == "running"

    sb.pause()
    assert sb.info().status == "paused"
    r = fetch_proxied(sb, 8000, "index.txt")
    assert (r.status_code, r.text) == (200, "served after a nap")
    assert sb.info().status == "running"


def test_port_request_to_a_paused_sandbox_without_auto_resume(
    server: LiveServer, cleanup: list[Sandbox]
) -> None:
    sb = Sandbox.create(image="python", ports=[8000])
    cleanup.append(sb)
    detach(sb, "exec python3 -m http.server 8000 --directory /")
    wait_listening(sb, 8000)
    sb.pause()
    r = fetch_proxied(sb, 8000, "")
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "sandbox_paused"
    no_traceback(r.text)
    assert sb.info().status == "paused"
    # Resumed (maybe at a new address), it serves again through the proxy.
    sb.resume()
    r = fetch_proxied(sb, 8000, "")
    assert r.status_code == 200, r.text


# --------------------------------------------------------------------------------- errors


def test_errors(server: LiveServer, http: httpx.Client, cleanup: list[Sandbox]) -> None:
    # Unknown IDs: 404 on every route, as NotFoundError in the SDK.
    for method, path, body in (
        ("POST", f"/v1/sandboxes/{UNKNOWN_SANDBOX}/snapshots", {}),
        ("POST", f"/v1/sandboxes/{UNKNOWN_SANDBOX}/filesystem-snapshots", {}),
        ("POST", f"/v1/sandboxes/{UNKNOWN_SANDBOX}/pause", None),
        ("POST", f"/v1/sandboxes/{UNKNOWN_SANDBOX}/resume", None),
        ("POST", f"/v1/sandboxes/{UNKNOWN_SANDBOX}/fork", {"count": 1}),
        ("GET", f"/v1/snapshots/{UNKNOWN_SNAPSHOT}", None),
        ("DELETE", f"/v1/snapshots/{UNKNOWN_SNAPSHOT}", None),
        ("POST", "/v1/sandboxes", {"snapshot": UNKNOWN_SNAPSHOT}),
    ):
        r = http.request(method, path, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "not_found", r.text
        no_traceback(r.text)
    with pytest.raises(NotFoundError):
        Snapshot.from_id(UNKNOWN_SNAPSHOT)
    with pytest.raises(NotFoundError):
        Sandbox.create(snapshot=UNKNOWN_SNAPSHOT)
    assert Snapshot.list(sandbox_id=UNKNOWN_SANDBOX) == []

    sb = Sandbox.create(image="debian", memory=256)
    cleanup.append(sb)
    # Fork counts out of range.
    for n in (0, -1, 33, 100):
        with pytest.raises(InvalidArgumentError) as exc:
            sb.fork(n)
        no_traceback(str(exc.value))
    r = http.post(f"/v1/sandboxes/{sb.id}/fork", json={"count": "3"})
    assert r.status_code == 422, r.text
    no_traceback(r.text)
    r = http.post(f"/v1/sandboxes/{sb.id}/snapshots", json={"name": "x" * 201})
    assert r.status_code == 422, r.text
    no_traceback(r.text)
    assert sb.info().status == "running"

    # A paused sandbox cannot be snapshotted or forked (resume it first).
    sb.pause()
    on_paused: list[Callable[[], object]] = [sb.snapshot, lambda: sb.fork(2)]
    for call in on_paused:
        with pytest.raises(SandboxPausedError) as paused:
            call()
        no_traceback(str(paused.value))
    assert sb.info().status == "paused"
    sb.resume()

    # An ended sandbox: everything says it ended.
    sb.terminate()
    on_ended: list[Callable[[], object]] = [
        sb.pause,
        sb.resume,
        sb.snapshot,
        sb.snapshot_filesystem,
        lambda: sb.fork(2),
    ]
    for call in on_ended:
        with pytest.raises(SandboxTerminatedError) as ended:
            call()
        no_traceback(str(ended.value))
    assert sb.info().status == "terminated"
    assert Snapshot.list(sandbox_id=sb.id) == []


# ------------------------------------------------------------------------------------ CLI


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STOCKADE), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )


def ok(*args: str) -> str:
    r = cli(*args)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


def test_cli(server: LiveServer, cleanup: list[Sandbox]) -> None:
    sb = Sandbox.create(image="debian", memory=256)
    cleanup.append(sb)
    sb.files.write("/data/f.txt", "from the cli")

    sn = ok("snapshot", sb.id).strip()
    assert sn.startswith("sn-") and sn in snapshot_ids()
    labelled = json.loads(ok("snapshot", sb.id, "--name", "cli-label", "--json"))
    assert labelled["id"].startswith("sn-") and labelled["id"] != sn
    assert (labelled["sandbox_id"], labelled["image"], labelled["name"]) == (
        sb.id,
        "debian",
        "cli-label",
    )
    assert labelled["size"] > 0

    table = ok("snapshot", "ls")
    assert sn in table and labelled["id"] in table and "cli-label" in table
    listed = {s["id"]: s for s in json.loads(ok("snapshot", "ls", "--json"))}
    assert {sn, labelled["id"]} <= set(listed)
    assert listed[labelled["id"]] == labelled

    restored_id = ok("create", "--snapshot", sn).strip()
    restored = Sandbox.from_id(restored_id)
    cleanup.append(restored)
    assert restored.last_info.status == "running"
    assert restored.last_info.snapshot == sn
    assert restored.files.read_text("/data/f.txt") == "from the cli"

    forked = ok("fork", sb.id, "-n", "3").split()
    forks = [Sandbox.from_id(i) for i in forked]
    cleanup.extend(forks)
    assert len(set(forked)) == 3 and sb.id not in forked
    for f in forks:
        assert f.last_info.status == "running"
        assert f.files.read_text("/data/f.txt") == "from the cli"

    assert ok("pause", sb.id) == f"{sb.id} paused\n"
    assert sb.info().status == "paused"
    assert ok("resume", sb.id) == f"{sb.id} running\n"
    assert sb.run("cat /data/f.txt").stdout == "from the cli"

    name = f"{unique('cli-fs')}:v1"
    assert ok("snapshot", sb.id, "--fs-only", "--name", name) == f"{name}\n"
    from_image = Sandbox.create(image=name, memory=256)
    cleanup.append(from_image)
    assert from_image.files.read_text("/data/f.txt") == "from the cli"
    with Client() as client:
        client.delete_image(name)

    assert ok("snapshot", "rm", sn, labelled["id"]).split() == [sn, labelled["id"]]
    assert not {sn, labelled["id"]} & {s["id"] for s in json.loads(ok("snapshot", "ls", "--json"))}

    # Errors: a clear message and exit status 1, never a traceback.
    for args in (
        ("snapshot", "rm", UNKNOWN_SNAPSHOT),
        ("snapshot", UNKNOWN_SANDBOX),
        ("pause", UNKNOWN_SANDBOX),
        ("resume", UNKNOWN_SANDBOX),
        ("fork", UNKNOWN_SANDBOX, "-n", "2"),
        ("create", "--snapshot", UNKNOWN_SNAPSHOT),
    ):
        r = cli(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert "does not exist" in r.stderr, (args, r.stderr)
        no_traceback(r.stderr + r.stdout)
    r = cli("fork", sb.id, "-n", "0")
    assert r.returncode == 1, r.stderr
    assert "between 1 and 32" in r.stderr
    no_traceback(r.stderr + r.stdout)
