"""Volumes without mounting anything: the service's checks and bookkeeping on a real
SQLite store, the HTTP routes over it, the SDK through the routes and the CLI.

Making a disk needs root and loop devices, so ``make_disk`` and the remount are replaced
by stand-ins that create plain directories; tests/integration/test_volumes.py covers the
real disks under gVisor.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from click.testing import CliRunner
from fastapi import Depends, FastAPI

from stockade import (
    AsyncClient,
    AsyncVolume,
    Client,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    Volume,
)
from stockade.cli._common import CliState
from stockade.cli.main import cli
from stockade.errors import QuotaExceededError, ServerError
from stockade.server.api import sandboxes, volumes
from stockade.server.api.deps import require_token
from stockade.server.api.errors import install_error_handlers
from stockade.server.config import ServerConfig
from stockade.server.runtime import proc
from stockade.server.service import volumes as volume_module
from stockade.server.service.creation import Creator
from stockade.server.service.quotas import Quotas
from stockade.server.service.sandboxes import CreateRequest
from stockade.server.service.volumes import (
    DEFAULT_SIZE_MIB,
    MAX_MOUNTS,
    VolumeService,
    check_mount_path,
    check_name,
)
from stockade.server.state.records import (
    SandboxRecord,
    SandboxStatus,
    SnapshotRecord,
    VolumeRecord,
)
from stockade.server.state.store import SQLiteStore
from tests.unit.fakes import operator_access

TOKEN = "admin-token"


# -- names and mount paths ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["data", "a", "0", "model-cache", "v1.2_x", "x" * 63])
def test_good_names(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Data",
        "-x",
        ".x",
        "_x",
        "x" * 64,
        "a/b",
        "a b",
        "é",
        "..",
        "x\n",
        "vol-0123456789abcdef",
    ],
)
def test_bad_names_say_the_rule(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="volume name") as info:
        check_name(name)
    assert (
        "lowercase letters" in info.value.message or "looks like a volume ID" in info.value.message
    )


@pytest.mark.parametrize("path", ["/data", "/mnt/cache", "/home/user/.cache", "/etc/app", "/tmp"])
def test_good_mount_paths(path: str) -> None:
    check_mount_path(path)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("data", "absolute path"),
        ("", "absolute path"),
        ("/", "over /"),
        ("/data/", "write it as '/data'"),
        ("/data/../etc", "write it as '/etc'"),
        ("/a/./b", "write it as '/a/b'"),
        ("//data", "write it as '/data'"),
        ("/proc", "/proc, which belongs"),
        ("/proc/self", "/proc, which belongs"),
        ("/dev/shm", "/dev, which belongs"),
        ("/sys/fs", "/sys, which belongs"),
        ("/.stockade", "/.stockade, which belongs"),
        ("/.stockade/agent", "/.stockade, which belongs"),
        ("/etc/hosts", "would hide /etc/hosts"),
        ("/etc/resolv.conf", "would hide /etc/resolv.conf"),
        ("/etc", "would hide /etc/hosts"),
        ("/data\x00x", "control characters"),
        ("/" + "x" * 1100, "at most 1024"),
    ],
)
def test_bad_mount_paths(path: str, words: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"volume mount path|over /") as info:
        check_mount_path(path)
    assert words in info.value.message


def test_devices_is_not_dev() -> None:
    check_mount_path("/devices")  # shares a prefix with /dev, not the tree
    check_mount_path("/etc/hostsfile")


# -- the service on a real store ------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> ServerConfig:
    return ServerConfig(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", token=TOKEN)


@pytest.fixture
async def store(config: ServerConfig) -> AsyncIterator[SQLiteStore]:
    config.data_dir.mkdir(parents=True)
    s = SQLiteStore(config.db_path)
    yield s
    await s.close()


class Disks:
    """Stand-ins for the loop-mounted disks and the host commands around them: ``make_disk``
    makes plain directories, and a volume's ``mnt`` counts as mounted (under whichever
    name its directory has, as a real mount moves with a renamed parent) until unmounted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.made: list[tuple[Path, int]] = []
        self.commands: list[list[str]] = []
        self.fail: Exception | None = None
        self.mounted: set[str] = set()  # volume IDs
        self.fsck_status = 0
        real_ismount = os.path.ismount

        def volume_id(mnt: Path) -> str:
            return mnt.parent.name.removeprefix(".new-").removeprefix(".gone-")

        async def make_disk(image: Path, mountpoint: Path, size_mib: int) -> None:
            if self.fail is not None:
                raise self.fail
            image.write_bytes(b"")  # noqa: ASYNC240  (a stand-in; the real one is async)
            (mountpoint / "lost+found").mkdir()
            self.mounted.add(volume_id(mountpoint))
            self.made.append((image, size_mib))

        async def mount_disk(image: Path, mountpoint: Path) -> None:
            self.mounted.add(volume_id(mountpoint))

        async def run(argv: list[str], **kwargs: Any) -> proc.Completed:
            self.commands.append(list(argv))
            if argv[0] == "umount":
                self.mounted.discard(volume_id(Path(argv[-1])))
            if argv[0] == "e2fsck":
                return proc.Completed(self.fsck_status, b"", b"UNEXPECTED INCONSISTENCY")
            return proc.Completed(0, b"", b"")

        def ismount(path: Any) -> bool:
            p = Path(path)
            return (p.name == "mnt" and volume_id(p) in self.mounted) or real_ismount(path)

        monkeypatch.setattr(volume_module, "make_disk", make_disk)
        monkeypatch.setattr(volume_module, "mount_disk", mount_disk)
        monkeypatch.setattr(proc, "run", run)
        monkeypatch.setattr(os.path, "ismount", ismount)


