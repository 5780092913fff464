"""Who a files call that makes something acts as: the call's ``user=``, else the
sandbox's user.

FILE_WRITE and FILE_MKDIR carry that user's uid and gid, and the agent opens and creates
with the user's own credentials: the sandbox's kernel checks the user's permissions (a
symlink planted by the sandbox's code leads only where the user may write anyway) and
what is made belongs to the user from the start, with no chown afterwards.
"""

from __future__ import annotations

from .execs import ExecService
from .users import check_user

__all__ = ["owner_for"]


async def owner_for(
    execs: ExecService, sandbox_id: str, user: str | None
) -> tuple[int, int] | None:
    """``(uid, gid)`` that a files call acts as: ``user``'s (None: the sandbox's own user),
    or None where that is root, the agent's own. Resolved before the call does anything,
    so an unknown user changes nothing."""
    if user is not None:
        uid, gid = await execs.sandboxes.user_ids(sandbox_id, check_user(user))
    else:
        record = await execs.sandboxes.get(sandbox_id)
        if record.uid is None:
            return None
        uid, gid = record.uid, record.gid or 0
    return None if (uid, gid) == (0, 0) else (uid, gid)
