"""``files.changes()``: the overlay diff on fake layer trees, its route, the SDK and the CLI.

The trees are built the way overlayfs writes them: whiteouts are real 0/0 character
devices and opaque directories carry ``trusted.overlay.opaque=y``, so these tests need
root (as the server does).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi import Depends, FastAPI

from stockade import Client, FileChange, FileChanges, Sandbox, ServerError
from stockade.cli._common import CliState
from stockade.cli.main import cli
from stockade.errors import ConflictError, NotFoundError, SandboxTerminatedError
from stockade.server.api import files
from stockade.server.api.deps import require_token
from stockade.server.api.errors import install_error_handlers
from stockade.server.service.changes import (
    MAX_DEPTH,
    STOCKADE_PATHS,
    Change,
    ChangeList,
    diff,
    ignored_paths,
    is_whiteout,
    quiet_paths,
    sandbox_changes,
)
from stockade.server.state.records import SandboxRecord, SandboxStatus
from tests.unit.fakes import operator_access


@pytest.fixture(autouse=True)
def _root() -> None:
    # Whiteouts (character devices) and trusted.* xattrs need root, as `make test` runs.
    if os.geteuid() != 0:
        pytest.fail("these tests make whiteouts and trusted.* xattrs: run them as root")


WHITEOUT = object()
OPAQUE = object()  # an opaque empty directory
DIR = object()


@dataclass(frozen=True)
class Link:
    target: str


Spec = dict[str, Any]


def build(root: Path, spec: Spec) -> Path:
    """Make ``root`` hold ``spec``: path → bytes/str (a file), DIR, OPAQUE, WHITEOUT or Link."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, what in sorted(spec.items()):
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if what is DIR:
            path.mkdir(exist_ok=True)
        elif what is OPAQUE:
            path.mkdir(exist_ok=True)
            os.setxattr(path, "trusted.overlay.opaque", b"y")
        elif what is WHITEOUT:
            os.mknod(path, stat.S_IFCHR | 0o000, 0)
        elif isinstance(what, Link):
            path.symlink_to(what.target)
        else:
            path.write_bytes(what.encode() if isinstance(what, str) else what)
    return root


@dataclass
class Layers:
    """An image of two layers (top, bottom) and a sandbox's upper, under tmp_path."""

    tmp: Path
    top: Path = field(init=False)
    bottom: Path = field(init=False)
    upper: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bottom = build(
            self.tmp / "bottom",
            {
                "/etc/os-release": "NAME=Debian\n",
                "/etc/hostname": "box\n",
                "/etc/motd": "hello\n",
                "/usr/bin/ls": b"\x7fELF-ls",
                "/usr/share/doc/apt/README": "apt\n",
                "/usr/share/doc/apt/changelog": "1.0\n",
                "/usr/share/doc/bash/README": "bash\n",
                "/opt/app/a": "a",
                "/opt/app/b": "b",
                "/opt/app/sub/c": "c",
                "/root/.bashrc": "PS1=#\n",
                "/tmp": DIR,
                "/lib": Link("usr/lib"),
                "/usr/lib/x": "x",
            },
        )
        self.top = build(self.tmp / "top", {"/etc/motd": WHITEOUT, "/opt/app/extra": "e"})
        self.upper = build(self.tmp / "upper", {})

    @property
    def lowers(self) -> list[Path]:
        return [self.top, self.bottom]

    def changes(self, base: Path | None = None, **kwargs: Any) -> list[tuple[str, str]]:
        result = diff(self.upper, self.lowers, base, STOCKADE_PATHS, **kwargs)
        assert not result.truncated
        return [(c.path, c.kind) for c in result.changes]

    def copy_up(self, rel: str, root: Path | None = None) -> Path:
        """What overlayfs does before a write: copy a lower file into the upper, with
        its mode, owner and times."""
        root = root or self.upper
        source = next(
            layer / rel.lstrip("/") for layer in self.lowers if (layer / rel.lstrip("/")).exists()
        )
        dest = root / rel.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(source.read_bytes())
        st = source.stat()
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
        return dest


@pytest.fixture
def fs(tmp_path: Path) -> Layers:
    return Layers(tmp_path)


# -- the diff ------------------------------------------------------------------------------


def test_an_empty_upper_changes_nothing(fs: Layers) -> None:
    assert fs.changes() == []
    assert diff(fs.upper, fs.lowers, None) == ChangeList((), truncated=False)