@pytest.fixture
def disks(monkeypatch: pytest.MonkeyPatch) -> Disks:
    return Disks(monkeypatch)


@pytest.fixture
def service(config: ServerConfig, store: SQLiteStore, disks: Disks) -> VolumeService:
    return VolumeService(config, store)


def _sandbox(sandbox_id: str, status: str, volumes: dict[str, str]) -> SandboxRecord:
    return SandboxRecord(
        id=sandbox_id, image="python", cpu=1.0, memory=512, disk=1024, timeout=300.0,
        status=SandboxStatus(status), volumes=volumes, created_at=1764180000.0,
    )  # fmt: skip


async def test_create_makes_a_whole_volume(
    service: VolumeService, config: ServerConfig, disks: Disks
) -> None:
    record = await service.create("data", 64)
    assert record.id.startswith("vol-") and record.name == "data" and record.size == 64
    directory = config.volumes_dir / record.id
    assert (directory / "disk.img").exists()
    mnt = config.volume_mount(record.id)
    assert mnt == directory / "mnt"
    assert os.stat(mnt).st_mode & 0o7777 == 0o1777  # any image user may write
    assert list(mnt.iterdir()) == []  # mkfs's lost+found is gone
    assert [p.name for p in config.volumes_dir.iterdir()] == [record.id]  # no temp left
    assert await service.get("data") == record
    assert await service.get(record.id) == record
    assert disks.made[0][1] == 64


async def test_default_size(service: VolumeService) -> None:
    assert (await service.create("d")).size == DEFAULT_SIZE_MIB == 1024


@pytest.mark.parametrize("size", [0, 15, -1, 1024 * 1024 + 1, True])
async def test_sizes_out_of_range(service: VolumeService, size: int) -> None:
    with pytest.raises(InvalidArgumentError, match="16–1048576 MiB"):
        await service.create("data", size)


async def test_a_volume_bigger_than_the_free_space_is_refused(
    service: VolumeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    usage = shutil._ntuple_diskusage(1000 << 20, 900 << 20, 100 << 20)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)
    await service.create("first", 60)
    # 100 MiB free, of which 60 are promised to "first" (nothing written yet).
    with pytest.raises(InvalidArgumentError, match="room for 40 MiB more") as info:
        await service.create("second", 50)
    assert "pass a smaller size or delete volumes" in info.value.message
    await service.create("third", 40)


