"""IO-free pieces of the server: specs, paths, parsing, mirrors, versions, the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from stockade.errors import (
    InvalidArgumentError,
    NotFoundError,
    SandboxPausedError,
    SandboxStartingError,
    SandboxTerminatedError,
)
from stockade.server.api.limits import check_create_ranges
from stockade.server.images.mirror import debian_mirror
from stockade.server.runtime import bundle
from stockade.server.runtime.cgroups import cgroup_path
from stockade.server.service.files import FileInfo, check_path
from stockade.server.service.sandboxes.lookup import get_running
from stockade.server.state.records import (
    EndReason,
    ExposedPort,
    NetworkAttachment,
    SandboxRecord,
    SandboxStatus,
)
from stockade.server.state.store import SQLiteStore


def test_container_spec_carries_limits() -> None:
    proc = bundle.ProcessSpec(["sleep", "1"], env={"A": "1"}, cwd="/w")
    spec = bundle.container_spec(
        root=Path("/r"), process=proc, hostname="sb-1", cpu=0.5, memory_mib=256,
        cgroups_path=cgroup_path("sb-1"),
    )  # fmt: skip
    res = spec["linux"]["resources"]
    assert res["memory"]["limit"] == 256 * 1024 * 1024
    assert res["cpu"]["quota"] * 2 == res["cpu"]["period"]
    assert spec["linux"]["cgroupsPath"] == "/stockade/sb-1"
    nproc = [r for r in spec["process"]["rlimits"] if r["type"] == "RLIMIT_NPROC"]
    assert nproc == [{"type": "RLIMIT_NPROC", "hard": 128, "soft": 128}]  # from 256 MiB
    assert spec["process"]["env"] == ["A=1"]
    assert {"type": "network"} in spec["linux"]["namespaces"]


def test_process_limit_scales_with_memory() -> None:
    assert bundle.max_processes(64) == 64
    assert bundle.max_processes(512) == 256
    assert bundle.max_processes(65536) == 4096


@pytest.mark.parametrize(
    ("raw", "norm"), [("/a/b/../c", "/a/c"), ("/", "/"), ("//x//y/", "/x/y"), ("/a/./b", "/a/b")]
)
def test_check_path_normalises(raw: str, norm: str) -> None:
    assert check_path(raw) == norm


@pytest.mark.parametrize("bad", ["", "rel/path", "/a\x00b", "/" + "a" * 5000])
def test_check_path_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        check_path(bad)


def test_file_info_from_agent_json() -> None:
    info = FileInfo.of(
        {"path": "/app/with\ttab", "name": "with\ttab", "type": "dir", "size": 4096,
         "mode": 0o755, "mtime": 1700000000.5, "target": None}
    )  # fmt: skip
    assert (info.name, info.type, info.mode, info.mtime) == (
        "with\ttab",
        "dir",
        0o755,
        1700000000.5,
    )
    assert FileInfo.of({"path": "/"}).name == "/"


def test_ranges_name_the_allowed_values() -> None:
    check_create_ranges(1, 512, 1024, 300)
    with pytest.raises(InvalidArgumentError, match=r"memory=10 is out of range; allowed: 64–65536"):
        check_create_ranges(1, 10, 1024, 300)


def test_mirror_from_deb822_and_one_line_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STOCKADE_DEBIAN_MIRROR", raising=False)
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: x\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (d / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://other.example/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://other.example/debian"
    monkeypatch.setenv("STOCKADE_DEBIAN_MIRROR", "http://override/debian/")
    assert debian_mirror(tmp_path) == "http://override/debian"


async def test_sqlite_store_round_trip(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    rec = SandboxRecord(id="sb-1", image="python", cpu=1, memory=512, disk=1024, timeout=300,
                        tags={"k": "v"}, created_at=1.0)  # fmt: skip
    await store.put_sandbox(rec)
    rec.status, rec.reason = SandboxStatus.TERMINATED, EndReason.TIMEOUT
    await store.put_sandbox(rec)
    await store.put_sandbox(SandboxRecord(id="sb-2", image="debian", cpu=1, memory=512,
                                          disk=1024, timeout=300, created_at=2.0))  # fmt: skip
    await store.close()
    reopened = SQLiteStore(tmp_path / "state.db")
    got = await reopened.get_sandbox("sb-1")
    assert got is not None and got.reason == "timeout" and got.tags == {"k": "v"}
    assert [r.id for r in await reopened.list_sandboxes()] == ["sb-2", "sb-1"]
    assert [r.id for r in await reopened.list_sandboxes("terminated")] == ["sb-1"]
    assert await reopened.get_sandbox("sb-3") is None
    await reopened.close()


def test_records_load_as_their_own_types() -> None:
    """A record as an older server wrote it (plain strings and dicts) loads as enums and
    typed parts, and goes back to the same JSON."""
    raw = (
        '{"id": "sb-1", "image": "debian", "cpu": 1, "memory": 512, "disk": 1024, '
        '"timeout": 300, "status": "running", "reason": null, "on_timeout": "pause", '
        '"network": {"slot": 3, "ip": "10.213.0.8", "policy": {"block_network": false}, '
        '"reason": null}, "ports": [{"port": 8080, "public": true}], "future_field": 1}'
    )
    record = SandboxRecord.from_json(raw)
    assert record.status is SandboxStatus.RUNNING and record.on_timeout == "pause"
    assert record.network == NetworkAttachment(3, "10.213.0.8", {"block_network": False})
    assert record.ports == [ExposedPort(8080, public=True)] and record.exposed(8080)
    assert record.exposed(8081) is None
    assert SandboxRecord.from_json(record.to_json()) == record
    ended = SandboxRecord.from_json(raw.replace('"reason": null, "on', '"reason": "oom", "on'))
    assert ended.reason is EndReason.OOM


@pytest.mark.parametrize(
    ("status", "error", "says"),
    [
        (SandboxStatus.STARTING, SandboxStartingError, "still starting"),
        (SandboxStatus.PAUSED, SandboxPausedError, "resume it first"),
        (SandboxStatus.TERMINATED, SandboxTerminatedError, "create a new sandbox"),
        (SandboxStatus.POOLED, NotFoundError, "does not exist"),
    ],
)
async def test_a_sandbox_that_is_not_running_says_why(
    tmp_path: Path, status: SandboxStatus, error: type[Exception], says: str
) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    await store.put_sandbox(SandboxRecord(
        id="sb-1", image="debian", cpu=1, memory=512, disk=1024, timeout=300, status=status
    ))  # fmt: skip
    with pytest.raises(error, match=says):
        await get_running(store, "sb-1")
    await store.close()


def test_pool_specs_parse_and_reject() -> None:
    from stockade.server.service.pools import parse_pool_specs
    from stockade.server.service.sandboxes import CreateRequest

    specs = parse_pool_specs("python=4, debian=2,")
    assert [(s.image, s.size) for s in specs] == [("python", 4), ("debian", 2)]
    req = CreateRequest("python", 1.0, 512, 1024, 300, {}, None, {}, None)
    assert specs[0].matches(req)
    assert not specs[0].matches(CreateRequest("python", 1.0, 256, 1024, 300, {}, None, {}, None))
    assert not specs[0].matches(CreateRequest("python", 1.0, 512, 1024, 300, {}, None, {}, ["x"]))
    for bad in ("python", "python=x", "=3"):
        with pytest.raises(InvalidArgumentError, match="IMAGE=COUNT"):
            parse_pool_specs(bad)
