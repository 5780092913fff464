"""The images a sandbox can start from, and the builds that make them.

An image is a stack of read-only layer directories in the cache directory, mounted as the
lower layers of each sandbox's overlay root. A sandbox's ``image`` is either the name of a
base image or an OCI registry reference (``python:3.12-slim``,
``127.0.0.1:5000/team/app@sha256:…``), pulled into the layer store on first use (see
``oci/``); a reference is anything with a ``:``, ``/`` or ``@`` in it.

The base images come from debootstrap:

- ``debian``: Debian bookworm minbase;
- ``python``: the same plus python3, pip and venv, with the "externally managed" marker
  removed so that ``pip install`` works as it does in Modal's ``debian_slim``.

Recipes (``code-interpreter``, see recipes.py) are named images that the image builder
makes from steps on first use, like any built image; the server registers them with
:meth:`ImageCatalog.add_recipe`, and their names resolve wherever a base image's does.

Builds happen once per cache directory, on first need. Several servers may share one cache
(the test suite does), so a build holds an exclusive file lock, writes into a temporary
directory and renames it into place only when complete: no half-made image is ever seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ...errors import NotFoundError, ServerError
from ..runtime import proc
from .built import BuiltImage, load_built
from .mirror import debian_mirror
from .oci import LayerStore, PulledImage, RegistryAuth, parse_reference, pull
from .oci.image import pulled_images
from .resolved import ResolvedImage
from .tags import DEFAULT, TagStore

__all__ = [
    "BaseImage",
    "BuildJob",
    "ImageCatalog",
    "ImageInfo",
    "Recipe",
    "ResolvedImage",
    "is_reference",
]

log = logging.getLogger(__name__)

_SUITE = "bookworm"


@dataclass(frozen=True)
class BaseImage:
    name: str
    description: str
    include: tuple[str, ...]

    def finish(self, rootfs: Path) -> None:
        """Adjust a fresh rootfs after debootstrap (runs on the host, on files only)."""
        # Let pip install into the system Python, as users of hosted sandboxes expect.
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        if self.include:
            (rootfs / "etc" / "pip.conf").write_text(
                "[global]\nbreak-system-packages = true\nroot-user-action = ignore\n"
                "disable-pip-version-check = true\n"
            )
        # Keep the image small and the apt lists out of it (they are stale at once anyway).
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            d = rootfs / junk
            if d.is_dir():
                for child in d.iterdir():
                    if child.is_file():
                        child.unlink()


BASE_IMAGES: dict[str, BaseImage] = {
    "debian": BaseImage("debian", "Debian bookworm (minbase)", ()),
    "python": BaseImage(
        "python",
        "Debian bookworm with python3, pip and venv",
        ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates"),
    ),
}


@dataclass(frozen=True)
class ImageInfo:
    name: str
    description: str
    ready: bool
    layers: tuple[Path, ...]
    size_mib: int | None


@dataclass(frozen=True)
class Recipe:
    """A named image that the image builder makes on first use.

    ``build`` makes it (or finds it made), passing its log lines on; ``lookup`` finds it
    made without building anything (``None`` when it is not), cheaply and synchronously.
    """

    name: str
    description: str
    build: Callable[[Callable[[str], None]], Awaitable[BuiltImage]]
    lookup: Callable[[], BuiltImage | None]


def is_reference(image: str) -> bool:
    """Whether ``image`` names a registry image rather than a base image."""
    return any(c in image for c in ":/@")


class BuildJob:
    """One running build; any number of listeners can follow its log from the start."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.error: str | None = None
        self.done = False
        # Set, then replaced, on every change: a follower waits on the one it saw last.
        self._changed = asyncio.Event()

    def post(self, line: str) -> None:
        """Add a log line; for callers that cannot await (the builder's log callback)."""
        self.lines.append(line)
        self._wake()

    async def add_line(self, line: str) -> None:
        self.post(line)

    async def finish(self, error: str | None) -> None:
        self.error = error
        self.done = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[str]:
        """Yield every log line, past and future, until the build ends."""
        sent = 0
        while True:
            changed = self._changed
            new = self.lines[sent:]
            done = self.done
            for line in new:
                yield line
            sent += len(new)
            if done and sent >= len(self.lines):
                return
            await changed.wait()  # at once if anything changed while yielding