async def test_a_tenants_max_disk_counts_its_volumes_and_snapshots(
    config: ServerConfig, store: SQLiteStore, disks: Disks
) -> None:
    limits = {"max_disk": 200}
    service = VolumeService(config, store, Quotas(store, lambda t: limits if t == "acme" else {}))
    await store.put_snapshot(SnapshotRecord("sn-1", "sb-1", 1.0, 50 << 20, tenant="acme"))
    await service.create("first", 100, tenant="acme")
    with pytest.raises(QuotaExceededError) as info:
        await service.create("second", 64, tenant="acme")
    assert info.value.status == 429 and info.value.message.startswith(
        "tenant acme's snapshots and volumes use 150 MiB of max_disk=200 MiB, and volume "
        "'second' needs 64 MiB more"
    )
    # Refused before anything was made: no disk, no directory, no record.
    assert len(disks.made) == 1 and len(list(config.volumes_dir.iterdir())) == 1
    assert await store.get_volume("second") is None
    await service.create("second", 64)  # the operator's own (default) has no limit
    made, created = await service.get_or_create("third", 50, tenant="acme")
    assert created and made.size == 50


async def test_an_existing_name_conflicts_unless_asked(service: VolumeService) -> None:
    first = await service.create("data", 64)
    with pytest.raises(ConflictError, match="exists already") as info:
        await service.create("data", 128)
    assert first.id in info.value.message and "stockade volume rm data" in info.value.message
    same, created = await service.get_or_create("data", 128)
    assert same == first and not created and same.size == 64  # keeps its size
    other, created = await service.get_or_create("other", 32)
    assert created and other.size == 32
    by_id, created = await service.get_or_create(first.id)  # an ID is never a new name
    assert by_id == first and not created


async def test_a_failed_create_leaves_nothing(
    service: VolumeService, config: ServerConfig, disks: Disks
) -> None:
    disks.fail = OSError("mkfs.ext4 exited 1")
    with pytest.raises(ServerError, match=r"creating volume 'data' failed: mkfs\.ext4"):
        await service.create("data", 64)
    assert list(config.volumes_dir.iterdir()) == []
    assert await service.list() == []


async def test_unknown_volume_names_the_fix(service: VolumeService) -> None:
    with pytest.raises(NotFoundError) as info:
        await service.get("nope")
    assert "stockade volume ls" in info.value.message
    assert "create_if_missing=True" in info.value.message


async def test_list_is_by_name(service: VolumeService) -> None:
    for name in ("b", "c", "a"):
        await service.create(name, 16)
    assert [r.name for r in await service.list()] == ["a", "b", "c"]


async def test_users_count_live_and_paused_sandboxes(
    service: VolumeService, store: SQLiteStore
) -> None:
    vol = await service.create("data", 16)
    for sid, status in [("sb-1", "running"), ("sb-2", "paused"), ("sb-3", "starting"),
                        ("sb-4", "terminated"), ("sb-5", "failed")]:  # fmt: skip
        await store.put_sandbox(_sandbox(sid, status, {"/a": vol.id, "/b": vol.id}))
    assert await service.users() == {vol.id: ["sb-1", "sb-2", "sb-3"]}
    assert await service.users_of("vol-other") == []


async def test_delete_in_use_names_the_sandboxes(
    service: VolumeService, store: SQLiteStore, config: ServerConfig
) -> None:
    vol = await service.create("data", 16)
    await store.put_sandbox(_sandbox("sb-1", "running", {"/data": vol.id}))
    await store.put_sandbox(_sandbox("sb-2", "paused", {"/d": vol.id}))
    with pytest.raises(ConflictError) as info:
        await service.delete("data")
    message = info.value.message
    assert "in use by sandboxes sb-1, sb-2" in message
    assert "stockade rm sb-1 sb-2" in message
    assert (config.volumes_dir / vol.id).exists()
    # Once they have ended, the volume goes, record and files.
    for sid in ("sb-1", "sb-2"):
        await store.put_sandbox(_sandbox(sid, "terminated", {"/data": vol.id}))
    assert (await service.delete(vol.id)).id == vol.id
    assert list(config.volumes_dir.iterdir()) == []
    with pytest.raises(NotFoundError):
        await service.get("data")
    # The name is free again.
    assert (await service.create("data", 16)).id != vol.id


