"""``Image``: a sandbox's environment, described in code.

An ``Image`` is immutable: every method returns a new one, so a shared base can be extended
in several directions. It is only a description; the server builds it when a sandbox is
first created from it (or on :meth:`Image.tag` / :meth:`Image.atag`), one layer per step,
and caches each layer under a key made of its parent's key and the step (and, for
``add_local_*``, the files' contents). Changing a step rebuilds that step and the ones
after it, nothing before.

Starting points:

- ``Image.debian_slim(python_version="3.11")``: Debian bookworm with Python;
- ``Image.from_registry("python:3.12-slim", auth=("user", "pw"))``: any OCI image, pulled
  by the server (its ``Env`` and ``WorkingDir`` become the defaults);
- ``Image.from_name("python")``: a base image by name.

Example::

    from stockade import Image, Sandbox

    img = (Image.debian_slim(python_version="3.11")
           .apt_install("git")
           .pip_install("requests")
           .run_commands("mkdir -p /app")
           .env({"APP_MODE": "test"})
           .workdir("/app")
           .add_local_file("conf.toml", "/app/conf.toml"))
    with Sandbox.create(image=img) as sb:
        print(sb.run("git --version").stdout)
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import os
import posixpath
import tarfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stockade._paths import path_in_root
from stockade.errors import InvalidArgumentError

if TYPE_CHECKING:
    from stockade.models import ImageInfo

__all__ = ["Image"]

_REFERENCE_CHARS = ":/@"


class ImageBuilder(Protocol):
    """What :meth:`Image.tag` builds through: a :class:`~stockade.Client`."""

    def build(self, image: Image, *, tag: str | None = None) -> ImageInfo: ...


class AsyncImageBuilder(Protocol):
    """What :meth:`Image.atag` builds through: an :class:`~stockade.AsyncClient`."""

    def build(self, image: Image, *, tag: str | None = None) -> Awaitable[ImageInfo]: ...


# Each SDK flavour's client class, registered by its own module (stockade._async.client and
# the stockade._sync.client generated from it), so that this module, shared by both
# flavours and imported by both clients, imports neither.
_CLIENTS: dict[str, Callable[[], Any]] = {}


def register_client(cls: Callable[[], Any]) -> None:
    """Make ``cls`` the client that :meth:`Image.tag` (a sync client) or :meth:`Image.atag`
    (an async one, whose ``build`` is a coroutine) opens when none is passed."""
    build = getattr(cls, "build", None)
    _CLIENTS["async" if inspect.iscoroutinefunction(build) else "sync"] = cls


def _default_client(flavour: str) -> Any:
    """A new client of ``flavour`` for the default server (``$STOCKADE_URL``)."""
    return _CLIENTS[flavour]()


@dataclass(frozen=True)
class LocalCopy:
    """A local file or directory to copy into the image (read when the image is built)."""

    source: Path
    dest: str


@dataclass(frozen=True)
class Image:
    """An image description. Start with :meth:`debian_slim`, :meth:`from_registry` or
    :meth:`from_name`, then add steps."""

    # The base: a base image's name, a built image's name or ID, or a registry reference.
    name: str
    # A registry login for a private registry image; never shown in repr().
    auth: tuple[str, str] | None = None
    # Whether ``name`` is a registry reference (from_registry) rather than a Stockade name.
    registry: bool = False
    # The Python the base must provide (debian_slim only).
    python_version: str | None = None
    # The build steps, as sent to the server (JSON-ready dicts).
    steps: tuple[Mapping[str, Any], ...] = ()
    # The local files of each `copy` step, by step index (read at build time).
    copies: tuple[tuple[int, LocalCopy], ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        auth = ", auth=…" if self.auth else ""
        steps = f", {len(self.steps)} steps" if self.steps else ""
        return f"Image({self.name!r}{auth}{steps})"

    @property
    def is_registry(self) -> bool:
        return self.registry

    @property
    def is_plain(self) -> bool:
        """Whether the image is its base as it is (nothing to build)."""
        return not self.steps and self.python_version is None

    # -- starting points ---------------------------------------------------------------

    @classmethod
    def debian_slim(cls, python_version: str | None = None) -> Image:
        """Debian bookworm with Python, pip and venv (``pip install`` works system-wide).

        ``python_version`` must be one the base provides; the server's error lists them.
        """
        return cls("python", python_version=python_version)

    @classmethod
    def from_name(cls, name: str) -> Image:
        """An image the server knows by name: a base image (``debian``, ``python``), or one
        built and named with :meth:`tag` (``agent:v1``; ``agent`` means its newest build)."""
        if not name or any(c in name for c in "/@") or name.count(":") > 1:
            raise InvalidArgumentError(
                f"{name!r} is not an image name (name or name:tag); for a registry image use "
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
        if auth is not None and (len(auth) != 2 or not all(isinstance(x, str) for x in auth)):
            raise InvalidArgumentError("auth must be a (username, password) pair of strings")
        if not any(c in ref for c in _REFERENCE_CHARS):
            ref += ":latest"  # "alpine" means Docker Hub's alpine, not a base image
        return cls(ref, auth, registry=True)

    @classmethod
    def from_dockerfile(
        cls,
        path: str | os.PathLike[str],
        *,
        context: str | os.PathLike[str] | None = None,
        build_args: Mapping[str, str] | None = None,
    ) -> Image:
        """The image a Dockerfile describes: FROM (a registry image or a Stockade image),
        RUN, ENV, ARG, WORKDIR, COPY/ADD of local files, USER, ENTRYPOINT and CMD.

        ``context`` (default: the Dockerfile's directory) is where COPY sources are read.
        Any other instruction is an error that names its line.
        """
        from stockade._dockerfile import image_from_dockerfile

        dockerfile = Path(path)
        return image_from_dockerfile(
            dockerfile,
            context=Path(context) if context is not None else dockerfile.parent,
            build_args=dict(build_args or {}),
        )

    # -- steps -------------------------------------------------------------------------

    def _with(self, step: Mapping[str, Any], copy: LocalCopy | None = None) -> Image:
        copies = self.copies + (((len(self.steps), copy),) if copy is not None else ())
        return dataclasses.replace(self, steps=(*self.steps, step), copies=copies)

    def apt_install(self, *packages: str) -> Image:
        """Install Debian packages (``apt-get install``) in one layer."""
        return self._with({"op": "apt_install", "packages": _words("apt_install", packages)})

    def pip_install(self, *packages: str) -> Image:
        """Install Python packages with pip (requirement specifiers allowed) in one layer."""
        return self._with({"op": "pip_install", "packages": _words("pip_install", packages)})

    def run_commands(self, *commands: str) -> Image:
        """Run shell commands (``sh -c``) in order, in one layer; the first failure stops
        the build with its exit code and output."""
        return self._with({"op": "run", "commands": _words("run_commands", commands)})

    def env(self, variables: Mapping[str, str]) -> Image:
        """Set environment variables for later steps and for the sandboxes."""
        if not variables or not all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str)
            for k, v in variables.items()
        ):
            raise InvalidArgumentError('env needs a non-empty {"NAME": "value"} mapping')
        return self._with({"op": "env", "vars": dict(variables)})

    def workdir(self, path: str) -> Image:
        """The working directory of later steps and of the sandboxes (created if missing)."""
        return self._with({"op": "workdir", "path": path_in_root(path, "workdir")})

    def add_local_file(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copy a local file into the image at ``remote_path`` (its contents are part of
        the layer's cache key: edit the file and that layer is rebuilt)."""
        source = Path(local_path)
        if not source.is_file():
            raise InvalidArgumentError(f"add_local_file: {source} is not a file")
        dest = path_in_root(remote_path, "add_local_file: remote_path")
        return self._with({"op": "copy", "dest": dest}, LocalCopy(source, dest))

    def add_local_dir(self, local_path: str | os.PathLike[str], remote_path: str) -> Image:
        """Copy a local directory's contents into the image at ``remote_path``."""
        source = Path(local_path)
        if not source.is_dir():
            raise InvalidArgumentError(f"add_local_dir: {source} is not a directory")
        dest = path_in_root(remote_path, "add_local_dir: remote_path")
        return self._with({"op": "copy", "dest": dest, "dir": True}, LocalCopy(source, dest))

    def user(self, user: str) -> Image:
        """The user later steps and the sandboxes' commands run as (``name``, ``uid`` or
        ``uid:gid``)."""
        if not isinstance(user, str) or not user.strip() or any(c.isspace() for c in user):
            raise InvalidArgumentError(f"user must be a name, uid or uid:gid, got {user!r}")
        return self._with({"op": "user", "user": user})

    def entrypoint(self, argv: Sequence[str]) -> Image:
        """The image's default entrypoint (used by ``Sandbox.create(entrypoint=...)`` callers
        and kept in exports)."""
        return self._with({"op": "entrypoint", "argv": _argv("entrypoint", argv)})

    def cmd(self, argv: Sequence[str]) -> Image:
        """The image's default command (kept in exports)."""
        return self._with({"op": "cmd", "argv": _argv("cmd", argv)})

    def tag(self, name: str, *, client: ImageBuilder | None = None) -> str:
        """Build this image (if it is not built yet) and name it ``name:tag``, so that
        ``Image.from_name(name)`` and ``Sandbox.create(image="name:tag")`` find it; the
        name without a tag means its newest build. Returns the name given.

        It builds through ``client`` (a :class:`~stockade.Client`), else through a client
        of the default server (``$STOCKADE_URL``) that it closes again. In asyncio code,
        use :meth:`atag`.

        Example::

            Image.debian_slim().pip_install("httpx").tag("agent:v1")
            sb = Sandbox.create(image="agent:v1")
        """
        if client is not None:
            return client.build(self, tag=name).name
        own = _default_client("sync")
        try:
            return str(own.build(self, tag=name).name)
        finally:
            own.close()

    async def atag(self, name: str, *, client: AsyncImageBuilder | None = None) -> str:
        """:meth:`tag` for asyncio: build this image and name it ``name:tag``, through
        ``client`` (an :class:`~stockade.AsyncClient`) or a client of the default server.

        Example::

            await Image.debian_slim().pip_install("httpx").atag("agent:v1")
            sb = await AsyncSandbox.create(image="agent:v1")
        """
        if client is not None:
            return (await client.build(self, tag=name)).name
        own = _default_client("async")
        try:
            return str((await own.build(self, tag=name)).name)
        finally:
            await own.aclose()

    # -- the wire format ---------------------------------------------------------------

    def build_body(self, contexts: Mapping[int, str]) -> dict[str, Any]:
        """The body of ``POST /v1/images/builds``; ``contexts`` gives each copy step's
        uploaded tar digest by step index."""
        steps: list[dict[str, Any]] = []
        for index, step in enumerate(self.steps):
            item = dict(step)
            if item["op"] == "copy":
                copy = dict(self.copies)[index]
                item = {"op": "copy", "dest": context_dest(copy), "context": contexts[index]}
            steps.append(item)
        body: dict[str, Any] = {"image": self.name, "registry": self.registry, "steps": steps}
        if self.python_version is not None:
            body["python_version"] = self.python_version
        if self.auth is not None:
            body["auth"] = {"username": self.auth[0], "password": self.auth[1]}
        return body


def context_dest(copy: LocalCopy) -> str:
    """Where the copy step's tar is unpacked: the file's directory, or the directory."""
    return copy.dest if copy.source.is_dir() else posixpath.dirname(copy.dest) or "/"


def context_tar(copy: LocalCopy) -> tuple[bytes, str]:
    """The files of a copy step as a tar, and its ``sha256:`` digest.

    Deterministic (sorted names, owner root, time 0), so unchanged files give the same
    digest, and so the same cached layer; any change to a file's bytes or mode gives a
    new one.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if copy.source.is_dir():
            for path in sorted(copy.source.rglob("*")):
                _add(tar, path, path.relative_to(copy.source).as_posix())
        else:
            _add(tar, copy.source, posixpath.basename(copy.dest))
    data = buffer.getvalue()
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, path: Path, name: str) -> None:
    info = tar.gettarinfo(str(path), arcname=name)
    if not (info.isfile() or info.isdir() or info.issym()):
        return  # sockets, devices and fifos are not files to ship
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode &= 0o7777
    if info.isfile():
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def _words(what: str, items: Sequence[str]) -> list[str]:
    if not items or not all(isinstance(i, str) and i.strip() for i in items):
        raise InvalidArgumentError(f"{what} needs at least one non-empty string argument")
    return list(items)


def _argv(what: str, argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
        raise InvalidArgumentError(f'{what} takes a list of strings, e.g. ["python3", "app.py"]')
    return list(argv)
