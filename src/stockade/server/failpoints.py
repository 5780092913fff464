"""Named crash points for fault-injection tests.

``STOCKADE_FAILPOINTS=pause.after-checkpoint,snapshot.before-record`` makes the server
process die on the spot (``os._exit``, as abruptly as ``kill -9``: no cleanup, no flush)
when it reaches one of those points. The tests use it to prove that a crash at any step
of a pause, snapshot, fork or resume leaves a consistent state. Unset, a failpoint costs
one set lookup.
"""

from __future__ import annotations

import os

__all__ = ["failpoint"]

_ARMED = frozenset(filter(None, os.environ.get("STOCKADE_FAILPOINTS", "").split(",")))


def failpoint(name: str) -> None:
    if name in _ARMED:
        os.write(2, f"failpoint {name}: exiting\n".encode())
        os._exit(137)
