"""Parsing the API's JSON into the SDK's records, and back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stockade import FileInfo, ImageInfo, SandboxInfo, SnapshotInfo
from tests.unit.fakes import sandbox_record


def test_sandbox_info_round_trip() -> None:
    record = sandbox_record(
        "sb-1", status="terminated", reason="exited", exit_code=3, entrypoint=["sleep", "1"],
        ended_at="2026-11-26T18:01:00.250000Z", tags={"a": "b"},
    )  # fmt: skip
    info = SandboxInfo.from_json(record)
    assert info.exit_code == 3 and info.reason == "exited" and info.ended
    assert info.ended_at == datetime(2026, 11, 26, 18, 1, 0, 250000, tzinfo=UTC)
    assert info.entrypoint == ["sleep", "1"]
    assert info.to_json() == record


def test_sandbox_info_tolerates_new_fields() -> None:
    info = SandboxInfo.from_json({**sandbox_record("sb-1"), "gpu": "none"})
    assert info.id == "sb-1"


@pytest.mark.parametrize(
    "bad",
    [{"status": "running"}, {"id": "sb-1", "status": "running", "tags": []},
     {"id": "sb-1", "status": "running", "memory": "lots"},
     {"id": "sb-1", "status": "running", "created_at": "yesterday"}],
)  # fmt: skip
def test_sandbox_info_rejects_wrong_types(bad: dict[str, object]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        SandboxInfo.from_json(bad)


def test_file_info() -> None:
    info = FileInfo.from_json({"path": "/app/l", "name": "l", "type": "symlink", "size": 4,
                               "mode": 511, "mtime": 1764180000.5, "target": "/x"})  # fmt: skip
    assert (info.type, info.target, info.mode, info.is_dir, info.is_file) == (
        "symlink", "/x", 0o777, False, False,
    )  # fmt: skip
    assert FileInfo.from_json({"path": "/a/b"}).name == "b"
    # Bytes, named so in Python; the API (and to_json, its shape) says "size".
    assert info.size_bytes == 4
    assert info.to_json()["size"] == 4 and "size_bytes" not in info.to_json()


def test_snapshot_info_size_is_in_bytes() -> None:
    snap = SnapshotInfo.from_json({"id": "sn-1", "sandbox_id": "sb-1", "size": 2_500_000})
    assert snap.size_bytes == 2_500_000


def test_image_info() -> None:
    image = ImageInfo.from_json({"name": "python", "ready": True, "description": "d",
                                 "size_mib": 261})  # fmt: skip
    assert image == ImageInfo("python", True, "d", 261)
    assert ImageInfo.from_json({"name": "x", "ready": False}).size_mib is None
    with pytest.raises(TypeError):
        ImageInfo.from_json({"name": "x", "ready": "yes"})
