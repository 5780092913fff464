"""What a sandbox writes is never honoured by the host, and no other host user can reach
the server's state: proven as an unprivileged host user made for the test.

The server's directories sit under a world-traversable parent here (``/tmp``-like), so
that only the server's own modes and mount options stand between that user and them.
"""

from __future__ import annotations

import pwd
import secrets
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade import Client, Sandbox

from .conftest import LiveServer, private_cache
from .helpers import force_cleanup

pytestmark = pytest.mark.runsc

PROBE = "stockade-probe"
PLANT = (
    "cp /bin/bash /opt/suid-sh && chmod 4755 /opt/suid-sh && "
    "echo data > /opt/world && chmod 666 /opt/world && chmod 777 /opt"
)


@pytest.fixture(scope="module")
def probe_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PROBE)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PROBE],
            check=True,
        )
        return pwd.getpwnam(PROBE)


@pytest.fixture(scope="module")
def exposed_server() -> Iterator[LiveServer]:
    tmp = Path(tempfile.mkdtemp(prefix="stockade-exposure-"))
    tmp.chmod(0o755)  # as /var/lib and /var/cache are: anyone may pass through
    server = LiveServer(data_dir=tmp / "data", token="sk_test_" + secrets.token_hex(8))
    server.extra_args = ["--cache-dir", str(private_cache(tmp))]
    (tmp / "cache").chmod(0o755)  # a cache directory an older server left open
    try:
        server.start()
        yield server
    finally:
        server.terminate_all()
        server.stop()
        force_cleanup(tmp, server.data_dir)


def _as_probe(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[str]:
    # runuser, not setpriv: setpriv resolves the program while still root.
    return subprocess.run(
        ["runuser", "-u", user.pw_name, "--", *argv], capture_output=True, text=True, timeout=30
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_unprivileged_host_user_gains_nothing_from_a_sandbox(
    exposed_server: LiveServer, probe_user: pwd.struct_passwd
) -> None:
    server = exposed_server
    data, cache = server.data_dir, server.data_dir.parent / "cache"
    with Client(server.url, server.token) as client:
        sb = Sandbox.create(image="debian", timeout=120, env={"API_KEY": "s3cret"}, client=client)
        try:
            assert sb.run(PLANT).exit_code == 0
            snap = sb.snapshot()
            image = sb.snapshot_filesystem()
            upper = data / "sandboxes" / sb.id / "disk" / "upper"
            planted = [
                upper / "opt" / "suid-sh",
                data / "snapshots" / snap.id / "upper" / "opt" / "suid-sh",
                *cache.glob("layers/build-*/opt/suid-sh"),
            ]
            assert len(planted) == 3 and all(p.exists() for p in planted), planted
            assert all(p.stat().st_mode & stat.S_ISUID and p.stat().st_uid == 0 for p in planted)

            # As root: the modes and mount options that keep the host safe.
            assert _mode(data) == 0o700 and _mode(cache) == 0o700
            secrets_files = [data / "state.db", data / "sandboxes" / sb.id / "config.json"]
            secrets_files += [p for p in (data / "state.db-wal", data / "token") if p.exists()]
            for path in secrets_files:
                assert _mode(path) == 0o600, path
            sandbox_dir = data / "sandboxes" / sb.id
            for mount in (sandbox_dir / "disk", sandbox_dir / "merged"):
                options = subprocess.run(
                    ["findmnt", "-n", "-o", "OPTIONS", "--mountpoint", str(mount)],
                    capture_output=True, text=True, check=True,
                ).stdout.split(",")  # fmt: skip
                assert "nosuid" in options and "nodev" in options, (mount, options)

            # As the host user: nothing to list, read, write or run.
            for argv in (
                ["ls", str(data / "sandboxes")],
                ["ls", str(cache / "layers")],
                ["cat", str(data / "state.db")],
                ["cat", str(data / "sandboxes" / sb.id / "config.json")],
                ["sh", "-c", f"echo pwned > {upper / 'opt' / 'world'}"],
                *([str(p), "-p", "-c", "id -u"] for p in planted),
            ):
                r = _as_probe(probe_user, *argv)
                assert r.returncode != 0 and "denied" in r.stderr.lower(), (argv, r)
            assert sb.files.read_text("/opt/world") == "data\n"

            # Even were the directories open, the disk's mount would not honour the bit.
            opened = [data, data / "sandboxes", data / "sandboxes" / sb.id]
            saved = [_mode(p) for p in opened]
            try:
                for p in opened:
                    p.chmod(0o755)
                r = _as_probe(probe_user, str(planted[0]), "-p", "-c", "id -u")
                assert r.returncode == 0 and r.stdout.strip() == str(probe_user.pw_uid), r
            finally:
                for p, mode in zip(opened, saved, strict=True):
                    p.chmod(mode)
            del image
        finally:
            sb.terminate()
