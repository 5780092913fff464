"""Named volumes on real disks under gVisor: persistence, sharing, restarts, deletion, the
size limit, and that nothing inside a volume leads a sandbox to the host's files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockade import (
    ConflictError,
    Image,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    Volume,
)

from .conftest import LiveServer, own_server
from .helpers import unique
from .test_cli import cli

SIZE = 64  # MiB: small volumes keep the tests fast


def _mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def _volume_dir(server: LiveServer, vol: Volume) -> Path:
    return server.data_dir / "volumes" / vol.id


@pytest.fixture
def vol(server: LiveServer) -> Iterator[Volume]:
    volume = Volume.from_name(unique("vol"), create_if_missing=True, size=SIZE)
    yield volume
    for sb in Sandbox.list(status="running"):
        if volume.id in sb.last_info.volumes.values():
            sb.terminate()
    with contextlib.suppress(NotFoundError):  # the test may have deleted it
        Volume.delete(volume)


def test_a_later_sandbox_reads_what_an_earlier_one_wrote(server: LiveServer, vol: Volume) -> None:
    assert vol.size == SIZE and vol.id.startswith("vol-")
    with Sandbox.create(image="debian", volumes={"/data": vol}, timeout=60) as first:
        assert first.last_info.volumes == {"/data": vol.id}
        assert first.run("ls -A /data").stdout == ""  # a new volume is empty
        first.run("mkdir -p /data/sub && echo from-exec > /data/sub/a.txt").check()
        first.files.write("/data/b.bin", b"\x00\x01binary")
    # Mounted by name this time, somewhere else.
    with Sandbox.create(image="debian", volumes={"/mnt/v": vol.name}, timeout=60) as second:
        assert second.run("cat /mnt/v/sub/a.txt").stdout == "from-exec\n"
        assert second.files.read_bytes("/mnt/v/b.bin") == b"\x00\x01binary"
        assert second.run("test -e /data || echo absent").stdout == "absent\n"


def test_sandboxes_mounting_a_volume_at_once_see_each_others_writes(
    server: LiveServer, vol: Volume
) -> None:
    with (
        Sandbox.create(image="debian", volumes={"/data": vol}, timeout=60) as a,
        Sandbox.create(image="debian", volumes={"/shared": vol}, timeout=60) as b,
    ):
        a.run("echo one > /data/log").check()
        assert b.run("cat /shared/log").stdout == "one\n"
        b.run("echo two >> /shared/log && mkdir /shared/d && mv /shared/log /shared/d/").check()
        assert a.run("cat /data/d/log").stdout == "one\ntwo\n"
        assert a.run("test -e /data/log || echo moved").stdout == "moved\n"
        a.run("rm -r /data/d").check()
        assert b.run("ls -A /shared").stdout == ""
        assert sorted(Volume.from_name(vol.name).used_by) == sorted([a.id, b.id])


def test_a_volume_in_use_cannot_be_deleted(server: LiveServer, vol: Volume) -> None:
    sb = Sandbox.create(image="debian", volumes={"/data": vol}, timeout=60)
    try:
        with pytest.raises(ConflictError, match="in use by sandbox") as info:
            Volume.delete(vol.name)
        assert sb.id in str(info.value) and f"stockade rm {sb.id}" in str(info.value)
        assert sb.run("echo still > /data/x && cat /data/x").stdout == "still\n"
    finally:
        sb.terminate()
    Volume.delete(vol.name)
    with pytest.raises(NotFoundError, match="stockade volume ls"):
        Volume.from_name(vol.name)
    assert not _volume_dir(server, vol).exists()
    assert vol.id not in _mounts()
    assert all(v.id != vol.id for v in Volume.list())
    # The name is free again, for an empty volume.
    again = Volume.create(vol.name, size=SIZE)
    try:
        assert again.id != vol.id
        with Sandbox.create(image="debian", volumes={"/data": again}, timeout=60) as sb2:
            assert sb2.run("ls -A /data").stdout == ""
    finally:
        Volume.delete(again)


def test_symlinks_and_dotdot_resolve_in_the_sandbox_never_on_the_host(
    server: LiveServer, vol: Volume, tmp_path: Path
) -> None:
    # A file only the host has, and where a planted write would land on the host.
    secret = tmp_path / "secret"
    secret.write_text("HOST-SECRET\n")
    planted = tmp_path / "planted"
    host_mnt = _volume_dir(server, vol) / "mnt"
    with Sandbox.create(image="debian", volumes={"/data": vol}, timeout=60) as sb:
        script = f"""
            cd /data
            ln -s {secret} abs-secret
            ln -s ../../../../../../../../../..{secret} rel-secret
            ln -s /etc/shadow shadow
            ln -s {planted} plant
            ln -s .. up
            cat abs-secret rel-secret 2>&1
            echo pwned > plant 2>&1
            echo ---
            cat shadow | md5sum; md5sum < /etc/shadow
            echo ---
            realpath /data/.. /data/up /data/../../..
            ls /data/.. | tr '\\n' ' '; echo; ls / | tr '\\n' ' '; echo
            test -e /data/../disk.img && echo DISK-VISIBLE
            test -e /data/up/disk.img && echo DISK-VISIBLE
            test -e /data/../../{vol.id}/disk.img && echo DISK-VISIBLE
            test -e {server.data_dir}/state.db && echo STATE-VISIBLE
            ln /etc/passwd /data/hard 2>&1 || echo no-hard-link
            true
        """
        out = sb.run(script).stdout
        assert "HOST-SECRET" not in out and "VISIBLE" not in out
        assert "pwned" not in out
        parts = out.split("---\n")
        assert parts[0].count("No such file or directory") == 2, out
        shadow_hashes = parts[1].splitlines()
        assert shadow_hashes[0] == shadow_hashes[1]  # the sandbox's own /etc/shadow
        lines = parts[2].splitlines()
        assert lines[:3] == ["/", "/", "/"], out
        assert lines[3] == lines[4]  # /data/.. is the sandbox's root
        assert "no-hard-link" in out
        # The files API goes through the sandbox's view as well.
        with pytest.raises(NotFoundError):
            sb.files.read_text("/data/abs-secret")
    # On the host the links are inert text; nothing was written outside the volume.
    assert not planted.exists()
    assert os.readlink(host_mnt / "abs-secret") == str(secret)
    assert os.readlink(host_mnt / "up") == ".."
    assert not (host_mnt / "hard").exists()
    assert secret.read_text() == "HOST-SECRET\n"


def test_a_full_volume_fails_inside_and_only_there(server: LiveServer) -> None:
    small = Volume.create(unique("full"), size=16)
    other = Volume.create(unique("other"), size=16)
    try:
        mounts = {"/data": small, "/other": other}
        with Sandbox.create(image="debian", volumes=mounts, timeout=60) as sb:
            r = sb.run("dd if=/dev/zero of=/data/big bs=1M count=64 2>&1")
            assert r.exit_code != 0
            assert "No space left on device" in r.stdout, r.stdout
            assert int(sb.run("df -m /data | tail -1").stdout.split()[1]) <= 16
            # The sandbox's own disk and the other volume still take writes.
            sb.run("echo fine > /root/after && echo fine > /other/after").check()
            assert sb.run("cat /root/after /other/after").stdout == "fine\nfine\n"
            # Freeing space makes the volume writable again.
            sb.run("rm /data/big && echo again > /data/again").check()
        image = _volume_dir(server, small) / "disk.img"
        assert image.stat().st_size == 16 << 20
        assert image.stat().st_blocks * 512 <= 17 << 20  # the host holds at most its size
    finally:
        Volume.delete(small)
        Volume.delete(other)


def test_a_non_root_image_user_can_write(server: LiveServer, vol: Volume) -> None:
    img = Image.from_name("debian").run_commands("useradd -m -u 1234 app").user("app")
    with Sandbox.create(image=img, volumes={"/data": vol}, timeout=60) as sb:
        r = sb.run("id -u && echo mine > /data/app.txt && stat -c '%u %a' /data/app.txt /data")
        assert r.stdout.splitlines() == ["1234", "1234 644", "0 1777"], r.stdout
    with Sandbox.create(image="debian", volumes={"/data": vol}, timeout=60) as root_sb:
        assert root_sb.run("cat /data/app.txt").stdout == "mine\n"
        # Sticky: another user cannot remove it.
        r = root_sb.run("setpriv --reuid=65534 --regid=65534 --clear-groups rm -f /data/app.txt")
        assert r.exit_code != 0
        assert root_sb.run("cat /data/app.txt").stdout == "mine\n"


def test_bad_names_paths_and_unknown_volumes_are_typed_errors(
    server: LiveServer, vol: Volume
) -> None:
    with pytest.raises(InvalidArgumentError, match="lowercase letters"):
        Volume.create("Not OK")
    with pytest.raises(InvalidArgumentError, match="out of range"):
        Volume.create(unique("big"), size=2 * 1024 * 1024)
    with pytest.raises(ConflictError, match="exists already"):
        Volume.create(vol.name)
    with pytest.raises(NotFoundError, match="stockade volume ls"):
        Volume.from_name(unique("missing"))
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"/data": unique("missing")}, NotFoundError, "does not exist"),
        ({"data": vol}, InvalidArgumentError, "absolute path"),
        ({"/": vol}, InvalidArgumentError, "over /"),
        ({"/proc/x": vol}, InvalidArgumentError, "runtime"),
        ({"/.stockade": vol}, InvalidArgumentError, "runtime"),
        ({"/etc": vol}, InvalidArgumentError, "/etc/hosts"),
        ({"/data/../etc": vol}, InvalidArgumentError, "normalised"),
        ({"/a": vol, "/a/b": vol}, InvalidArgumentError, "nest"),
    ]
    before = {s.id for s in Sandbox.list()}
    for volumes, error, words in bad:
        with pytest.raises(error, match=words):
            Sandbox.create(image="debian", volumes=volumes, timeout=60)
    assert {s.id for s in Sandbox.list()} == before  # refused before anything started


def test_the_cli_creates_lists_and_removes(server: LiveServer) -> None:
    name = unique("cli")
    made = cli("volume", "create", name, "--size", "32")
    assert made.returncode == 0, made.stderr
    vol_id = made.stdout.strip()
    assert vol_id.startswith("vol-")
    listed = cli("volume", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = [v for v in json.loads(listed.stdout) if v["name"] == name]
    assert entry["id"] == vol_id and entry["size"] == 32 and entry["used_by"] == []
    table = cli("volume", "ls")
    assert name in table.stdout and "32 MiB" in table.stdout
    again = cli("volume", "create", name)
    assert again.returncode == 1 and "exists already" in again.stderr
    removed = cli("volume", "rm", name)
    assert removed.returncode == 0 and removed.stdout == f"{name}\n", removed.stderr
    gone = cli("volume", "rm", name)
    assert gone.returncode == 1 and "does not exist" in gone.stderr


def test_the_http_routes_as_curl_sees_them(http: httpx.Client) -> None:
    name = unique("http")
    made = http.post("/v1/volumes", json={"name": name, "size": 32})
    assert made.status_code == 201, made.text
    body = made.json()
    again = http.post("/v1/volumes", json={"name": name, "create_if_missing": True})
    assert again.status_code == 200 and again.json() == body
    assert http.post("/v1/volumes", json={"name": name}).json()["error"]["code"] == "conflict"
    assert http.get(f"/v1/volumes/{body['id']}").json() == body
    assert body in http.get("/v1/volumes").json()["volumes"]
    gone = http.delete(f"/v1/volumes/{name}")
    assert gone.status_code == 204 and gone.content == b""
    assert http.get(f"/v1/volumes/{name}").status_code == 404
    paths = http.get("/openapi.json").json()["paths"]
    assert {"get", "post"} <= set(paths["/v1/volumes"])
    assert {"get", "delete"} <= set(paths["/v1/volumes/{name_or_id}"])


# -- restarts: a server of this module's own, so other modules never see it go away ----------


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with own_server("stockade-volumes-") as server:
        yield server


def _kw(live: LiveServer) -> dict[str, Any]:
    return {"url": live.url, "token": live.token}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_volumes_and_their_sandboxes_survive_a_server_restart(
    live: LiveServer, sig: signal.Signals
) -> None:
    vol = Volume.from_name(unique("keep"), create_if_missing=True, size=SIZE, **_kw(live))
    before = Sandbox.create(image="debian", volumes={"/data": vol}, timeout=120, **_kw(live))
    try:
        before.run("echo before > /data/a").check()
        live.restart(sig)
        assert [v.id for v in Volume.list(**_kw(live)) if v.name == vol.name] == [vol.id]
        assert Volume.from_name(vol.name, **_kw(live)).used_by == (before.id,)
        # The sandbox from before the restart still has its volume, shared with a new one.
        with Sandbox.create(
            image="debian", volumes={"/v": vol.name}, timeout=60, **_kw(live)
        ) as after:
            assert after.run("cat /v/a").stdout == "before\n"
            after.run("echo after > /v/b").check()
            assert before.run("cat /data/b").stdout == "after\n"
        with pytest.raises(ConflictError):
            Volume.delete(vol, **_kw(live))
    finally:
        before.terminate()
    Volume.delete(vol, **_kw(live))
    assert not (live.data_dir / "volumes" / vol.id).exists()


def test_a_restart_mounts_unmounted_disks_and_removes_crash_leftovers(live: LiveServer) -> None:
    vol = Volume.from_name(unique("reboot"), create_if_missing=True, size=SIZE, **_kw(live))
    with Sandbox.create(image="debian", volumes={"/data": vol}, timeout=60, **_kw(live)) as sb:
        sb.run("echo kept > /data/f").check()
    volumes = live.data_dir / "volumes"
    live.stop()
    # As after a host reboot: the disk is no longer mounted.
    subprocess.run(["umount", str(volumes / vol.id / "mnt")], check=True)
    # As after a crash mid-create: a half-made volume, its disk mounted, with no record.
    leftover = volumes / ".new-vol-00000000deadbeef"
    (leftover / "mnt").mkdir(parents=True)
    subprocess.run(["truncate", "-s", "16M", str(leftover / "disk.img")], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(leftover / "disk.img")], check=True)
    subprocess.run(
        ["mount", "-o", "loop", str(leftover / "disk.img"), str(leftover / "mnt")], check=True
    )
    live.start()
    try:
        assert not leftover.exists()
        assert str(leftover) not in _mounts()
        assert os.path.ismount(volumes / vol.id / "mnt")
        with Sandbox.create(image="debian", volumes={"/data": vol}, timeout=60, **_kw(live)) as sb:
            assert sb.run("cat /data/f").stdout == "kept\n"
    finally:
        Volume.delete(vol, **_kw(live))