async def test_start_removes_leftovers_and_reports_broken_volumes(
    service: VolumeService,
    store: SQLiteStore,
    config: ServerConfig,
    disks: Disks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kept = await service.create("kept", 16)
    # What a crash mid-create or mid-delete leaves behind: directories without a record.
    for leftover in (".new-vol-0000000000000001", ".gone-vol-0000000000000002", "vol-x"):
        (config.volumes_dir / leftover / "mnt").mkdir(parents=True)
    (config.volumes_dir / "stray-file").write_text("x")
    # A recorded volume whose disk vanished: the server still starts.
    await store.put_volume(VolumeRecord(id="vol-00000000000000ff", name="lost", created_at=1.0,
                                        size=16))  # fmt: skip
    await service.start()
    assert sorted(p.name for p in config.volumes_dir.iterdir()) == [kept.id]
    assert "volume lost (vol-00000000000000ff) is unavailable" in caplog.text
    with pytest.raises(ServerError, match=r"'lost' .* is unavailable: its disk is not mounted"):
        await service.resolve_mounts({"/data": "lost"})


async def test_start_repairs_and_mounts_disks_after_a_reboot(
    service: VolumeService, disks: Disks, caplog: pytest.LogCaptureFixture
) -> None:
    good = await service.create("good", 16)
    bad = await service.create("bad", 16)
    disks.mounted.clear()  # as after a host reboot
    disks.commands.clear()
    disks.fsck_status = 1  # "errors corrected": fine to mount
    await service.start()
    assert disks.mounted == {good.id, bad.id}
    assert [c[0] for c in disks.commands] == ["e2fsck", "mount", "e2fsck", "mount"]
    assert disks.commands[1][:4] == ["mount", "-n", "-o", "remount,nosuid,nodev"]
    disks.commands.clear()
    await service.start()  # all mounted: nothing to do
    assert disks.commands == []
    disks.mounted.clear()
    disks.fsck_status = 4  # errors left uncorrected: never mounted, never bound
    await service.start()
    assert disks.mounted == set()
    assert "e2fsck -p" in caplog.text and "repair it with `e2fsck` by hand" in caplog.text
    with pytest.raises(ServerError, match="is unavailable"):
        await service.resolve_mounts({"/data": "good"})


async def test_delete_unmounts_before_removing(
    service: VolumeService, disks: Disks, config: ServerConfig
) -> None:
    vol = await service.create("data", 16)
    disks.commands.clear()
    await service.delete("data")
    assert disks.commands == [["umount", str(config.volumes_dir / f".gone-{vol.id}" / "mnt")]]
    assert disks.mounted == set()


async def test_resolve_mounts(service: VolumeService) -> None:
    a = await service.create("a", 16)
    b = await service.create("b", 16)
    got = await service.resolve_mounts({"/data": "a", "/cache": b.id, "/again": "a"})
    assert got == {"/again": a.id, "/cache": b.id, "/data": a.id}


@pytest.mark.parametrize(
    ("mounts", "error", "words"),
    [
        ({"/data": "nope"}, NotFoundError, "volume 'nope' does not exist"),
        ({"data": "a"}, InvalidArgumentError, "absolute path"),
        ({"/data": "a", "/data/sub": "a"}, InvalidArgumentError, "'/data' and '/data/sub' nest"),
        ({f"/m{i}": "a" for i in range(MAX_MOUNTS + 1)}, InvalidArgumentError, "at most 16"),
    ],
)
async def test_resolve_mounts_rejects(
    service: VolumeService, mounts: dict[str, str], error: type[Exception], words: str
) -> None:
    await service.create("a", 16)
    with pytest.raises(error, match=words):
        await service.resolve_mounts(mounts)


# -- the HTTP routes ---------------------------------------------------------------------------


class FakeSandboxes:
    """Just enough of SandboxService for POST /v1/sandboxes: what it was asked to make."""

    def __init__(self) -> None:
        self.creates: list[CreateRequest] = []

    async def create(self, req: CreateRequest) -> SandboxRecord:
        self.creates.append(req)
        return _sandbox("sb-0123456789abcdef", "running", dict(req.volumes))


class FakePools:
    async def take(self, req: CreateRequest, *, picked: Any = None) -> None:
        return None

    async def make_room(self, memory: int) -> None:
        return None


@pytest.fixture
def app(service: VolumeService, config: ServerConfig) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    auth = [Depends(require_token)]
    app.include_router(volumes.router, dependencies=auth)
    app.include_router(sandboxes.router, dependencies=auth)
    fake = FakeSandboxes()
    code = SimpleNamespace(prewarm=lambda sandbox_id, image, tenant="default": None)
    app.state.services = SimpleNamespace(
        config=config,
        access=operator_access(config.token),
        volumes=service,
        sandboxes=fake,
        # No snapshots here: no create restores one.
        creator=Creator(cast(Any, fake), cast(Any, FakePools()), cast(Any, None), cast(Any, code)),
        images=SimpleNamespace(check=lambda name, tenant="default": None),
    )
    return app


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        yield c


def _error(resp: httpx.Response) -> tuple[int, str, str]:
    err = resp.json()["error"]
    return resp.status_code, err["code"], err["message"]


async def test_routes_create_get_list_delete(http: httpx.AsyncClient) -> None:
    resp = await http.post("/v1/volumes", json={"name": "data", "size": 64})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert set(out) == {"id", "name", "size", "created_at", "used_by"}
    assert out["name"] == "data" and out["size"] == 64 and out["used_by"] == []
    assert out["created_at"].endswith("Z")
    again = await http.post("/v1/volumes", json={"name": "data", "create_if_missing": True})
    assert again.status_code == 200 and again.json() == out
    status, code, message = _error(await http.post("/v1/volumes", json={"name": "data"}))
    assert (status, code) == (409, "conflict") and "exists already" in message
    assert (await http.get("/v1/volumes/data")).json() == out
    assert (await http.get(f"/v1/volumes/{out['id']}")).json() == out
    assert (await http.get("/v1/volumes")).json() == {"volumes": [out]}
    resp = await http.delete("/v1/volumes/data")
    assert resp.status_code == 204 and resp.content == b""
    status, code, message = _error(await http.get("/v1/volumes/data"))
    assert (status, code) == (404, "not_found") and "stockade volume ls" in message
    assert (await http.get("/v1/volumes")).json() == {"volumes": []}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"name": "Bad Name"}, 422, "volume name 'Bad Name' is not valid"),
        ({"name": "data", "size": "64"}, 422, "size"),
        ({"name": "data", "size": 8}, 422, "out of range"),
        ({"name": "data", "extra": 1}, 422, "extra"),
        ({}, 422, "name"),
        ([], 400, "JSON object"),
    ],
)
async def test_route_rejects_bad_bodies(
    http: httpx.AsyncClient, body: Any, status: int, words: str
) -> None:
    got_status, _, message = _error(await http.post("/v1/volumes", json=body))
    assert got_status == status and words in message, message