def test_added_files_and_directories(fs: Layers) -> None:
    build(fs.upper, {"/root/notes.txt": "n", "/srv/app/main.py": "print(1)", "/srv/app/d": DIR})
    assert fs.changes() == [
        ("/root/notes.txt", "added"),
        # A new directory and everything in it: new files are what a reviewer reads.
        ("/srv", "added"),
        ("/srv/app", "added"),
        ("/srv/app/d", "added"),
        ("/srv/app/main.py", "added"),
    ]


def test_modified_content_size_mode_owner_and_links(fs: Layers) -> None:
    fs.copy_up("/etc/os-release").write_text("NAME=Hacked\n")  # same size, other bytes
    fs.copy_up("/etc/hostname").write_text("a longer name\n")
    os.chmod(fs.copy_up("/usr/bin/ls"), 0o4755)
    os.chown(fs.copy_up("/root/.bashrc"), 1000, 1000)
    (fs.upper / "lib").symlink_to("usr/lib64")
    assert fs.changes() == [
        ("/etc/hostname", "modified"),
        ("/etc/os-release", "modified"),
        ("/lib", "modified"),
        ("/root/.bashrc", "modified"),
        ("/usr/bin/ls", "modified"),
    ]


def test_touched_and_copied_up_files_are_unchanged(fs: Layers) -> None:
    # `touch` and opening for writing copy a file up; its bytes stay the image's.
    os.utime(fs.copy_up("/etc/os-release"), (1, 1))
    fs.copy_up("/usr/share/doc/apt/README")
    # Directories are copied up on the way to their entries; that is no change either.
    os.utime(fs.upper / "usr", (2, 2))
    assert fs.changes() == []


def test_a_directory_whose_mode_changed_is_modified(fs: Layers) -> None:
    (fs.upper / "opt/app").mkdir(parents=True)
    os.chmod(fs.upper / "opt/app", 0o700)
    assert fs.changes() == [("/opt/app", "modified")]


def test_deleted_files_and_directories(fs: Layers) -> None:
    build(fs.upper, {"/etc/hostname": WHITEOUT, "/usr/share/doc/apt": WHITEOUT})
    # A deleted directory is one line, not one per file it held.
    assert fs.changes() == [("/etc/hostname", "deleted"), ("/usr/share/doc/apt", "deleted")]


def test_whiteouts_of_the_image_itself_count(fs: Layers) -> None:
    # /etc/motd is deleted by the image's top layer: a whiteout in the upper changes
    # nothing, and writing it again adds it.
    build(fs.upper, {"/etc/motd": WHITEOUT})
    assert fs.changes() == []
    (fs.upper / "etc/motd").unlink()
    (fs.upper / "etc/motd").write_text("again\n")
    assert fs.changes() == [("/etc/motd", "added")]


def test_an_opaque_directory_deletes_what_it_hides(fs: Layers) -> None:
    # `rm -rf /opt/app && mkdir /opt/app && echo > /opt/app/new`
    build(fs.upper, {"/opt/app": OPAQUE, "/opt/app/new": "n", "/opt/app/b": "b"})
    assert fs.changes() == [
        ("/opt/app/a", "deleted"),
        ("/opt/app/extra", "deleted"),  # from the top layer: hidden as well
        ("/opt/app/new", "added"),
        ("/opt/app/sub", "deleted"),  # and not sub/c: it went with sub
    ]


def test_opaque_directories_in_the_image(fs: Layers) -> None:
    # The image's top layer replaced /opt/app: the bottom's files are not in the image.
    build(fs.top, {"/opt/app": OPAQUE})
    build(fs.upper, {"/opt/app": OPAQUE, "/opt/app/new": "n"})
    assert fs.changes() == [("/opt/app/extra", "deleted"), ("/opt/app/new", "added")]


def test_type_changes(fs: Layers) -> None:
    # A directory replaced by a file, and a file by a directory (upper dirs that replace
    # a non-directory are opaque by nature).
    build(fs.upper, {"/usr/share/doc/bash": "now a file", "/etc/hostname/inner": "x"})
    assert fs.changes() == [
        ("/etc/hostname", "modified"),
        ("/etc/hostname/inner", "added"),
        ("/usr/share/doc/bash", "modified"),
    ]


