"""Spare disks and network slots (service/boot_reserve.py), against real mounts, namespaces,
nftables and gVisor: cold creates take them and get exactly what they asked for, the
server makes new ones, and none outlives the server, whether it stops or crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stockade import Sandbox

from .conftest import LiveServer, own_server
from .helpers import wait_spares
from .netlab import PUBLIC_IP, netlab

pytestmark = pytest.mark.runsc

MiB = 1024 * 1024
_CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], 80), timeout=5).close()
    print("OK")
except Exception as e:
    print("ERR", type(e).__name__)
"""


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with own_server("stockade-spares-") as server, netlab():
        yield server


def _kw(live: LiveServer) -> dict[str, Any]:
    return {"url": live.url, "token": live.token}


def _spare_dirs(live: LiveServer) -> set[str]:
    spares = live.data_dir / "spares"
    return {p.name for p in spares.iterdir()} if spares.exists() else set()


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(prefix)]


def _namespaces(live: LiveServer) -> list[str]:
    block = json.loads((live.data_dir / "network.json").read_text())["block"]
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if f"stockade-{block}-" in line]


def test_a_cold_create_takes_a_spare_disk_of_its_size(live: LiveServer) -> None:
    wait_spares(live.url, live.token)
    before = _spare_dirs(live)
    assert len(before) == 2
    with Sandbox.create(image="debian", timeout=120, **_kw(live)) as sb:
        assert before - _spare_dirs(live), "the create made its own disk instead"
        disk = live.data_dir / "sandboxes" / sb.id / "disk"
        assert os.path.ismount(disk)
        st = os.statvfs(disk)
        assert 900 * MiB < st.f_blocks * st.f_frsize <= 1024 * MiB
        # The sandbox writes to that disk, and only it has those files.
        sb.run("echo written > /root/mine").check()
        assert (disk / "upper" / "root" / "mine").read_text() == "written\n"
    # The server makes new spares, all of them fresh: none holds the sandbox's files.
    wait_spares(live.url, live.token)
    for name in _spare_dirs(live):
        upper = live.data_dir / "spares" / name / "disk" / "upper"
        assert list(upper.iterdir()) == []


def test_a_create_of_another_size_makes_its_own_disk(live: LiveServer) -> None:
    wait_spares(live.url, live.token)
    before = _spare_dirs(live)
    with Sandbox.create(image="debian", disk=256, timeout=120, **_kw(live)) as sb:
        assert _spare_dirs(live) == before
        st = os.statvfs(live.data_dir / "sandboxes" / sb.id / "disk")
        assert st.f_blocks * st.f_frsize <= 256 * MiB


def test_a_spare_network_slot_takes_the_callers_policy(live: LiveServer) -> None:
    wait_spares(live.url, live.token)
    blocked = Sandbox.create(image="python", block_network=True, timeout=120, **_kw(live))
    wait_spares(live.url, live.token)
    open_sb = Sandbox.create(image="python", timeout=120, **_kw(live))
    try:
        assert blocked.last_info.network is not None
        assert blocked.last_info.network.mode == "blocked"
        check = ["python3", "-c", _CONNECT, PUBLIC_IP]
        assert blocked.run(check, timeout=30).stdout.startswith("ERR")
        assert open_sb.run(check, timeout=30).stdout.strip() == "OK"
    finally:
        blocked.terminate()
        open_sb.terminate()


def test_no_spare_outlives_its_server(live: LiveServer) -> None:
    wait_spares(live.url, live.token)
    spares_dir = live.data_dir / "spares"
    crashed = _spare_dirs(live)
    assert len(_mounts_under(spares_dir)) == 2 and len(_namespaces(live)) == 2

    # A crash leaves them behind; the next server removes them and makes its own.
    live.stop(signal.SIGKILL)
    assert len(_mounts_under(spares_dir)) == 2
    live.start()
    wait_spares(live.url, live.token)
    assert not crashed & _spare_dirs(live)
    assert len(_mounts_under(spares_dir)) == 2 and len(_namespaces(live)) == 2

    # A clean stop removes them at once.
    live.stop()
    assert _mounts_under(spares_dir) == [] and _spare_dirs(live) == set()
    assert _namespaces(live) == []
    live.start()