async def test_sandbox_create_resolves_names_to_ids(
    http: httpx.AsyncClient, app: FastAPI, store: SQLiteStore
) -> None:
    vol = (await http.post("/v1/volumes", json={"name": "data", "size": 16})).json()
    resp = await http.post("/v1/sandboxes", json={"volumes": {"/data": "data"}})
    assert resp.status_code == 201, resp.text
    assert resp.json()["volumes"] == {"/data": vol["id"]}
    [req] = app.state.services.sandboxes.creates
    assert dict(req.volumes) == {"/data": vol["id"]}
    # A running sandbox with it mounted shows in used_by and blocks the delete.
    await store.put_sandbox(_sandbox("sb-1", "running", {"/data": vol["id"]}))
    assert (await http.get("/v1/volumes/data")).json()["used_by"] == ["sb-1"]
    status, code, message = _error(await http.delete("/v1/volumes/data"))
    assert (status, code) == (409, "conflict")
    assert "in use by sandbox sb-1" in message and "stockade rm sb-1" in message


@pytest.mark.parametrize(
    ("volumes_body", "status", "words"),
    [
        ({"/data": "missing"}, 404, "volume 'missing' does not exist"),
        ({"/proc/x": "data"}, 422, "belongs to the sandbox's runtime"),
        ({"/data": 5}, 422, "volumes"),
    ],
)
async def test_sandbox_create_with_bad_volumes(
    http: httpx.AsyncClient, app: FastAPI, volumes_body: Any, status: int, words: str
) -> None:
    await http.post("/v1/volumes", json={"name": "data", "size": 16})
    got, _, message = _error(await http.post("/v1/sandboxes", json={"volumes": volumes_body}))
    assert got == status and words in message, message
    assert app.state.services.sandboxes.creates == []


