"""Images built from steps (the SDK's ``Image`` methods, or a Dockerfile), inside gVisor.

A build is a base (a base image or a registry image) plus steps. Each step that changes
files is one layer; env, workdir, user, entrypoint and cmd only change the image's config.
A layer's key is ``sha256(parent key, the step)``, and for a copy the digest of the files
copied, so:

- an unchanged image resolves by computing keys and finding the last one: no build work;
- changing a step rebuilds that step and the ones after it, nothing before;
- every layer is stored once (``<cache>/layers/build-<key>``) and shared by every image and
  sandbox that uses it; sandboxes mount layers, they never copy them.

Steps that run commands (``run``, ``apt_install``, ``pip_install``) run in a throwaway
gVisor sandbox over the layers so far, never on the host. Its network is the build policy:
only the package sources. When the command has finished, the sandbox's writes (its overlay
upper directory) become the layer. A failed step fails the build with the exit code and the
last lines of output, and leaves no layer behind. Concurrent builds of the same image share
the work: one builds each layer, the others wait for it (a lock per layer key, both in this
process and across processes sharing the cache).

A ``pip_install`` step of a built-in image (see recipes.py) may name a wheelhouse (see
wheelhouse.py): its sandbox also mounts those wheels, downloaded by the host's pip, at
``/opt/stockade/wheels``, and pip installs from there alone, with no network. The wheels
are not part of the layer. Users' build requests cannot name a wheelhouse.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..._paths import path_in_root
from ...errors import BuildError, InvalidArgumentError, NotFoundError, StockadeError
from ..config import ServerConfig
from ..images.built import BuiltImage, load_built, tree_size, write_json_atomic
from ..images.catalog import BASE_IMAGES, ImageCatalog, ResolvedImage, is_reference
from ..images.mirror import debian_mirror
from ..images.oci import RegistryAuth, unpack_copy
from ..images.wheelhouse import WHEELS_DIR, Wheelhouse, ensure_wheelhouse
from ..network.policy import NetworkPolicy
from ..state.records import EndReason
from .execs import ExecService, ExitInfo, OutputChunk
from .sandboxes import CreateRequest, SandboxService

__all__ = [
    "BuildError",
    "BuildSpec",
    "BuiltImage",
    "ImageBuilder",
    "build_policy",
    "parse_spec",
    "pip_env",
]

# Where packages come from when nothing else is configured.
_PACKAGE_HOSTS = ("pypi.org", "files.pythonhosted.org")

log = logging.getLogger(__name__)

# What the debian_slim base (Debian bookworm) provides.
PYTHON_VERSIONS = ("3.11",)
_FILE_STEPS = frozenset({"run", "apt_install", "pip_install", "copy"})
_CONFIG_STEPS = frozenset({"env", "workdir", "user", "entrypoint", "cmd"})
_TAIL_LINES = 20
_MAX_LINE = 16 * 1024  # bytes of a step's output logged as one line
_DEFAULT_TIMEOUT = 1800.0
_STEP_MEMORY_MIB = 2048
_STEP_DISK_MIB = 8192
_CONTEXT_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class BuildSpec:
    base: str
    steps: tuple[Mapping[str, Any], ...]
    python_version: str | None = None
    auth: RegistryAuth | None = None
    timeout: float = _DEFAULT_TIMEOUT
    registry: bool = False
    # Whose build: a tenant's layers are its own (its key is salted with the tenant), so no
    # tenant ever runs on layers another's build step made, nor finds another's images.
    tenant: str = "default"


def build_policy(config: ServerConfig) -> NetworkPolicy:
    """The network of build steps: only the package sources (the Debian mirror and PyPI,
    or what the operator configured), never the rest of the internet or the LAN."""
    hosts = list(config.build_allow_domains)
    if not hosts:
        hosts = [urlsplit(debian_mirror()).hostname or "deb.debian.org", *_PACKAGE_HOSTS]
    if config.pip_index_url:
        hosts.append(urlsplit(config.pip_index_url).hostname or "")
    return NetworkPolicy.parse(outbound_domain_allowlist=[h for h in hosts if h])


def pip_env(index_url: str) -> dict[str, str]:
    """The environment that points pip in build steps at the configured index (pip refuses
    a plain-HTTP index unless its host is trusted, as for a local mirror)."""
    if not index_url:
        return {}
    env = {"PIP_INDEX_URL": index_url}
    parts = urlsplit(index_url)
    if parts.scheme == "http" and parts.hostname:
        env["PIP_TRUSTED_HOST"] = parts.hostname
    return env


def parse_spec(body: Mapping[str, Any]) -> BuildSpec:
    """Validate a build request (``POST /v1/images/builds``); raises InvalidArgumentError."""
    base = body.get("image")
    if not isinstance(base, str) or not base:
        raise InvalidArgumentError('a build needs a base: {"image": "python", "steps": [...]}')
    steps = body.get("steps") or []
    if not isinstance(steps, list):
        raise InvalidArgumentError("steps must be a list")
    checked = tuple(_check_step(i, s) for i, s in enumerate(steps))
    version = body.get("python_version")
    if version is not None and not isinstance(version, str):
        raise InvalidArgumentError("python_version must be a string such as '3.11'")
    auth = body.get("auth")
    login = None
    if isinstance(auth, Mapping):
        login = RegistryAuth(str(auth.get("username", "")), str(auth.get("password", "")))
    timeout = body.get("timeout", _DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or not 1 <= timeout <= 86400:
        raise InvalidArgumentError("timeout must be between 1 and 86400 seconds")
    registry = body.get("registry", False)
    return BuildSpec(base, checked, version, login, float(timeout), registry is True)


def _check_step(index: int, step: object) -> Mapping[str, Any]:
    where = f"step {index + 1}"
    if not isinstance(step, Mapping) or not isinstance(step.get("op"), str):
        raise InvalidArgumentError(f'{where}: expected an object with an "op"')
    op = step["op"]

    def strings(key: str) -> list[str]:
        value = step.get(key)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            raise InvalidArgumentError(f"{where} ({op}): {key} must be a non-empty string list")
        return list(value)

    def absolute(key: str) -> str:
        # Normalised here, once: the step's key, its log line and the host path made from
        # it all see the same path, and one that climbs out of the image never gets further.
        return path_in_root(step.get(key), f"{where} ({op}): {key}")

    if op == "run":
        return {"op": op, "commands": strings("commands")}
    if op in ("apt_install", "pip_install"):
        if "wheelhouse" in step:
            raise InvalidArgumentError(
                f"{where} ({op}): wheelhouse is for the server's own images, not a field of "
                "a build request"
            )
        packages = strings("packages")
        for p in packages:
            if p.startswith("-") or any(c.isspace() for c in p):
                raise InvalidArgumentError(f"{where} ({op}): {p!r} is not a package name")
        return {"op": op, "packages": packages}
    if op == "env":
        env = step.get("vars")
        if (
            not isinstance(env, Mapping)
            or not env
            or not all(
                isinstance(k, str) and k and "=" not in k and isinstance(v, str)
                for k, v in env.items()
            )
        ):
            raise InvalidArgumentError(f'{where} (env): vars must be {{"NAME": "value"}}')
        return {"op": op, "vars": dict(env)}
    if op == "workdir":
        return {"op": op, "path": absolute("path")}
    if op == "user":
        user = step.get("user")
        if not isinstance(user, str) or not user or any(c.isspace() for c in user):
            raise InvalidArgumentError(f"{where} (user): user must be a name, uid or uid:gid")
        return {"op": op, "user": user}
    if op in ("entrypoint", "cmd"):
        return {"op": op, "argv": strings("argv")}
    if op == "copy":
        context = step.get("context")
        if not isinstance(context, str) or not _CONTEXT_RE.match(context):
            raise InvalidArgumentError(
                f"{where} (copy): context must be the sha256 of an uploaded file tar"
            )
        return {"op": op, "dest": absolute("dest"), "context": context}
    raise InvalidArgumentError(
        f"{where}: unknown op {op!r}; the ops are " + ", ".join(sorted(_FILE_STEPS | _CONFIG_STEPS))
    )


class ImageBuilder:
    def __init__(
        self,
        cache_dir: Path,
        catalog: ImageCatalog,
        sandboxes: SandboxService,
        execs: ExecService,
        *,
        policy: NetworkPolicy,
        step_env: Mapping[str, str] | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.root = cache_dir / "layers"
        self.contexts = cache_dir / "contexts"
        self.builds = self.root / "builds"
        for d in (self.root, self.contexts, self.builds):
            d.mkdir(parents=True, exist_ok=True)
        self.catalog = catalog
        self.sandboxes = sandboxes
        self.execs = execs
        self.policy = policy
        self.step_env = dict(step_env or {})
        self._locks: dict[str, asyncio.Lock] = {}
        # The only wheelhouses a step may name (by directory name): the server's own.
        self._wheelhouses: dict[str, Wheelhouse] = {}

    def add_wheelhouse(self, wheelhouse: Wheelhouse) -> None:
        """Let steps name ``wheelhouse`` (``{"op": "pip_install", "wheelhouse":
        wheelhouse.dirname, ...}``); it is downloaded when such a step first runs."""
        self._wheelhouses[wheelhouse.dirname] = wheelhouse

    # ------------------------------------------------------------------ lookups

    def cached(self, spec: BuildSpec) -> BuiltImage | None:
        """The image ``spec`` builds if it was built before and all its layers are here;
        ``None`` otherwise. Builds and downloads nothing: for a base image or a built
        image as the base only (a registry base gives ``None``)."""
        built = self.catalog.built(spec.base, spec.tenant)
        if built is not None:
            key = built.key
        elif spec.base in BASE_IMAGES:
            stamp = self._base_stamp(spec.base)
            if stamp is None:
                return None
            key = _sha(f"base:{spec.base}:{stamp}")
        else:
            return None
        key = _salted(key, spec.tenant)
        for step in spec.steps:
            key = _chain(key, step)
        return load_built(self.builds, key)

    def _base_stamp(self, name: str) -> str | None:
        # The base's build marker: a rebuilt base image is a new base for every layer on it.
        marker = self.catalog.root / name / "complete"
        with contextlib.suppress(OSError):
            return str(marker.stat().st_mtime_ns)
        return None

    def context_path(self, digest: str) -> Path:
        if not _CONTEXT_RE.match(digest):
            raise InvalidArgumentError("a context is named by its sha256: sha256:<64 hex>")
        return self.contexts / f"{digest.replace(':', '-')}.tar"

    # ------------------------------------------------------------------- build

    async def build(self, spec: BuildSpec, on_log: Callable[[str], None]) -> BuiltImage:
        started = time.monotonic()
        try:
            async with asyncio.timeout(spec.timeout):
                return await self._build(spec, on_log, started)
        except TimeoutError:
            raise BuildError(
                f"the build ran past its timeout of {spec.timeout:g}s and was stopped; "
                "pass a larger timeout"
            ) from None

    async def _build(
        self, spec: BuildSpec, on_log: Callable[[str], None], started: float
    ) -> BuiltImage:
        base, key = await self._base(spec, on_log)
        key = _salted(key, spec.tenant)
        image = BuiltImage(
            key, list(base.lowerdirs), dict(base.env), base.workdir, user=base.user,
            tenant=spec.tenant,
        )  # fmt: skip
        total = len(spec.steps)
        for index, step in enumerate(spec.steps):
            key = _chain(key, step)
            label = f"[{index + 1}/{total}] {_describe(step)}"
            op = step["op"]
            if op in _CONFIG_STEPS:
                _apply_config(image, step)
                on_log(label)
                continue
            layer = self.root / f"build-{key}"
            if layer.is_dir():
                on_log(f"{label} (cached)")
            else:
                on_log(label)
                try:
                    await self._make_layer(key, layer, image, step, on_log)
                except (StockadeError, TimeoutError, asyncio.CancelledError):
                    raise
                except Exception as exc:
                    # A host-side failure (a mount, a copy): say which step, keep the detail.
                    log.exception("building %s failed", label)
                    raise BuildError(f"{label} failed on the host: {exc}") from exc
            image.lowerdirs.insert(0, layer)
        image.key = key
        image.created_at = time.time()
        out = self.builds / f"{key}.json"
        if not out.exists():
            image.size = await asyncio.to_thread(tree_size, image.lowerdirs)
            write_json_atomic(out, image.to_json())
        else:
            image = BuiltImage.from_json(json.loads(out.read_text()))
        on_log(f"image {image.id} ready in {time.monotonic() - started:.1f}s")
        return image

    async def _base(
        self, spec: BuildSpec, on_log: Callable[[str], None]
    ) -> tuple[ResolvedImage, str]:
        if spec.python_version is not None and (
            spec.base != "python" or spec.python_version not in PYTHON_VERSIONS
        ):
            raise InvalidArgumentError(
                f"python_version {spec.python_version!r} is not available: the "
                f"debian_slim base provides {', '.join(PYTHON_VERSIONS)}"
            )
        if self.catalog.is_recipe(spec.base):
            made = await self.catalog.made(spec.base, on_log)
            return made.resolved(), made.key
        built = self.catalog.built(spec.base, spec.tenant)
        if built is not None:
            return built.resolved(), built.key
        if is_reference(spec.base) and not spec.registry:
            raise NotFoundError(
                f"image {spec.base!r} does not exist; `stockade image ls` lists the images "
                "(for a registry image use Image.from_registry)"
            )
        if is_reference(spec.base):
            pulled = await self.catalog.pull(spec.base, auth=spec.auth, on_progress=on_log)
            return ResolvedImage.of_pulled(pulled), _sha(f"oci:{pulled.manifest_digest}")
        if spec.base.startswith("img-"):
            raise NotFoundError(f"image {spec.base} does not exist (any more); build it again")
        info = await self.catalog.ensure(spec.base)
        stamp = self._base_stamp(spec.base) or "0"
        return ResolvedImage(info.layers, {}, None), _sha(f"base:{spec.base}:{stamp}")

    async def _make_layer(
        self,
        key: str,
        layer: Path,
        image: BuiltImage,
        step: Mapping[str, Any],
        on_log: Callable[[str], None],
    ) -> None:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            fd = await asyncio.to_thread(_flock, self.root / ".locks" / f"{key}.lock")
            try:
                if _is_dir(layer):  # made by a concurrent build meanwhile
                    on_log("  (built by a concurrent build)")
                    return
                tmp = self.root / ".tmp" / f"build-{key}.{os.getpid()}-{time.monotonic_ns()}"
                tmp.parent.mkdir(parents=True, exist_ok=True)
                try:
                    if step["op"] == "copy":
                        await asyncio.to_thread(self._unpack_context, step, tmp)
                    else:
                        await self._run_step(image, step, tmp, on_log)
                    os.rename(tmp, layer)
                finally:
                    await asyncio.to_thread(shutil.rmtree, tmp, True)
            finally:
                os.close(fd)

    def _unpack_context(self, step: Mapping[str, Any], dest_root: Path) -> None:
        source = self.context_path(str(step["context"]))
        if not source.is_file():
            raise InvalidArgumentError(
                f"the files of a copy step ({step['context']}) were not uploaded; "
                "PUT them to /v1/images/contexts/<digest> first"
            )
        dest_root.mkdir()
        # The registry layers' unpacker, descriptor by descriptor: tarfile's own filters
        # have had bypasses, and the caller chose every byte of this tar.
        unpack_copy(source, dest_root, str(step["dest"]))

    async def _run_step(
        self,
        image: BuiltImage,
        step: Mapping[str, Any],
        capture: Path,
        on_log: Callable[[str], None],
    ) -> None:
        req = CreateRequest(
            image=f"build:{image.key[:12]}", cpu=1.0, memory=_STEP_MEMORY_MIB,
            disk=_STEP_DISK_MIB, timeout=_DEFAULT_TIMEOUT, env={**image.env, **self.step_env},
            workdir=image.workdir, tags={}, entrypoint=None, policy=self.policy,
        )  # fmt: skip
        lowerdirs = list(image.lowerdirs)
        if step.get("wheelhouse") is not None:
            # Below the image's layers: the wheels are seen by this step's sandbox only,
            # and never end up in the layer, which is the sandbox's writes alone.
            lowerdirs.append(await self._wheelhouse(str(step["wheelhouse"]), on_log))
        record = await self.sandboxes.create_over(
            req, lowerdirs, tags={"stockade.build": image.key[:16]}, user=image.user
        )
        captured = False
        try:
            for command in _commands(step):
                code, tail = await self._exec(record.id, command, image.workdir, on_log)
                if code != 0:
                    raise BuildError(_failure(step, command, code, tail))
            await self.sandboxes.terminate(record.id, reason=EndReason.TERMINATED, capture=capture)
            captured = True
        finally:
            if not captured:
                with contextlib.suppress(Exception):
                    await self.sandboxes.terminate(record.id)

    async def _wheelhouse(self, name: str, on_log: Callable[[str], None]) -> Path:
        wheelhouse = self._wheelhouses.get(name)
        if wheelhouse is None:
            raise BuildError(f"the wheelhouse {name!r} is not one of this server's")
        return await ensure_wheelhouse(self.cache_dir, wheelhouse, on_log=on_log)

    async def _exec(
        self, sandbox_id: str, command: str, workdir: str | None, on_log: Callable[[str], None]
    ) -> tuple[int, list[str]]:
        session = await self.execs.start(sandbox_id, ["/bin/sh", "-c", command], workdir=workdir)
        tail: list[str] = []
        pending = b""
        code = -1
        try:
            async for event in session.events():
                if isinstance(event, OutputChunk):
                    pending += event.data
                    *whole, pending = pending.split(b"\n")
                    while len(pending) > _MAX_LINE:
                        # A step that prints without newlines must not grow this forever:
                        # past the limit its output is logged in pieces of that size.
                        whole.append(pending[:_MAX_LINE])
                        pending = pending[_MAX_LINE:]
                    lines = [
                        line[i : i + _MAX_LINE]
                        for line in whole
                        for i in range(0, max(1, len(line)), _MAX_LINE)
                    ]
                    for raw in lines:
                        line = raw.decode(errors="replace").rstrip("\r")
                        tail = [*tail[-(_TAIL_LINES - 1) :], line]
                        on_log(f"  {line}")
                elif isinstance(event, ExitInfo):
                    code = event.exit_code
        finally:
            await session.aclose()
        if pending:
            line = pending.decode(errors="replace")
            tail = [*tail[-(_TAIL_LINES - 1) :], line]
            on_log(f"  {line}")
        return code, tail


def _commands(step: Mapping[str, Any]) -> list[str]:
    op = step["op"]
    if op == "run":
        return list(step["commands"])
    packages = " ".join(shlex.quote(p) for p in step["packages"])
    if op == "apt_install":
        return [
            "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
            f"--no-install-recommends {packages} && rm -rf /var/lib/apt/lists/*"
        ]
    if step.get("wheelhouse") is not None:
        return [
            "python3 -m pip install --no-cache-dir --progress-bar off --no-index "
            f"--find-links {WHEELS_DIR} {packages}"
        ]
    return [f"python3 -m pip install --no-cache-dir --progress-bar off {packages}"]


def _failure(step: Mapping[str, Any], command: str, code: int, tail: Sequence[str]) -> str:
    op = step["op"]
    missing: list[str] = []
    if op == "apt_install":
        missing = [
            m.group(1) for line in tail if (m := re.search(r"Unable to locate package (\S+)", line))
        ]
    elif op == "pip_install":
        missing = [
            m.group(1)
            for line in tail
            if (m := re.search(r"No matching distribution found for (\S+)", line))
        ]
    what = (
        f"{op} step failed: package {', '.join(missing)} does not exist"
        if missing
        else (f"{op} step `{command}` failed")
    )
    last = "\n".join(tail[-10:])
    return f"{what} (exit code {code}); its last lines:\n{last}"


def _apply_config(image: BuiltImage, step: Mapping[str, Any]) -> None:
    op = step["op"]
    if op == "env":
        image.env.update(step["vars"])
    elif op == "workdir":
        image.workdir = str(step["path"])
    elif op == "user":
        image.user = str(step["user"])
    elif op == "entrypoint":
        image.entrypoint = list(step["argv"])
    elif op == "cmd":
        image.cmd = list(step["argv"])


def _describe(step: Mapping[str, Any]) -> str:
    op = step["op"]
    detail = {
        "run": lambda: " && ".join(step["commands"]),
        "apt_install": lambda: " ".join(step["packages"]),
        "pip_install": lambda: " ".join(step["packages"]) + _from_wheelhouse(step),
        "env": lambda: " ".join(f"{k}={v}" for k, v in step["vars"].items()),
        "workdir": lambda: str(step["path"]),
        "user": lambda: str(step["user"]),
        "entrypoint": lambda: shlex.join(step["argv"]),
        "cmd": lambda: shlex.join(step["argv"]),
        "copy": lambda: f"{step['context'][:19]}… -> {step['dest']}",
    }[op]()
    return f"{op} {detail}"


def _from_wheelhouse(step: Mapping[str, Any]) -> str:
    name = step.get("wheelhouse")
    return f" (from wheelhouse {name})" if name else ""


def _salted(key: str, tenant: str) -> str:
    """The key a tenant's build starts from: the default tenant's as it always was, any
    other's its own."""
    if tenant == "default":
        return key
    return _sha(f"tenant:{tenant}\n{key}")


def _chain(parent: str, step: Mapping[str, Any]) -> str:
    return _sha(parent + "\n" + json.dumps(step, sort_keys=True, separators=(",", ":")))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _is_dir(path: Path) -> bool:
    return path.is_dir()


def _flock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd
