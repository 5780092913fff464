"""Sandbox names (their rules, one winner per name), readiness checks' parsing and the
/proc/net/tcp reading behind a port check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from stockade.errors import ConflictError, InvalidArgumentError, NotFoundError
from stockade.server.service.names import Names, check_name, holds_name
from stockade.server.service.readiness import Readiness, _listens
from stockade.server.service.users import check_user, resolve_user
from stockade.server.state.records import SandboxRecord, SandboxStatus
from stockade.server.state.store import SQLiteStore


@pytest.mark.parametrize("name", ["builder", "a", "web-1.prod_x", "x" * 63, "sb", "sbx-1"])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 64, "Builder", "a b", "a/b", "sb-0123", "é"])
def test_bad_names_say_what_is_allowed(name: str) -> None:
    with pytest.raises(InvalidArgumentError, match="sandbox name"):
        check_name(name)


def _record(sid: str, name: str | None, status: SandboxStatus, tenant: str) -> SandboxRecord:
    return SandboxRecord(
        id=sid, image="debian", cpu=1, memory=512, disk=1024, timeout=60, status=status,
        tenant=tenant, name=name,
    )  # fmt: skip


def test_only_live_and_paused_sandboxes_hold_names() -> None:
    held = {s for s in SandboxStatus if holds_name(_record("sb-1", "n", s, "t"))}
    assert held == {SandboxStatus.STARTING, SandboxStatus.RUNNING, SandboxStatus.PAUSED}
    assert not holds_name(_record("sb-1", None, SandboxStatus.RUNNING, "t"))


def test_two_claims_of_one_name_make_one_sandbox(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    names = Names(lambda: store)

    async def create(sid: str) -> str:
        async with names.claim("acme", "web"):
            await asyncio.sleep(0.01)  # the other claim runs meanwhile
            await store.put_sandbox(_record(sid, "web", SandboxStatus.RUNNING, "acme"))
        return sid

    async def main() -> None:
        results = await asyncio.gather(create("sb-1"), create("sb-2"), return_exceptions=True)
        won = [r for r in results if isinstance(r, str)]
        lost = [r for r in results if isinstance(r, ConflictError)]
        assert len(won) == 1 and len(lost) == 1, results
        assert won[0] in str(lost[0])
        assert (await names.get("acme", "web")).id == won[0]
        # Another tenant's name answers as missing, and is free there.
        with pytest.raises(NotFoundError):
            await names.get("globex", "web")
        assert await create_for("globex") == "sb-3"
        assert not names._locks  # nothing kept for names no longer being claimed

    async def create_for(tenant: str) -> str:
        async with names.claim(tenant, "web"):
            await store.put_sandbox(_record("sb-3", "web", SandboxStatus.RUNNING, tenant))
        return "sb-3"

    asyncio.run(main())


def test_readiness_forms() -> None:
    assert Readiness.parse(8000, None) == Readiness(port=8000, timeout=60.0)
    url = "http://localhost:8000/healthz"
    assert Readiness.parse(url, 5).url == url
    assert Readiness.parse(["pg_isready", "-q"], 10).command == ("pg_isready", "-q")


@pytest.mark.parametrize(
    ("value", "timeout", "needle"),
    [
        (0, None, "1..65535"), (70000, None, "1..65535"), (True, None, "a port"),
        ("localhost:8000", None, "http://"), ("http://a b/", None, "http://"),
        ([], None, "non-empty"), ([""], None, "non-empty"), (8000, 0, "readiness_timeout"),
        (8000, 99999, "readiness_timeout"),
    ],
)  # fmt: skip
def test_bad_readiness_says_what_it_may_be(
    value: int | str | list[str], timeout: float | None, needle: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        Readiness.parse(value, timeout)


_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1
   1: 0100007F:0016 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2
"""


def test_listening_ports_are_read_from_proc_net_tcp() -> None:
    assert _listens(_TCP, 8000)
    assert not _listens(_TCP, 22)  # established, not listening
    assert not _listens(_TCP, 8001)
    assert not _listens("garbage\n: : :\n", 8000)


def test_user_shapes_and_unknown_users_name_the_images_users() -> None:
    for good in ("app", "1000", "1000:1000", "app:staff", "www-data"):
        assert check_user(good) == good
    for bad in ("", "a b", "../x", "a:b:c", "-x", "x" * 33):
        with pytest.raises(InvalidArgumentError, match="user"):
            check_user(bad)
    passwd = "root:x:0:0::/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\n"
    with pytest.raises(InvalidArgumentError, match="its users: root, daemon"):
        resolve_user("ghost", passwd, "")
    assert resolve_user("daemon", passwd, "") == (1, 1)