async def test_routes_need_the_token(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/v1/volumes")).status_code == 401


# -- the SDK, through the routes --------------------------------------------------------------


@pytest.fixture
async def aclient(app: FastAPI) -> AsyncIterator[AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient("http://t", TOKEN, transport=transport) as c:
        yield c


async def test_sdk_from_name_create_list_delete(aclient: AsyncClient) -> None:
    with pytest.raises(NotFoundError, match="volume 'data' does not exist"):
        await AsyncVolume.from_name("data", client=aclient)
    vol = await AsyncVolume.from_name("data", create_if_missing=True, size=64, client=aclient)
    assert vol.name == "data" and vol.size == 64 and vol.id.startswith("vol-")
    assert vol.created_at is not None and vol.created_at.tzinfo is not None
    assert vol.used_by == ()
    assert await AsyncVolume.from_name("data", client=aclient) == vol
    assert await AsyncVolume.from_name("data", create_if_missing=True, client=aclient) == vol
    with pytest.raises(ConflictError):
        await AsyncVolume.create("data", client=aclient)
    other = await AsyncVolume.create("other", size=16, client=aclient)
    assert [v.name for v in await AsyncVolume.list(client=aclient)] == ["data", "other"]
    assert repr(vol) == f"<AsyncVolume data {vol.id} 64 MiB>"
    assert vol.to_json()["created_at"].endswith("Z")
    await AsyncVolume.delete(other, client=aclient)  # by object
    await AsyncVolume.delete("data", client=aclient)  # by name
    assert await AsyncVolume.list(client=aclient) == []
    with pytest.raises(NotFoundError):
        await AsyncVolume.delete("data", client=aclient)


async def test_sdk_errors_are_typed(aclient: AsyncClient) -> None:
    with pytest.raises(InvalidArgumentError, match="not valid"):
        await AsyncVolume.create("Bad!", client=aclient)
    with pytest.raises(InvalidArgumentError, match="create_if_missing=True"):
        await AsyncVolume.from_name("data", size=64, client=aclient)
    with pytest.raises(InvalidArgumentError, match="a volume is named by a string"):
        await AsyncVolume.from_name("", client=aclient)


def _volume_json(**overrides: Any) -> dict[str, Any]:
    body = {"id": "vol-0123456789abcdef", "name": "data/x", "size": 64,
            "created_at": "2026-11-26T18:00:00.000000Z", "used_by": ["sb-1"]}  # fmt: skip
    return {**body, **overrides}


def test_sync_volume_speaks_the_same_protocol() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "DELETE":
            return httpx.Response(204)
        if request.url.path == "/v1/volumes" and request.method == "GET":
            return httpx.Response(200, json={"volumes": [_volume_json()]})
        return httpx.Response(200, json=_volume_json())

    with Client("http://t", TOKEN, transport=httpx.MockTransport(handler)) as client:
        vol = Volume.from_name("data/x", client=client)
        assert vol.used_by == ("sb-1",) and vol.size == 64
        assert Volume.from_name("data", create_if_missing=True, size=8, client=client) == vol
        assert Volume.list(client=client) == [vol]
        Volume.delete(vol, client=client)
    assert [(r.method, r.url.raw_path) for r in seen] == [
        ("GET", b"/v1/volumes/data%2Fx"),
        ("POST", b"/v1/volumes"),
        ("GET", b"/v1/volumes"),
        ("DELETE", b"/v1/volumes/vol-0123456789abcdef"),
    ]
    assert json.loads(seen[1].content) == {"name": "data", "create_if_missing": True, "size": 8}


@pytest.mark.parametrize(
    "body", [_volume_json(size="64"), _volume_json(id=None), _volume_json(used_by="sb-1"), []]
)
def test_malformed_volume_is_a_server_error(body: Any) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=body))
    with (
        Client("http://t", TOKEN, transport=transport) as client,
        pytest.raises(ServerError, match="malformed volume"),
    ):
        Volume.from_name("data", client=client)


