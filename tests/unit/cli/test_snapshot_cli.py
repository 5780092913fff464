"""``stockade snapshot|pause|resume|fork`` through click's CliRunner on the fake API: the
requests they send and what they print (the real thing is in
tests/integration/test_snapshots.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result

from stockade import Client
from stockade.cli._common import CliState
from stockade.cli.main import cli
from tests.unit.fakes import TOKEN, FakeApi, sandbox_record

SNAP = {
    "id": "sn-1", "sandbox_id": "sb-1", "name": "first", "size": 2_500_000,
    "image": "python", "created_at": "2026-11-26T18:00:00.000000Z",
}  # fmt: skip


def _run(api: FakeApi, *args: str) -> Result:
    def factory(url: str | None, token: str | None) -> Client:
        return Client(url or "http://fake", token or TOKEN, transport=api.transport)

    return CliRunner().invoke(cli, list(args), obj=CliState(client_factory=factory))


def test_snapshot_id_takes_a_snapshot_and_prints_its_id(api: FakeApi) -> None:
    api.errors[("POST", "/v1/sandboxes/sb-1/snapshots")] = (201, SNAP)
    result = _run(api, "snapshot", "sb-1", "--name", "first")
    assert result.exit_code == 0, result.output
    assert result.output == "sn-1\n"
    assert json.loads(api.last("POST").content) == {"name": "first"}


def test_snapshot_fs_only_prints_the_image_name(api: FakeApi) -> None:
    image = {"name": "sb-1:fs-1", "description": "built image img-1", "ready": True,
             "size_mib": 3, "kind": "built", "pinned": "img-1"}  # fmt: skip
    api.errors[("POST", "/v1/sandboxes/sb-1/filesystem-snapshots")] = (201, image)
    result = _run(api, "snapshot", "sb-1", "--fs-only")
    assert result.exit_code == 0, result.output
    assert result.output == "sb-1:fs-1\n"


def test_snapshot_ls_and_rm(api: FakeApi) -> None:
    api.errors[("GET", "/v1/snapshots")] = (200, {"snapshots": [SNAP]})
    listed = _run(api, "snapshot", "ls", "--json")
    assert listed.exit_code == 0, listed.output
    assert [s["id"] for s in json.loads(listed.output)] == ["sn-1"]
    assert json.loads(listed.output)[0]["size"] == 2_500_000  # as the API says it: bytes
    api.errors[("GET", "/v1/snapshots")] = (200, {"snapshots": [SNAP]})
    table = _run(api, "snapshot", "ls")
    assert "2.4 MiB" in table.output

    api.errors[("GET", "/v1/snapshots/sn-1")] = (200, SNAP)
    api.errors[("DELETE", "/v1/snapshots/sn-1")] = (204, b"")
    removed = _run(api, "snapshot", "rm", "sn-1")
    assert removed.exit_code == 0, removed.output
    assert removed.output == "sn-1\n"


def test_snapshot_rm_of_an_unknown_snapshot_fails_naming_it(api: FakeApi) -> None:
    api.errors[("GET", "/v1/snapshots/sn-x")] = (
        404, {"error": {"code": "not_found", "message": "snapshot sn-x does not exist"}},
    )  # fmt: skip
    result = _run(api, "snapshot", "rm", "sn-x")
    assert result.exit_code == 1
    assert "snapshot sn-x does not exist" in result.output


@pytest.mark.parametrize("verb", ["pause", "resume"])
def test_pause_and_resume_print_the_new_status(api: FakeApi, verb: str) -> None:
    status = "paused" if verb == "pause" else "running"
    api.errors[("POST", f"/v1/sandboxes/sb-1/{verb}")] = (
        200,
        sandbox_record("sb-1", status=status),
    )
    result = _run(api, verb, "sb-1")
    assert result.exit_code == 0, result.output
    assert result.output == f"sb-1 {status}\n"


def test_fork_prints_one_id_per_line(api: FakeApi) -> None:
    forks = {"sandboxes": [sandbox_record("sb-2"), sandbox_record("sb-3")]}
    api.errors[("POST", "/v1/sandboxes/sb-1/fork")] = (201, forks)
    result = _run(api, "fork", "sb-1", "-n", "2")
    assert result.exit_code == 0, result.output
    assert result.output == "sb-2\nsb-3\n"
    assert json.loads(api.last("POST").content) == {"count": 2}


def test_create_from_a_snapshot_sends_it_and_skips_the_image_build(api: FakeApi) -> None:
    result = _run(api, "create", "--snapshot", "sn-1", "--idle-timeout", "30",
                  "--on-timeout", "pause", "--auto-resume")  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(api.last("POST").content)
    assert body["snapshot"] == "sn-1"
    assert (body["idle_timeout"], body["on_timeout"], body["auto_resume"]) == (30, "pause", True)
    assert not any("/build" in r.url.path for r in api.requests)
