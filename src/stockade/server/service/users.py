"""An image's USER (``name``, ``uid``, ``name:group``, ``uid:gid``) as numeric IDs, looked up
in the image's own /etc/passwd and /etc/group, as Docker and runc do."""

from __future__ import annotations

import re

from ...errors import InvalidArgumentError

__all__ = ["USER_PATTERN", "check_user", "resolve_user"]

# A user as callers give it: a name or uid, optionally ``:group`` or ``:gid``.
USER_PATTERN = r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,31}(:[A-Za-z0-9._][A-Za-z0-9._-]{0,31})?$"
_USER = re.compile(USER_PATTERN)
_MAX_LISTED = 30  # users named in an error (an image may have many)


def check_user(spec: str) -> str:
    """``spec`` if it has the shape of ``user[:group]``, else InvalidArgumentError."""
    if not _USER.fullmatch(spec):
        raise InvalidArgumentError(
            f"user {spec[:80]!r} must be a user name or uid, optionally with :group or :gid "
            "(e.g. 'app', '1000', '1000:1000')"
        )
    return spec


def _id(text: str) -> bool:
    """Whether ``text`` is a uid or gid: ASCII digits, at most 10 (the file is the
    sandbox's: ``²`` or a 5000-digit number must be a clear error, not a crash)."""
    return text.isascii() and text.isdigit() and len(text) <= 10


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(spec: str, passwd: str, group: str) -> tuple[int, int]:
    """``(uid, gid)`` for ``spec``. A numeric uid needs no passwd entry (its group is then
    0, as in runc); a name must have one. Raises InvalidArgumentError naming what is missing.
    """
    user, _, grp = spec.partition(":")
    users = _table(passwd)
    if user.isascii() and user.isdigit():
        if len(user) > 10:
            raise InvalidArgumentError(f"user {spec[:40]!r} is out of range")
        uid = int(user)
        entry = next((u for u in users if len(u) > 3 and u[2] == user), None)
        gid = int(entry[3]) if entry is not None and _id(entry[3]) else 0
    else:
        entry = next((u for u in users if len(u) > 3 and u[0] == user), None)
        if entry is None or not _id(entry[2]) or not _id(entry[3]):
            names = [u[0] for u in users if u and u[0]][:_MAX_LISTED]
            listed = ", ".join(names) + (", …" if len(users) > _MAX_LISTED else "")
            raise InvalidArgumentError(
                f"the image's user {user!r} is not in its /etc/passwd (its users: "
                f"{listed or 'none'}); use one of those or a uid[:gid]"
            )
        uid, gid = int(entry[2]), int(entry[3])
    if grp:
        if grp.isascii() and grp.isdigit():
            if len(grp) > 10:
                raise InvalidArgumentError(f"user {spec[:40]!r} is out of range")
            gid = int(grp)
        else:
            found = next((g for g in _table(group) if len(g) > 2 and g[0] == grp), None)
            if found is None or not _id(found[2]):
                raise InvalidArgumentError(
                    f"the image's group {grp!r} is not in its /etc/group; use a gid instead"
                )
            gid = int(found[2])
    if uid > 2**31 - 1 or gid > 2**31 - 1:
        raise InvalidArgumentError(f"user {spec!r} is out of range")
    return uid, gid