class ImageCatalog:
    """Knows the images, builds missing ones once, and hands out their layer paths."""

    def __init__(
        self, cache_dir: Path, *, mirror: str | None = None, data_dir: Path | None = None
    ) -> None:
        self.root = cache_dir / "images"
        # Built images (see builder.py) and the names given to them.
        self.builds = cache_dir / "layers" / "builds"
        self.tags = TagStore((data_dir or cache_dir) / "image-tags.json")
        self.root.mkdir(parents=True, exist_ok=True)
        self._debs = cache_dir / "debs"
        self._mirror = mirror
        self._jobs: dict[str, BuildJob] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._recipes: dict[str, Recipe] = {}
        # Recipe images once made: resolving one again costs a dict lookup.
        self._made: dict[str, BuiltImage] = {}
        # Layers of registry images, stored once each and shared by every image using them.
        self.layers = LayerStore(cache_dir / "layers")

    def names(self) -> list[str]:
        """The base images, then the recipes."""
        return [*sorted(BASE_IMAGES), *sorted(self._recipes)]

    def add_recipe(self, recipe: Recipe) -> None:
        """Make ``recipe.name`` an image name, built by ``recipe.build`` on first use."""
        if recipe.name in BASE_IMAGES or recipe.name.startswith("img-"):
            raise ValueError(f"{recipe.name!r} cannot name a recipe: it names another image")
        if is_reference(recipe.name):
            raise ValueError(f"{recipe.name!r} cannot name a recipe: it reads as a reference")
        self._recipes[recipe.name] = recipe
        self._made.pop(recipe.name, None)

    def is_recipe(self, name: str) -> bool:
        return name in self._recipes

    def recipe_image(self, name: str) -> BuiltImage | None:
        """A recipe's image if it is made (without building it); None otherwise."""
        made = self._made.get(name)
        if made is None:
            made = self._recipes[name].lookup()
            if made is not None:
                self._made[name] = made
        return made

    async def made(self, name: str, on_log: Callable[[str], None] | None = None) -> BuiltImage:
        """A recipe's image, built first when needed (once, however many ask meanwhile);
        ``on_log`` gets the build's log lines."""
        made = self.recipe_image(name)
        if made is not None:
            return made
        await self.ensure(name, on_log)
        made = self.recipe_image(name)
        if made is None:
            raise ServerError(f"image {name!r} was built but its layers are missing")
        return made

    def _rootfs(self, name: str) -> Path:
        return self.root / name / "rootfs"

    def info(self, name: str) -> ImageInfo:
        recipe = self._recipes.get(name)
        if recipe is not None:
            made = self.recipe_image(name)
            if made is None:
                return ImageInfo(name, recipe.description, False, (), None)
            mib = made.size // (1024 * 1024)
            return ImageInfo(name, recipe.description, True, tuple(made.lowerdirs), mib)
        base = self._base(name)
        rootfs = self._rootfs(name)
        ready = (self.root / name / "complete").exists()
        size = None
        if ready:
            with contextlib.suppress(OSError, ValueError):
                size = int((self.root / name / "complete").read_text().strip() or 0)
        return ImageInfo(name, base.description, ready, (rootfs,) if ready else (), size)

    def _base(self, name: str) -> BaseImage:
        base = BASE_IMAGES.get(name)
        if base is None:
            known = ", ".join(self.names())
            raise NotFoundError(f"image {name!r} does not exist; the images are: {known}")
        return base

    def job(self, name: str) -> BuildJob | None:
        return self._jobs.get(name)

    def start_build(self, name: str) -> BuildJob:
        """Start building ``name`` unless a build is already running; return the build."""
        if name not in self._recipes:
            self._base(name)
        job = self._jobs.get(name)
        if job is not None and not job.done:
            return job
        job = BuildJob(name)
        self._jobs[name] = job
        self._tasks[name] = asyncio.create_task(self._build(name, job), name=f"build-{name}")
        return job

    def built(self, image: str, tenant: str = DEFAULT) -> BuiltImage | None:
        """A built image of ``tenant`` by ID (``img-…``) or by name (``agent:v1``; ``agent``
        = latest); another tenant's is None, as one that does not exist."""
        if image in BASE_IMAGES:
            return None  # the base image wins over a tag of the same bare name
        if image in self._recipes:
            return self.recipe_image(image)  # and so does a recipe (shared by all)
        image_id = image if image.startswith("img-") else self.tags.get(image, tenant)
        built = load_built(self.builds, image_id) if image_id else None
        return built if built is not None and built.tenant == tenant else None

    def check(self, image: str, tenant: str = DEFAULT) -> None:
        """Raise for an image name or reference that cannot be valid, before any work."""
        if image in BASE_IMAGES or image in self._recipes:
            return  # the common case, answered without reading the names file
        if image.startswith("img-") or self.tags.get(image, tenant):
            if self.built(image, tenant) is None:
                raise NotFoundError(
                    f"image {image!r} does not exist (any more); `stockade image ls` lists them"
                )
        elif is_reference(image):
            parse_reference(image)
        else:
            self._base(image)

    async def resolve(self, image: str, tenant: str = DEFAULT) -> ResolvedImage:
        """The layers and defaults of ``image``: a built image of ``tenant`` (by ID or
        name), a base image or a recipe (built on first use; a made recipe is then answered
        from memory) or a registry reference (pulled on first use, anonymously; see
        :meth:`pull`). Base, recipe and registry images are shared by every tenant."""
        if image in self._recipes:
            return (await self.made(image)).resolved()
        built = self.built(image, tenant)
        if built is not None:
            return built.resolved()
        if image.startswith("img-"):
            self.check(image, tenant)
        if not is_reference(image):
            info = await self.ensure(image)
            return ResolvedImage(info.layers, {}, None)
        return ResolvedImage.of_pulled(await self.pull(image))

    async def pull(
        self,
        ref: str,
        *,
        auth: RegistryAuth | None = None,
        on_progress: Callable[[str], None] | None = None,
    ) -> PulledImage:
        """Pull a registry image unless its layers are already here (a tag is re-checked
        with one manifest request; a digest reference needs none)."""
        return await pull(ref, self.layers, auth=auth, on_progress=on_progress)

    def pulled(self) -> list[PulledImage]:
        """The registry images pulled so far, newest first."""
        return pulled_images(self.layers)

    async def ensure(self, name: str, on_log: Callable[[str], None] | None = None) -> ImageInfo:
        """The image's info once it is built, building it first when needed; ``on_log``
        gets the build's log lines, from its start, if it builds."""
        info = self.info(name)
        if info.ready:
            return info
        job = self.start_build(name)
        async for line in job.follow():
            if on_log is not None:
                on_log(line)
        if job.error:
            raise ServerError(f"building image {name!r} failed: {job.error}")
        return self.info(name)

    async def _build(self, name: str, job: BuildJob) -> None:
        error: str | None = None
        try:
            recipe = self._recipes.get(name)
            if recipe is not None:
                # The builder locks each layer it makes, across processes too.
                self._made[name] = await recipe.build(job.post)
            else:
                await self._build_locked(name, job)
        except Exception as exc:  # reported to every listener, and logged
            log.exception("building image %s failed", name)
            error = str(exc)
        finally:
            await job.finish(error)

    async def _build_locked(self, name: str, job: BuildJob) -> None:
        lock_path = self.root / f"{name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            await job.add_line(f"waiting for the build lock of image {name}")
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            if self.info(name).ready:  # another server built it meanwhile
                await job.add_line(f"image {name} is ready")
                return
            await self._debootstrap(self._base(name), job)
        finally:
            os.close(fd)

    async def _debootstrap(self, base: BaseImage, job: BuildJob) -> None:
        mirror = self._mirror or debian_mirror()
        final = self.root / base.name
        tmp = self.root / f".{base.name}.tmp-{os.getpid()}-{int(time.time())}"
        shutil.rmtree(tmp, ignore_errors=True)
        rootfs = tmp / "rootfs"
        rootfs.mkdir(parents=True)
        self._debs.mkdir(parents=True, exist_ok=True)
        argv = [
            "debootstrap", "--variant=minbase", f"--cache-dir={self._debs}",
            *([f"--include={','.join(base.include)}"] if base.include else []),
            _SUITE, str(rootfs), mirror,
        ]  # fmt: skip
        await job.add_line(f"building image {base.name}: debootstrap {_SUITE} from {mirror}")
        started = time.monotonic()
        p = await proc.spawn(argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert p.stdout is not None
        tail: list[str] = []
        async for raw in p.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                tail = [*tail[-19:], line]
                await job.add_line(line)
        rc = await proc.wait(p)
        if rc != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"debootstrap exited {rc}: " + " | ".join(tail[-5:]))
        await asyncio.to_thread(base.finish, rootfs)
        size = await asyncio.to_thread(_du_mib, rootfs)
        shutil.rmtree(final, ignore_errors=True)
        (tmp / "complete").write_text(str(size))
        os.rename(tmp, final)
        await job.add_line(
            f"image {base.name} built in {time.monotonic() - started:.0f}s ({size} MiB)"
        )


def _du_mib(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total // (1024 * 1024)