def test_special_files(fs: Layers) -> None:
    os.mkfifo(fs.upper / "fifo")
    os.mknod(fs.upper / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert fs.changes() == [("/fifo", "added"), ("/null", "added")]


def test_created_then_deleted_is_no_change(fs: Layers) -> None:
    # Overlayfs removes a file that exists only in the upper without a trace; a
    # whiteout of something the image never had means nothing either.
    build(fs.upper, {"/root/gone": WHITEOUT})
    assert fs.changes() == []


def test_stockade_paths_and_volumes_are_ignored(fs: Layers) -> None:
    build(
        fs.upper,
        {
            "/.stockade/agent": "x",
            "/etc/hosts": "",  # runsc's mount points for the bind-mounted files
            "/etc/resolv.conf": "",
            "/proc": DIR,
            "/sys": DIR,
            "/dev/null": "",
            "/data": DIR,
            "/etc/hostsx": "not ignored",
        },
    )
    record = _record(volumes={"/data": "vol-1"})
    result = diff(fs.upper, fs.lowers, None, ignored_paths(record))
    assert result.changes == (Change("/etc/hostsx", "added"),)


def test_the_working_directory_is_quiet(fs: Layers) -> None:
    build(fs.upper, {"/srv/app/main.py": "x", "/srv/other": DIR})
    record = _record(workdir="/srv/app")
    assert quiet_paths(record) == {"/srv", "/srv/app"}
    assert quiet_paths(_record()) == frozenset()
    assert fs.changes(quiet=quiet_paths(record)) == [
        ("/srv/app/main.py", "added"),
        ("/srv/other", "added"),
    ]


def test_since_a_snapshot(fs: Layers) -> None:
    snap = fs.tmp / "snap"
    build(snap, {"/root/kept": "k", "/root/dropped": "d", "/etc/hostname": WHITEOUT})
    fs.copy_up("/etc/os-release", snap).write_text("NAME=Snappy\n")
    # The sandbox as it is now: everything the snapshot had (as copies), then more work.
    build(fs.upper, {"/root/kept": "k", "/root/new": "n", "/etc/hostname": "back\n"})
    fs.copy_up("/etc/os-release").write_text("NAME=Snappy\n")
    fs.copy_up("/usr/bin/ls").write_bytes(b"\x7fELF-LS")
    assert fs.changes(snap) == [
        ("/etc/hostname", "added"),  # deleted in the snapshot, written since
        ("/root/dropped", "deleted"),  # in the snapshot's writes only: gone now
        ("/root/new", "added"),
        ("/usr/bin/ls", "modified"),
    ]
    # Against the image, the same upper reads differently.
    assert ("/etc/os-release", "modified") in fs.changes()


def _sparse(path: Path, size: int, data: dict[int, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, chunk in data.items():
            f.seek(offset)
            f.write(chunk)


def test_since_a_snapshot_sparse_terabytes_cost_seeks_not_reads(fs: Layers) -> None:
    """Sandboxed code may leave 1 TiB sparse files: unchanged ones compare by their data
    alone, a change past a hole is still found, and a hole equals written zeros."""
    snap = fs.tmp / "snap"
    tib = 1 << 40
    for root in (snap, fs.upper):
        _sparse(root / "big" / "same", tib, {0: b"head", tib - 4: b"tail"})
        _sparse(root / "big" / "zeros", 4 << 20, {})
    _sparse(snap / "big" / "later", tib, {1 << 39: b"one"})
    _sparse(fs.upper / "big" / "later", tib, {1 << 39: b"two"})
    (fs.upper / "big" / "zeros").write_bytes(bytes(4 << 20))  # the same bytes, not a hole
    result = diff(fs.upper, fs.lowers, snap, STOCKADE_PATHS, read_budget=64 << 20)
    assert [(c.path, c.kind) for c in result.changes] == [("/big/later", "modified")]


def test_past_the_read_budget_equal_sized_files_count_as_modified(fs: Layers) -> None:
    snap = fs.tmp / "snap"
    for root in (snap, fs.upper):
        build(root, {"/data/a": b"x" * (1 << 20), "/data/b": b"y" * (1 << 20)})
    assert fs.changes(snap) == []  # within the default budget: read, and the same
    result = diff(fs.upper, fs.lowers, snap, STOCKADE_PATHS, read_budget=(1 << 20) + (1 << 19))
    assert [(c.path, c.kind) for c in result.changes] == [("/data/b", "modified")]


def test_since_a_snapshot_with_opaque_directories(fs: Layers) -> None:
    snap = build(fs.tmp / "snap", {"/opt/app": OPAQUE, "/opt/app/x": "x"})
    assert fs.changes(snap) == [
        ("/opt/app/a", "added"),  # hidden by the snapshot, the image's again now
        ("/opt/app/b", "added"),
        ("/opt/app/extra", "added"),
        ("/opt/app/sub", "added"),
        ("/opt/app/sub/c", "added"),
        ("/opt/app/x", "deleted"),
    ]


def test_the_same_upper_is_no_change(fs: Layers) -> None:
    build(fs.upper, {"/root/a": "a" * 10000, "/etc/hostname": WHITEOUT, "/opt/app": OPAQUE})
    assert fs.changes(fs.upper) == []


def test_symlinks_in_the_upper_are_never_followed(
    fs: Layers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = build(
        tmp_path / "host",
        {"/a": "a-but-longer", "/b": "b", "/sub/c": "c", "/README": "apt\n"},
    )
    # A directory replaced by a link to a host directory with the same names, and a file
    # replaced by a link to a host file with the same size.
    (fs.upper / "opt").mkdir()
    (fs.upper / "opt/app").symlink_to(outside)
    (fs.upper / "usr/share/doc/apt").mkdir(parents=True)
    (fs.upper / "usr/share/doc/apt/README").symlink_to(outside / "README")
    # A link that would escape if the walk went through it by name.
    (fs.upper / "root").symlink_to(outside)
    opened: list[str] = []
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        fd = real_open(path, flags, *args, **kwargs)
        opened.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fd

    monkeypatch.setattr(os, "open", spy)
    assert fs.changes() == [
        ("/opt/app", "modified"),
        ("/root", "modified"),
        ("/usr/share/doc/apt/README", "modified"),
    ]
    assert not [p for p in opened if p.startswith(str(outside))]


def test_metacopy_files_take_their_bytes_from_the_image(fs: Layers) -> None:
    # overlayfs metacopy=on: a chmod copies up the metadata only, the data stays below.
    upper = fs.upper / "etc/os-release"
    upper.parent.mkdir()
    with upper.open("wb") as f:
        f.truncate(len("NAME=Debian\n"))
    os.setxattr(upper, "trusted.overlay.metacopy", b"")
    assert fs.changes() == []


def test_the_cap(fs: Layers) -> None:
    build(fs.upper, {f"/many/{i:03}": "x" for i in range(50)})
    result = diff(fs.upper, fs.lowers, None, limit=10)
    assert result.truncated
    assert [c.path for c in result.changes] == ["/many", *(f"/many/{i:03}" for i in range(9))]
    exact = diff(fs.upper, fs.lowers, None, limit=51)
    assert not exact.truncated and len(exact.changes) == 51
    with pytest.raises(ValueError, match="limit"):
        diff(fs.upper, fs.lowers, None, limit=-1)


def test_deep_nesting_is_cut_off(fs: Layers) -> None:
    deep = "/".join(["d"] * (MAX_DEPTH + 20))
    build(fs.upper, {f"/{deep}/file": "x", "/z": "after"})
    result = diff(fs.upper, fs.lowers, None)
    assert result.truncated
    paths = [c.path for c in result.changes]
    assert len(paths) == MAX_DEPTH + 1
    assert paths[-2] == "/" + "/".join(["d"] * MAX_DEPTH)
    assert paths[-1] == "/z"  # the walk went on beside it


def test_out_of_descriptors_answers_what_was_found(
    fs: Layers, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(fs.upper, {"/a": "x", "/b/c": "x", "/d": "x"})
    real_open = os.open

    def scarce(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "b":
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", scarce)
    result = diff(fs.upper, fs.lowers, None)
    assert result == ChangeList((Change("/a", "added"), Change("/b", "added")), truncated=True)


def test_tree_order_and_odd_names(fs: Layers) -> None:
    build(fs.upper, {"/a-b": "x", "/a/b": "x", "/a.c": "x"})
    (fs.upper / os.fsdecode(b"bad-\xff-name")).write_text("x")
    assert [p for p, _ in fs.changes()] == ["/a", "/a/b", "/a-b", "/a.c", "/bad-\\xff-name"]


def test_whiteout_helper(tmp_path: Path) -> None:
    os.mknod(tmp_path / "w", stat.S_IFCHR, 0)
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert is_whiteout(os.lstat(tmp_path / "w"))
    assert not is_whiteout(os.lstat(tmp_path / "null"))
    assert not is_whiteout(os.lstat(tmp_path))


# -- the service glue, and the route ------------------------------------------------------


def _record(**changes: Any) -> SandboxRecord:
    record = SandboxRecord(
        id="sb-1", image="debian", cpu=1.0, memory=512, disk=1024, timeout=300.0,
        status=SandboxStatus.RUNNING,
    )  # fmt: skip
    for key, value in changes.items():
        setattr(record, key, value)
    return record


@dataclass
class FakeSandboxes:
    upper: Path
    lowers: list[Path]
    record: SandboxRecord = field(default_factory=_record)
    end_after: int | None = None  # fs_layers calls before the sandbox "ends"
    calls: int = 0

    async def fs_layers(self, sandbox_id: str) -> tuple[Path, tuple[Path, ...]]:
        await self.get(sandbox_id)
        self.calls += 1
        if self.end_after is not None and self.calls > self.end_after:
            raise SandboxTerminatedError(f"sandbox {sandbox_id} timed out")
        return self.upper, tuple(self.lowers)

    async def get(self, sandbox_id: str) -> SandboxRecord:
        if sandbox_id != self.record.id:
            raise NotFoundError(f"sandbox {sandbox_id} does not exist")
        return self.record


@dataclass
class FakeSnapshots:
    dirs: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, SandboxRecord] = field(default_factory=dict)

    async def files_dir(self, snapshot_id: str) -> Path:
        if snapshot_id not in self.dirs:
            raise NotFoundError(f"snapshot {snapshot_id} does not exist")
        return self.dirs[snapshot_id]

    async def get(self, snapshot_id: str) -> SimpleNamespace:
        source = self.sources.get(snapshot_id, _record())
        return SimpleNamespace(source=lambda: source)


@pytest.fixture
def services(fs: Layers) -> SimpleNamespace:
    return SimpleNamespace(sandboxes=FakeSandboxes(fs.upper, fs.lowers), snapshots=FakeSnapshots())


@pytest.fixture
async def http(services: SimpleNamespace) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(files.router, dependencies=[Depends(require_token)])
    app.state.services = services
    services.config = SimpleNamespace(token="t")
    services.access = operator_access("t")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"Authorization": "Bearer t"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as c:
        yield c


async def test_route(http: httpx.AsyncClient, services: SimpleNamespace, fs: Layers) -> None:
    build(fs.upper, {"/root/new": "n", "/etc/hostname": WHITEOUT, "/etc/hosts": ""})
    resp = await http.get("/v1/sandboxes/sb-1/files/changes")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "changes": [
            {"path": "/etc/hostname", "kind": "deleted"},
            {"path": "/root/new", "kind": "added"},
        ],
        "truncated": False,
    }
    snap = build(fs.tmp / "snap", {"/root/new": "n"})
    services.snapshots.dirs["sn-1"] = snap
    resp = await http.get("/v1/sandboxes/sb-1/files/changes", params={"since": "sn-1"})
    assert resp.json()["changes"] == [{"path": "/etc/hostname", "kind": "deleted"}]

    # A snapshot of a sandbox of another image: its writes mean nothing over these layers.
    services.sandboxes.record.layers = [str(p) for p in fs.lowers]
    services.snapshots.dirs["sn-2"] = snap
    services.snapshots.sources["sn-2"] = _record(image="alpine", layers=["/elsewhere"])
    resp = await http.get("/v1/sandboxes/sb-1/files/changes", params={"since": "sn-2"})
    assert resp.status_code == 422
    assert "another image (alpine)" in resp.json()["error"]["message"]


async def test_route_errors(http: httpx.AsyncClient, services: SimpleNamespace) -> None:
    resp = await http.get("/v1/sandboxes/sb-9/files/changes")
    assert (resp.status_code, resp.json()["error"]["code"]) == (404, "not_found")
    resp = await http.get("/v1/sandboxes/sb-1/files/changes", params={"since": "sn-404"})
    assert (resp.status_code, resp.json()["error"]["code"]) == (404, "not_found")
    resp = await http.get("/v1/sandboxes/sb-1/files/changes", params={"since": "../../etc"})
    assert resp.status_code == 422
    assert "snapshot ID" in resp.json()["error"]["message"]


async def test_a_sandbox_that_ends_during_the_walk(services: SimpleNamespace, fs: Layers) -> None:
    services.sandboxes.end_after = 1
    with pytest.raises(SandboxTerminatedError, match="timed out"):
        await sandbox_changes(services.sandboxes, services.snapshots, "sb-1")
    # Its disk gone under the walk: how it ended, or else "try again".
    services.sandboxes.calls = 0
    services.sandboxes.upper = fs.tmp / "unmounted"
    with pytest.raises(SandboxTerminatedError):
        await sandbox_changes(services.sandboxes, services.snapshots, "sb-1")
    services.sandboxes.end_after = None
    with pytest.raises(ConflictError, match="try again"):
        await sandbox_changes(services.sandboxes, services.snapshots, "sb-1")


async def test_the_cap_reaches_the_route_answer(services: SimpleNamespace, fs: Layers) -> None:
    build(fs.upper, {f"/many/{i}": "x" for i in range(5)})
    result = await sandbox_changes(services.sandboxes, services.snapshots, "sb-1", limit=3)
    assert result.truncated and len(result.changes) == 3


# -- the SDK and the CLI ------------------------------------------------------------------


def _client(answer: Callable[[httpx.Request], httpx.Response], seen: list[httpx.Request]) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/sandboxes/sb-1":
            return httpx.Response(200, json=_sandbox_json())
        return answer(request)

    return Client("http://test", "tok", transport=httpx.MockTransport(handler))


def _sandbox_json() -> dict[str, Any]:
    from tests.unit.fakes import sandbox_record

    return sandbox_record("sb-1")


ANSWER = {
    "changes": [
        {"path": "/etc/motd", "kind": "modified"},
        {"path": "/root/new\nline", "kind": "added"},
        {"path": "/usr/share/doc", "kind": "deleted"},
    ],
    "truncated": True,
}


def test_sdk_changes() -> None:
    seen: list[httpx.Request] = []
    with _client(lambda r: httpx.Response(200, json=ANSWER), seen) as client:
        sb = Sandbox.from_id("sb-1", client=client)
        found = sb.files.changes()
        assert seen[-1].url.path == "/v1/sandboxes/sb-1/files/changes"
        assert "since" not in seen[-1].url.params
        assert isinstance(found, FileChanges) and isinstance(found, list)
        assert found.truncated
        assert found[0] == FileChange("/etc/motd", "modified")
        assert [kind for _, kind in found] == ["modified", "added", "deleted"]
        assert found[0].path == "/etc/motd"
        sb.files.changes(since="sn-1")
        assert seen[-1].url.params["since"] == "sn-1"
        sb.files.changes(since=SimpleNamespace(id="sn-2"))
        assert seen[-1].url.params["since"] == "sn-2"


def test_sdk_changes_rejects_a_malformed_answer() -> None:
    with _client(lambda r: httpx.Response(200, json={"changes": "x"}), []) as client:
        sb = Sandbox.from_id("sb-1", client=client)
        with pytest.raises(ServerError, match="change list"):
            sb.files.changes()
    bad_entry = {"changes": [{"path": 1}]}
    with (
        _client(lambda r: httpx.Response(200, json=bad_entry), []) as c2,
        pytest.raises(ServerError),
    ):
        Sandbox.from_id("sb-1", client=c2).files.changes()


def _cli(*args: str, answer: dict[str, Any] = ANSWER) -> tuple[int, str, str]:
    seen: list[httpx.Request] = []

    def factory(url: str | None, token: str | None) -> Client:
        return _client(lambda r: httpx.Response(200, json=answer), seen)

    result = CliRunner().invoke(cli, list(args), obj=CliState(client_factory=factory))
    if seen and len(args) > 2:
        assert seen[-1].url.params.get("since") == args[args.index("--since") + 1]
    return result.exit_code, result.stdout, result.stderr


def test_cli_short_format() -> None:
    code, out, err = _cli("changes", "sb-1")
    assert code == 0, err
    # A path with a newline is quoted, so that every change is one line.
    assert out == 'M /etc/motd\nA "/root/new\\nline"\nD /usr/share/doc\n'
    assert "the list is incomplete (3 shown)" in err


def test_cli_since_and_json() -> None:
    code, out, err = _cli("changes", "sb-1", "--since", "sn-1", "--json")
    assert code == 0, err
    assert json.loads(out) == ANSWER
    code, out, _ = _cli("changes", "sb-1", answer={"changes": [], "truncated": False})
    assert (code, out) == (0, "")
