"""Sandbox names, tag updates, readiness checks and running as a user, against a real
server and real gVisor sandboxes."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from stockade import (
    Client,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    StockadeError,
    StockadeTimeoutError,
)

from .conftest import LiveServer
from .helpers import force_cleanup, runsc_binary, unique, wait_for

pytestmark = pytest.mark.runsc

STOCKADE = str(Path(sys.executable).parent / "stockade")


def _tenant_key(http: httpx.Client) -> str:
    name = unique("tn")
    assert http.post("/v1/tenants", json={"name": name}).status_code == 201
    made = http.post("/v1/keys", json={"tenant": name, "role": "user", "name": "u"})
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    return key


@pytest.fixture(scope="module")
def keys(server: LiveServer) -> Iterator[tuple[str, str]]:
    """User keys of two new tenants."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
        yield _tenant_key(http), _tenant_key(http)


def test_names_are_unique_per_tenant_and_freed_by_the_end(
    server: LiveServer, keys: tuple[str, str]
) -> None:
    name = unique("builder")
    with Client(server.url, keys[0]) as acme, Client(server.url, keys[1]) as globex:
        # Two creates with one name at once: exactly one wins, the other hears who has it.
        def make() -> Sandbox | StockadeError:
            try:
                return Sandbox.create(image="debian", name=name, timeout=120, client=acme)
            except StockadeError as exc:
                return exc

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: make(), range(2)))
        made = [r for r in results if isinstance(r, Sandbox)]
        lost = [r for r in results if not isinstance(r, Sandbox)]
        assert len(made) == 1 and len(lost) == 1, results
        sb = made[0]
        assert isinstance(lost[0], ConflictError) and sb.id in str(lost[0])
        assert sb.last_info.name == name

        found = Sandbox.from_name(name, client=acme)
        assert found.id == sb.id
        # Get-or-create hands back the live one.
        assert Sandbox.create(image="debian", name=name, get_if_exists=True, client=acme).id == (
            sb.id
        )
        listed = acme.request("GET", "/v1/sandboxes", params={"name": name})["sandboxes"]
        assert [s["id"] for s in listed] == [sb.id]

        # Another tenant: the name answers as missing, and is free to use there.
        with pytest.raises(NotFoundError):
            Sandbox.from_name(name, client=globex)
        theirs = Sandbox.create(image="debian", name=name, timeout=60, client=globex)
        assert theirs.id != sb.id
        theirs.terminate()

        # The CLI takes the name wherever it takes an ID.
        env = {"STOCKADE_URL": server.url, "STOCKADE_TOKEN": keys[0], "PATH": "/usr/bin:/bin"}
        out = subprocess.run(
            [STOCKADE, "exec", name, "--", "echo", "by-name"],
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert (out.returncode, out.stdout) == (0, "by-name\n"), out.stderr

        sb.terminate()  # an ended sandbox frees its name
        with pytest.raises(NotFoundError):
            Sandbox.from_name(name, client=acme)
        again = Sandbox.create(image="debian", name=name, timeout=60, client=acme)
        assert again.id != sb.id
        again.terminate()

        for bad in ("sb-0123", "UPPER", "a/b", "x" * 64):
            with pytest.raises(InvalidArgumentError):
                Sandbox.create(image="debian", name=bad, client=acme)


def test_set_tags_replaces_them(server: LiveServer) -> None:
    tag = unique("tag")
    with Sandbox.create(image="debian", tags={"a": "1", "old": "x"}, timeout=60) as sb:
        info = sb.set_tags({"a": "2", "t": tag})
        assert info.tags == {"a": "2", "t": tag}
        assert [s.id for s in Sandbox.list(tags={"t": tag})] == [sb.id]
        assert Sandbox.list(tags={"old": "x", "t": tag}) == []


_SERVER = "sleep 1; exec python3 -m http.server 8000 --bind 127.0.0.1"


@pytest.mark.parametrize(
    "readiness",
    [8000, "http://localhost:8000/", ["sh", "-c", "python3 -c \"import urllib.request as u; "
                                      "u.urlopen('http://127.0.0.1:8000/')\""]],
    ids=["port", "url", "command"],
)  # fmt: skip
def test_readiness_waits_for_the_entrypoints_server(
    server: LiveServer, readiness: int | str | list[str]
) -> None:
    started = time.monotonic()
    with Sandbox.create(
        image="python", entrypoint=["sh", "-c", _SERVER], readiness=readiness, timeout=120
    ) as sb:
        # Ready means ready: the first request is answered, with no retry.
        r = sb.run(["python3", "-c", "import urllib.request as u; "
                    "print(u.urlopen('http://127.0.0.1:8000/').status)"])  # fmt: skip
        assert r.stdout == "200\n", r.stderr
    assert time.monotonic() - started >= 1.0


def test_readiness_failing_ends_the_sandbox_and_says_why(server: LiveServer) -> None:
    tag = unique("notready")
    with pytest.raises(StockadeTimeoutError) as err:
        Sandbox.create(
            image="debian", tags={"t": tag}, timeout=120, readiness_timeout=2,
            readiness=["sh", "-c", "echo still-booting-db >&2; exit 3"],
        )  # fmt: skip
    assert "still-booting-db" in str(err.value) and "exit code 3" in str(err.value)
    left = Sandbox.list(tags={"t": tag})
    assert [s.last_info.status for s in left] == ["terminated"]
    # A URL nobody serves, within its timeout, the same way.
    with pytest.raises(StockadeTimeoutError, match="URL http://localhost:9/"):
        Sandbox.create(
            image="python", tags={"t": tag}, readiness="http://localhost:9/",
            readiness_timeout=1.5, timeout=60,
        )  # fmt: skip
    assert all(s.last_info.ended for s in Sandbox.list(tags={"t": tag}))


def test_users_by_name_and_uid_for_exec_run_and_files(server: LiveServer) -> None:
    with Sandbox.create(image="debian", user="nobody", timeout=120) as sb:
        assert sb.last_info.user == "nobody"
        assert sb.run("id -u; id -g").stdout == "65534\n65534\n"
        assert sb.run("id -u", user="daemon").stdout == "1\n"
        assert sb.run("id -u; id -g", user="1234:2345").stdout == "1234\n2345\n"
        assert sb.run("id -u", user="root").stdout == "0\n"
        p = sb.exec("id", "-un", user="daemon")
        assert (p.stdout.read(), p.wait()) == ("daemon\n", 0)

        # Files belong to the call's user, else the sandbox's.
        sb.files.write("/tmp/as-sandbox.txt", "a")
        sb.files.write("/tmp/as-uid.txt", "b", user="1234:2345")
        sb.files.write("/tmp/as-daemon.txt", "c", user="daemon")
        sb.files.write("/tmp/as-root.txt", "d", user="root")
        sb.files.mkdir("/tmp/dir-uid", user="4321")
        owners = sb.run(
            "stat -c '%u:%g' /tmp/as-sandbox.txt /tmp/as-uid.txt /tmp/as-daemon.txt "
            "/tmp/as-root.txt /tmp/dir-uid",
            user="root",
        ).stdout.split()
        assert owners == ["65534:65534", "1234:2345", "1:1", "0:0", "4321:0"]

        # An unknown user names the image's users, and nothing is written.
        with pytest.raises(InvalidArgumentError, match="its users: root, daemon") as err:
            sb.run("true", user="ghost")
        assert err.value.status == 422
        with pytest.raises(InvalidArgumentError, match="ghost"):
            sb.files.write("/tmp/ghost.txt", "x", user="ghost")
        assert sb.run("test -e /tmp/ghost.txt").exit_code == 1

    with pytest.raises(InvalidArgumentError, match="its users: root"):
        Sandbox.create(image="debian", user="ghost", timeout=60)


def test_a_pooled_sandbox_takes_the_name_and_the_user(server: LiveServer) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="stockade-names-pool-"))
    live = LiveServer(
        data_dir=tmp / "data", token="sk_test_" + secrets.token_hex(8),
        extra_args=["--pool", "debian=1"],
    )  # fmt: skip
    live.start()
    try:
        with Client(live.url, live.token) as client:

            def ready() -> bool | None:
                pools = client.request("GET", "/v1/pools")["pools"]
                return True if any(p["ready"] == 1 for p in pools) else None

            wait_for(ready, timeout=60, what="the pool to fill")
            listed = subprocess.run(
                [runsc_binary(), f"--root={live.data_dir / 'runsc'}", "list", "--format=json"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            waiting = {str(i["id"]) for i in json.loads(listed.stdout or "[]") or []}
            name = unique("pooled")
            sb = Sandbox.create(image="debian", name=name, user="daemon", client=client)
            assert sb.id in waiting  # handed out from the pool
            assert Sandbox.from_name(name, client=client).id == sb.id
            assert sb.run("id -u").stdout == "1\n"
            with pytest.raises(ConflictError, match=sb.id):
                Sandbox.create(image="debian", name=name, client=client)
            sb.terminate()
    finally:
        live.stop()
        force_cleanup(tmp, live.data_dir)


def test_a_passwd_that_never_ends_is_a_clear_error_not_a_hang(server: LiveServer) -> None:
    with Sandbox.create(image="debian", memory=128, timeout=120) as sb:
        # The sandbox's own /etc/passwd, made a FIFO whose writer never writes.
        sb.run("rm /etc/passwd && mkfifo /etc/passwd && (sleep 300 > /etc/passwd &)")
        started = time.monotonic()
        with pytest.raises(InvalidArgumentError, match="FIFO or a device"):
            sb.run("id", user="nobody")
        assert time.monotonic() - started < 30
        assert sb.run("id -u").stdout == "0\n"  # the sandbox works on
