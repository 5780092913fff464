"""Who owns what a files call makes: the call's ``user=``, else the sandbox's user.

The agent writes files as root (its FILE_WRITE and FILE_MKDIR carry no owner); a file
written for another user is then handed to it with the image's own ``chown``, run as
root through the agent, never on the host's view of the sandbox's files. ``chown -h``
changes a symlink planted at the path, not what it points to.
"""

from __future__ import annotations

from ...errors import InvalidArgumentError
from .execs import ExecService
from .readiness import capture
from .users import check_user

__all__ = ["give_to", "owner_for"]


async def owner_for(
    execs: ExecService, sandbox_id: str, user: str | None
) -> tuple[int, int] | None:
    """``(uid, gid)`` that what a files call makes must belong to: ``user``'s (None: the
    sandbox's own user), or None where that is root, the agent's own. Resolved before the
    call does anything, so an unknown user changes nothing."""
    if user is not None:
        uid, gid = await execs.sandboxes.user_ids(sandbox_id, check_user(user))
    else:
        record = await execs.sandboxes.get(sandbox_id)
        if record.uid is None:
            return None
        uid, gid = record.uid, record.gid or 0
    return None if (uid, gid) == (0, 0) else (uid, gid)


async def give_to(
    execs: ExecService, sandbox_id: str, path: str, owner: tuple[int, int] | None
) -> None:
    """Make ``owner`` (from :func:`owner_for`) the owner of ``path``, just made."""
    if owner is None:
        return
    uid, gid = owner
    code, out = await capture(
        execs, sandbox_id, ["chown", "-h", f"{uid}:{gid}", "--", path], user="root"
    )
    if code != 0:
        raise InvalidArgumentError(
            f"cannot give {path} to user {uid}:{gid}: chown exited {code}: {out[:300]} "
            "(the image needs a chown program for files calls with a user)"
        )
