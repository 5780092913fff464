"""``Image``: where a sandbox's files come from, described in code.

An ``Image`` is an immutable description, resolved by the server when a sandbox is created
from it. Today it is one of:

- a base image by name: ``Image.from_name("python")`` (plain strings work too);
- an OCI registry image: ``Image.from_registry("python:3.12-slim", auth=("user", "pw"))``,
  pulled by the server on first use (its layers are kept and shared), with the image's
  ``Env`` and ``WorkingDir`` as the sandbox's defaults.

Example::

    from stockade import Image, Sandbox

    img = Image.from_registry("127.0.0.1:5000/team/tools:1.4")
    with Sandbox.create(image=img) as sb:
        print(sb.run("tool --version").stdout)
"""

from __future__ import annotations

from dataclasses import dataclass

from stockade.errors import InvalidArgumentError

__all__ = ["Image"]


@dataclass(frozen=True)
class Image:
    """An image description; build one with :meth:`from_name` or :meth:`from_registry`."""

    name: str
    # A registry login for a private registry image; never shown in repr().
    auth: tuple[str, str] | None = None

    def __repr__(self) -> str:
        return f"Image({self.name!r}{', auth=…' if self.auth else ''})"

    @property
    def is_registry(self) -> bool:
        return any(c in self.name for c in ":/@")

    @classmethod
    def from_name(cls, name: str) -> Image:
        """A base image the server knows by name (``debian``, ``python``)."""
        if not name or any(c in name for c in ":/@"):
            raise InvalidArgumentError(
                f"{name!r} is not a base image name; for a registry image use "
                "Image.from_registry(...)"
            )
        return cls(name)

    @classmethod
    def from_registry(cls, ref: str, *, auth: tuple[str, str] | None = None) -> Image:
        """An image from any OCI registry: ``python:3.12-slim``, ``ghcr.io/org/app:v1``,
        ``127.0.0.1:5000/app@sha256:…``. ``auth`` is ``(username, password)``."""
        ref = ref.strip()
        if not ref:
            raise InvalidArgumentError("an image reference is needed, e.g. 'python:3.12-slim'")
        if auth is not None and (
            len(auth) != 2 or not all(isinstance(x, str) for x in auth)
        ):
            raise InvalidArgumentError("auth must be a (username, password) pair of strings")
        if not any(c in ref for c in ":/@"):
            ref += ":latest"  # "alpine" means Docker Hub's alpine, not a base image
        return cls(ref, auth)
