"""Paths that callers name inside a root (an image, a layer): one check for the SDK and the
server, so that both refuse the same paths with the same message.

The SDK refuses a bad path before it uploads anything; the server refuses it again, since
an API caller need not use the SDK, before the path comes near a host directory.
"""

from __future__ import annotations

from .errors import InvalidArgumentError

__all__ = ["MAX_PATH", "path_in_root"]

MAX_PATH = 4096  # PATH_MAX: no path the sandbox's kernel accepts is longer


def path_in_root(path: object, what: str) -> str:
    """``path`` normalised (``/a/./b/../c`` -> ``/a/c``), or InvalidArgumentError when it is
    not an absolute path or its ``..`` climbs above the root.

    ``/..`` is refused rather than read as ``/``: on the host the root is a directory among
    others, and a caller who writes ``..`` past it means to leave it.

    >>> path_in_root("/app/./src/../conf", "dest")
    '/app/conf'
    """
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidArgumentError(f"{what} must be an absolute path such as '/app', got {path!r}")
    if len(path) > MAX_PATH or any(ord(c) < 32 or c == "\x7f" for c in path):
        raise InvalidArgumentError(
            f"{what} {path[:80]!r} must be at most {MAX_PATH} characters without control "
            "characters"
        )
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidArgumentError(
                    f"{what} {path!r} leaves the root: its '..' climbs above '/'; name a path "
                    "inside the image"
                )
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)
