"""Dozing against real runsc: an idle sandbox's host threads get a coarse timer slack,
the next use wakes it first, and an exec session in progress keeps it awake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade import Sandbox

from .conftest import LiveServer, own_server
from .helpers import wait_for

DOZE_NS = 50_000_000
AWAKE_NS = 50_000


@pytest.fixture(scope="module")
def dozy() -> Iterator[LiveServer]:
    with own_server("stockade-doze-") as live:
        live.stop()
        live.extra_args = ["--doze-after", "1"]
        live.start()
        yield live


def slacks(sandbox_id: str) -> set[int]:
    """The timer slack of every host thread in the sandbox's cgroup."""
    tasks = Path(f"/sys/fs/cgroup/cpu/stockade/{sandbox_id}/tasks").read_text().split()
    assert tasks, "the sandbox has no threads in its cgroup"
    found = set()
    for tid in tasks:
        try:
            found.add(int(Path(f"/proc/{tid}/timerslack_ns").read_text()))
        except OSError:
            continue  # a thread that just ended
    return found


def dozing(sandbox_id: str) -> bool:
    return slacks(sandbox_id) == {DOZE_NS}


def test_an_idle_sandbox_dozes_and_wakes_on_use(dozy: LiveServer) -> None:
    with Sandbox.create(image="debian", timeout=120, url=dozy.url, token=dozy.token) as sb:
        sb.run("sh -c 'sleep 1000 >/dev/null 2>&1 &'")  # a process living on inside
        assert slacks(sb.id) == {AWAKE_NS}
        wait_for(lambda: dozing(sb.id) or None, timeout=15, what="the sandbox to doze")
        # Its processes run on, only their timers are coarse; the next call wakes it first.
        r = sb.run("echo awake; cat /proc/[0-9]*/comm | grep -c '^sleep$'")
        assert r.stdout == "awake\n1\n", r
        assert slacks(sb.id) == {AWAKE_NS}
        # Files calls wake it too.
        wait_for(lambda: dozing(sb.id) or None, timeout=15, what="the sandbox to doze again")
        sb.files.write("/tmp/x", "y")
        assert slacks(sb.id) == {AWAKE_NS}
        assert sb.files.read_text("/tmp/x") == "y"


def test_a_running_exec_keeps_the_sandbox_awake(dozy: LiveServer) -> None:
    with (
        Sandbox.create(image="debian", timeout=120, url=dozy.url, token=dozy.token) as sb,
        Sandbox.create(image="debian", timeout=120, url=dozy.url, token=dozy.token) as witness,
    ):
        p = sb.exec("sh", "-c", "read line; echo done $line")  # runs until it is told
        witness.files.write("/tmp/used", "after the exec began")
        # The witness, last used after the exec began, dozes in a pass of the doze loop
        # that would have put the sandbox to doze too (before it: they go in the order they
        # started), were it not for the exec.
        wait_for(lambda: dozing(witness.id) or None, timeout=15, what="the witness to doze")
        assert slacks(sb.id) == {AWAKE_NS}
        p.stdin.write("now\n")
        assert p.wait() == 0
        assert p.stdout.read() == "done now\n"
        wait_for(lambda: dozing(sb.id) or None, timeout=15, what="the sandbox to doze")
