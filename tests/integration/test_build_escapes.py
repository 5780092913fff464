"""A hostile API caller's copy steps, against a real server: every escape is refused with a
clear error, and nothing outside the step's layer changes on the host."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockade import Sandbox

from .conftest import LiveServer
from .helpers import unique

pytestmark = pytest.mark.runsc


def _cache(server: LiveServer) -> Path:
    return server.data_dir.parent / "cache" / "layers"


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def _build(server: LiveServer, dest: str, tar: bytes) -> tuple[int, list[str]]:
    """Upload ``tar`` and build a copy of it to ``dest``; the status and the NDJSON lines."""
    digest = "sha256:" + hashlib.sha256(tar).hexdigest()
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as c:
        assert c.put(f"/v1/images/contexts/{digest}", content=tar).status_code == 204
        # A run step first: each test's layer key is then its own, never a cached one.
        steps = [{"op": "run", "commands": [f"echo {unique('e')}"]},
                 {"op": "copy", "dest": dest, "context": digest}]  # fmt: skip
        r = c.post("/v1/images/builds", json={"image": "debian", "steps": steps})
        return r.status_code, r.text.splitlines()


def _leftovers(server: LiveServer) -> list[str]:
    tmp = _cache(server) / ".tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.is_dir() else []


@pytest.mark.parametrize("dest", ["/../../..", "/../../../../etc/cron.d", "/app/../../x"])
def test_a_dest_that_climbs_out_is_refused_naming_it(server: LiveServer, dest: str) -> None:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
        r = c.post(
            "/v1/images/builds",
            json={"image": "debian",
                  "steps": [{"op": "copy", "dest": dest, "context": "sha256:" + "a" * 64}]},
        )  # fmt: skip
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_argument" and dest in error["message"]


def test_context_tars_that_escape_change_nothing_on_the_host(server: LiveServer) -> None:
    marker = Path("/tmp") / unique("escape")  # where a followed symlink would write
    passwd = os.stat("/etc/passwd")
    attacks = {
        "absolute symlink": _tar(
            (_info("out", tarfile.SYMTYPE, linkname="/"), None),
            (_info(f"out{marker}", size=0), b"pwned"),
        ),
        "relative symlink": _tar(
            (_info("up", tarfile.SYMTYPE, linkname="../../../../../../../../.."), None),
            (_info(f"up{marker}", size=0), b"pwned"),
        ),
        "dotdot": _tar((_info(f"../../../../../../../..{marker}"), b"pwned")),
        "hard link out": _tar((_info("pw", tarfile.LNKTYPE, linkname="/etc/passwd"), None)),
        "hard link up": _tar((_info("pw", tarfile.LNKTYPE, linkname="../../../etc/passwd"), None)),
    }
    layers_before = {p.name for p in _cache(server).glob("build-*")}
    for what, tar in attacks.items():
        status, lines = _build(server, "/", tar)
        assert status == 200, (what, lines)
        assert '"type":"error"' in lines[-1] and "unsafe_layer" in lines[-1], (what, lines[-1])
    assert not marker.exists()
    after = os.stat("/etc/passwd")
    assert (after.st_nlink, after.st_mode, after.st_uid) == (
        passwd.st_nlink, passwd.st_mode, passwd.st_uid,
    )  # fmt: skip
    # Only the run steps' layers were made; the refused copies left nothing behind.
    made = {p.name for p in _cache(server).glob("build-*")} - layers_before
    assert len(made) == len(attacks)
    assert _leftovers(server) == []


def test_a_copy_to_the_root_keeps_the_image_root_as_it_was(server: LiveServer) -> None:
    tar = _tar(
        (_info(".", tarfile.DIRTYPE, mode=0o777, uid=1234, gid=1234), None),
        (_info("etc/stockade-motd", mode=0o4755, uid=1234), b"hello"),
    )
    status, lines = _build(server, "/x/../.", tar)
    assert status == 200 and '"type":"done"' in lines[-1], lines[-3:]
    image_id = httpx.Response(200, content=lines[-1]).json()["image"]["name"]
    with Sandbox.create(image=image_id, timeout=60) as sb:
        r = sb.run("stat -c '%a %u' / /etc/stockade-motd; cat /etc/stockade-motd")
    assert r.stdout.splitlines() == ["755 0", "4755 0", "hello"], r