# -- the CLI --------------------------------------------------------------------------------


def _err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class VolumeApi:
    """The volume routes in memory, for the CLI."""

    def __init__(self) -> None:
        self.volumes: dict[str, dict[str, Any]] = {}
        self.bodies: list[Any] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/v1/volumes":
            body = json.loads(request.content)
            self.bodies.append(body)
            if body["name"] in self.volumes:
                return httpx.Response(409, json=_err("conflict", "volume 'data' exists already"))
            vol = _volume_json(
                id=f"vol-{len(self.volumes):016x}", name=body["name"],
                size=body.get("size", 1024), used_by=[],
            )  # fmt: skip
            self.volumes[body["name"]] = vol
            return httpx.Response(201, json=vol)
        if request.method == "GET" and path == "/v1/volumes":
            return httpx.Response(200, json={"volumes": list(self.volumes.values())})
        name = path.rsplit("/", 1)[-1]
        if name not in self.volumes:
            return httpx.Response(404, json=_err("not_found", f"volume {name!r} does not exist"))
        if request.method == "DELETE":
            if self.volumes[name]["used_by"]:
                message = f"volume {name!r} is in use by sandbox sb-1"
                return httpx.Response(409, json=_err("conflict", message))
            del self.volumes[name]
            return httpx.Response(204)
        return httpx.Response(200, json=self.volumes[name])


@pytest.fixture
def volume_api() -> VolumeApi:
    return VolumeApi()


@pytest.fixture
def invoke(volume_api: VolumeApi) -> Iterator[Any]:
    def factory(url: str | None, token: str | None) -> Client:
        return Client("http://t", TOKEN, transport=httpx.MockTransport(volume_api.handler))

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), obj=CliState(client_factory=factory))

    yield run


def test_cli_create_ls_rm(invoke: Any, volume_api: VolumeApi) -> None:
    result = invoke("volume", "create", "data", "--size", "64")
    assert result.exit_code == 0, result.output
    assert result.stdout == "vol-0000000000000000\n"
    assert volume_api.bodies == [{"name": "data", "size": 64}]
    assert invoke("volume", "create", "cache").exit_code == 0
    assert volume_api.bodies[-1] == {"name": "cache"}

    table = invoke("volume", "ls")
    assert table.exit_code == 0, table.output
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "AGE", "USED", "BY"]
    assert [r.split()[:4] for r in rows] == [
        ["data", "vol-0000000000000000", "64", "MiB"],
        ["cache", "vol-0000000000000001", "1024", "MiB"],
    ]
    listed = json.loads(invoke("volume", "ls", "--json").stdout)
    assert [v["name"] for v in listed] == ["data", "cache"]
    assert listed[0] == {**volume_api.volumes["data"]}

    result = invoke("volume", "rm", "data", "cache")
    assert result.exit_code == 0, result.output
    assert result.stdout == "data\ncache\n"
    assert volume_api.volumes == {}


def test_cli_errors(invoke: Any, volume_api: VolumeApi) -> None:
    invoke("volume", "create", "data")
    result = invoke("volume", "create", "data")
    assert result.exit_code == 1 and "error: volume 'data' exists already" in result.stderr
    volume_api.volumes["data"]["used_by"] = ["sb-1"]
    result = invoke("volume", "rm", "data")
    assert result.exit_code == 1 and "in use by sandbox sb-1" in result.stderr
    result = invoke("volume", "rm", "nope")
    assert result.exit_code == 1 and "does not exist" in result.stderr
    assert invoke("volume", "rm").exit_code == 2  # NAME... is required
    assert invoke("volume", "create", "x", "--size", "0").exit_code == 2


@pytest.mark.parametrize("args", [["volume"], ["volume", "create"], ["volume", "ls"],
                                  ["volume", "rm"]])  # fmt: skip
def test_cli_help(args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cli {' '.join(args)}" in result.output
