"""``sb.files.changes()`` against real gVisor sandboxes: what an agent's reviewer sees."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockade import FileChange, Sandbox, SandboxTerminatedError

from .conftest import LiveServer

STOCKADE = Path(sys.executable).parent / "stockade"


def _changes(sb: Sandbox, since: Any = None) -> list[tuple[str, str]]:
    return [(c.path, c.kind) for c in sb.files.changes(since=since)]


@pytest.fixture
def fresh(server: LiveServer) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(image="debian", timeout=300)
    try:
        yield sandbox
    finally:
        sandbox.terminate()


@pytest.mark.parametrize("image", ["debian", "python"])
def test_a_fresh_sandbox_reports_nothing(server: LiveServer, image: str) -> None:
    with Sandbox.create(image=image, timeout=300) as sb:
        sb.run("true").check()
        assert sb.files.changes() == []
        assert sb.files.changes().truncated is False


def test_added_modified_and_deleted(fresh: Sandbox) -> None:
    doc = fresh.files.list("/usr/share/doc/bash")
    assert doc, "the debian image documents bash"
    fresh.run(
        "echo extra >> /etc/debian_version"  # modified
        " && chmod 600 /etc/hostname"  # modified: mode only
        " && touch /bin/ls"  # copied up, same bytes: not a change
        " && rm -rf /usr/share/doc/apt"  # one line for the whole directory
        " && rm /etc/issue"
        " && mkdir -p /root/work/sub && echo hi > /root/work/sub/a.txt"
        " && ln -s /etc/passwd /root/work/link"
        " && echo gone > /root/scratch && rm /root/scratch"  # created, then deleted
        " && echo mem > /tmp/in-memory"  # /tmp is a tmpfs, not the sandbox's disk
        # A directory of the image replaced by a new one: its old entries are deleted.
        " && rm -rf /usr/share/doc/bash && mkdir /usr/share/doc/bash"
        " && echo new > /usr/share/doc/bash/NEW"
    ).check()
    fresh.files.write("/root/uploaded.txt", "via the API")
    expected = [
        ("/etc/debian_version", "modified"),
        ("/etc/hostname", "modified"),
        ("/etc/issue", "deleted"),
        ("/root/uploaded.txt", "added"),
        ("/root/work", "added"),
        ("/root/work/link", "added"),
        ("/root/work/sub", "added"),
        ("/root/work/sub/a.txt", "added"),
        ("/usr/share/doc/apt", "deleted"),
        *sorted(
            [(f"/usr/share/doc/bash/{e.name}", "deleted") for e in doc]
            + [("/usr/share/doc/bash/NEW", "added")]
        ),
    ]
    assert _changes(fresh) == expected
    # Unpacks as (path, kind), as the docs promise.
    for path, kind in fresh.files.changes():
        assert path.startswith("/") and kind in ("added", "modified", "deleted")
    assert FileChange("/etc/issue", "deleted") in fresh.files.changes()


def test_putting_a_file_back_as_it_was_is_no_change(fresh: Sandbox) -> None:
    fresh.run("cp -p /etc/debian_version /root/v && echo x > /etc/debian_version").check()
    assert ("/etc/debian_version", "modified") in _changes(fresh)
    # Same bytes, same mode, same times: the copy in the upper matches the image again.
    fresh.run("cat /root/v > /etc/debian_version && touch -r /root/v /etc/debian_version").check()
    fresh.run("rm /root/v").check()
    assert _changes(fresh) == []


def test_the_working_directory_is_not_a_change(server: LiveServer) -> None:
    with Sandbox.create(image="debian", workdir="/srv/app", timeout=300) as sb:
        assert sb.files.changes() == []
        sb.run("echo 'print(1)' > main.py").check()
        assert _changes(sb) == [("/srv/app/main.py", "added")]


def test_http_and_cli(fresh: Sandbox, http: httpx.Client) -> None:
    fresh.run("echo hi > /root/a && rm /etc/issue").check()
    resp = http.get(f"/v1/sandboxes/{fresh.id}/files/changes")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "changes": [
            {"path": "/etc/issue", "kind": "deleted"},
            {"path": "/root/a", "kind": "added"},
        ],
        "truncated": False,
    }
    bad = http.get(f"/v1/sandboxes/{fresh.id}/files/changes", params={"since": "../x"})
    assert bad.status_code == 422, bad.text
    missing = http.get(f"/v1/sandboxes/{fresh.id}/files/changes", params={"since": "sn-nope"})
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    gone = http.get("/v1/sandboxes/sb-nope/files/changes")
    assert gone.status_code == 404

    out = subprocess.run(
        [str(STOCKADE), "changes", fresh.id],
        capture_output=True, text=True, timeout=60, env=os.environ.copy(), check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == "D /etc/issue\nA /root/a\n"


def test_an_ended_sandbox_has_no_changes_to_show(server: LiveServer) -> None:
    sb = Sandbox.create(image="debian", timeout=300)
    sb.terminate()
    with pytest.raises(SandboxTerminatedError):
        sb.files.changes()


# -- with snapshots and pauses -------------------------------------------------------------


def test_since_a_snapshot(fresh: Sandbox) -> None:
    fresh.run("echo a > /root/a && echo keep > /root/keep && rm /etc/issue").check()
    snap = fresh.snapshot()
    fresh.run("rm /root/a && echo b > /root/b && echo x >> /etc/debian_version").check()
    expected = [
        ("/etc/debian_version", "modified"),
        ("/root/a", "deleted"),
        ("/root/b", "added"),
    ]
    assert _changes(fresh, since=snap) == expected
    assert _changes(fresh, since=snap.id) == expected
    # A sandbox restored from the snapshot starts where it was: nothing since it.
    with Sandbox.create(snapshot=snap, timeout=300) as copy:
        assert copy.files.changes(since=snap) == []
        assert ("/root/keep", "added") in _changes(copy)


def test_a_paused_sandbox(fresh: Sandbox) -> None:
    fresh.run("echo hi > /root/a").check()
    fresh.pause()
    assert _changes(fresh) == [("/root/a", "added")]
    assert fresh.info().status == "paused"  # reading its changes did not wake it
