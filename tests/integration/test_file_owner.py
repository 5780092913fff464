"""Files calls with a user act as that user inside gVisor: the sandbox's kernel checks the
user's permissions, so a symlink planted by the sandbox's own unprivileged code cannot
turn a write "as nobody" into a write to a root file; what is made is the user's."""

from __future__ import annotations

import httpx
import pytest

from stockade import InvalidArgumentError, Sandbox

from .conftest import LiveServer

pytestmark = pytest.mark.runsc


def _owners(sb: Sandbox, *paths: str) -> list[str]:
    out = sb.run(["stat", "-c", "%u:%g", *paths], user="root")
    assert out.exit_code == 0, out.stderr
    return out.stdout.split()


def test_files_calls_with_a_user_act_as_that_user(server: LiveServer) -> None:
    with Sandbox.create(image="debian", timeout=120) as sb:
        passwd = sb.files.read_bytes("/etc/passwd")
        # The sandbox's code, as nobody, points a path it may create at a root file.
        planted = sb.run("ln -s /etc/passwd /var/tmp/s", user="nobody")
        assert planted.exit_code == 0, planted.stderr
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as http:
            put = http.put(
                f"/v1/sandboxes/{sb.id}/files",
                params={"path": "/var/tmp/s", "user": "nobody"},
                content=b"pwned::0:0::/:/bin/sh\n",
            )
        assert put.status_code == 422, put.text
        error = put.json()["error"]
        assert error["code"] == "invalid_argument"
        assert "/var/tmp/s" in error["message"] and "as user 65534:65534" in error["message"]
        assert "ermission denied" in error["message"]
        assert sb.files.read_bytes("/etc/passwd") == passwd
        assert _owners(sb, "/etc/passwd") == ["0:0"]

        # A write as a user makes the file and its new parents the user's.
        sb.files.write("/var/tmp/new/deeper/f.txt", "mine", user="nobody")
        assert _owners(sb, "/var/tmp/new", "/var/tmp/new/deeper", "/var/tmp/new/deeper/f.txt") \
            == ["65534:65534"] * 3  # fmt: skip
        assert sb.files.read_text("/var/tmp/new/deeper/f.txt") == "mine"
        # ...which another user may not write into, nor into root's directories.
        with pytest.raises(InvalidArgumentError, match="as user 1:1"):
            sb.files.write("/var/tmp/new/deeper/g.txt", "x", user="daemon")
        with pytest.raises(InvalidArgumentError, match=r"/etc/x.*as user 65534:65534"):
            sb.files.write("/etc/x", "x", user="nobody")

        # mkdir as a user, parents included; refused where the user may not write.
        sb.files.mkdir("/var/tmp/d/e", user="1234:2345")
        assert _owners(sb, "/var/tmp/d", "/var/tmp/d/e") == ["1234:2345"] * 2
        with pytest.raises(InvalidArgumentError, match=r"/etc/newdir.*as user 1:1"):
            sb.files.mkdir("/etc/newdir", user="daemon")
        assert sb.run("test -e /etc/newdir || test -e /etc/x").exit_code == 1

        # As root (the default of a sandbox without a user): root's files, as before.
        sb.files.write("/etc/as-root/f.txt", "r")
        sb.files.write("/etc/as-root/g.txt", "r", user="root")
        assert _owners(sb, "/etc/as-root", "/etc/as-root/f.txt", "/etc/as-root/g.txt") \
            == ["0:0"] * 3  # fmt: skip
