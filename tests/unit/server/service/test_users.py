"""The image USER lookup (server/service/users.py)."""

from __future__ import annotations

import pytest

from stockade.errors import InvalidArgumentError
from stockade.server.service.users import resolve_user

PASSWD = "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1001::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:\napp:x:1001:\n"


@pytest.mark.parametrize(
    ("spec", "ids"),
    [
        ("app", (1000, 1001)),
        ("1000", (1000, 1001)),
        ("4242", (4242, 0)),
        ("app:staff", (1000, 50)),
        ("app:77", (1000, 77)),
        ("4242:4343", (4242, 4343)),
        ("root", (0, 0)),
    ],
)
def test_resolves(spec: str, ids: tuple[int, int]) -> None:
    assert resolve_user(spec, PASSWD, GROUP) == ids


@pytest.mark.parametrize(
    ("spec", "needle"), [("ghost", "'ghost' is not in its /etc/passwd"), ("app:ghosts", "group")]
)
def test_names_what_is_missing(spec: str, needle: str) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        resolve_user(spec, PASSWD, GROUP)


def test_out_of_range() -> None:
    with pytest.raises(InvalidArgumentError, match="out of range"):
        resolve_user("99999999999", PASSWD, GROUP)


@pytest.mark.parametrize(
    "passwd",
    [
        "app:x:\u00b2:1000::/home/app:/bin/sh\n",  # a digit int() does not take
        "app:x:" + "9" * 5000 + ":1000::/home/app:/bin/sh\n",  # past int()'s digit limit
        "app:x:99999999999:1000::/home/app:/bin/sh\n",  # past 32 bits
        "app:x:-5:1000::/home/app:/bin/sh\n",
    ],
)
def test_a_hostile_passwd_entry_is_an_unknown_user_not_a_crash(passwd: str) -> None:
    with pytest.raises(InvalidArgumentError, match="not in its /etc/passwd"):
        resolve_user("app", passwd, "")


def test_numeric_ids_are_bounded_ascii_digits() -> None:
    assert resolve_user("2147483647", "", "") == (2147483647, 0)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        resolve_user("9" * 5000, "", "")
    with pytest.raises(InvalidArgumentError, match="not in its /etc/passwd"):
        resolve_user("\u00b2", "", "")
    with pytest.raises(InvalidArgumentError, match="not in its /etc/group"):
        resolve_user("0:\u00b2", "", "")
