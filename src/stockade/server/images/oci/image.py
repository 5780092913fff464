"""Pull an image from a registry into the layer store, and remember what was pulled.

A pull resolves the reference to the linux/amd64 image manifest, fetches its config, and
makes sure the store has each layer (downloading at most three at once, and none that the
store already holds). What it learns is kept as JSON beside the layers::

    <store>/images/by-digest/sha256-<hex>.json   an image: config, diff_ids, size; written
                                                 for the image manifest's digest and, for a
                                                 multi-platform image, the index's digest too
    <store>/images/by-ref/<sha256 of ref>.json   what a tag pointed at when last pulled

so that pulling again costs:

- nothing, for a reference by digest whose image and layers are all present;
- one HEAD request for a tag (tags move, so the registry is asked each time);
- nothing again when the registry cannot be reached (or ``offline=True``) and the tag was
  pulled before: the cached image is used, and the progress callback says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ....errors import (
    ImageNotFoundError,
    RegistryError,
    RegistryUnreachableError,
    StockadeError,
    UnsupportedImageError,
)
from .layers import LayerStore
from .reference import Reference, parse_reference
from .registry import Descriptor, ImageManifest, RegistryAuth, RegistryClient, short_digest

__all__ = ["ImageConfig", "PulledImage", "pull"]

log = logging.getLogger(__name__)

_PARALLEL_DOWNLOADS = 3

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImageConfig:
    """What an image says about running it: the ``config`` section of an OCI image config.

    Empty values mean the image does not set them (``cmd=()`` is "no default command").

    Example::

        >>> ImageConfig.from_oci({"config": {"Env": ["A=1"], "Cmd": ["sh"]}}).cmd
        ('sh',)
    """

    env: tuple[str, ...] = ()
    working_dir: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""

    @classmethod
    def from_oci(cls, image_config: Mapping[str, Any]) -> ImageConfig:
        """From a whole OCI (or Docker) image config document."""
        section = image_config.get("config")
        if not isinstance(section, Mapping):
            return cls()
        return cls(
            env=_strings(section.get("Env")),
            working_dir=_string(section.get("WorkingDir")),
            entrypoint=_strings(section.get("Entrypoint")),
            cmd=_strings(section.get("Cmd")),
            user=_string(section.get("User")),
        )

    def to_oci(self) -> dict[str, Any]:
        """The ``config`` section of an OCI image config, with unset values left out."""
        section: dict[str, Any] = {}
        if self.user:
            section["User"] = self.user
        if self.env:
            section["Env"] = list(self.env)
        if self.entrypoint:
            section["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            section["Cmd"] = list(self.cmd)
        if self.working_dir:
            section["WorkingDir"] = self.working_dir
        return section


@dataclass(frozen=True)
class PulledImage:
    """An image whose layers are all in the store, ready to be mounted.

    ``layers`` is bottom-first, as in the manifest. overlayfs wants ``lowerdir`` top-first:
    use ``lowerdirs`` for that.
    """

    reference: Reference
    manifest_digest: str
    config: ImageConfig
    layers: list[Path]
    size: int  # bytes of the layer blobs as stored in the registry (compressed)

    @property
    def lowerdirs(self) -> list[Path]:
        """The layers top-first, for ``lowerdir=``; a layer repeated lower down is dropped,
        which changes nothing: its upper copy already shows or hides all it would."""
        seen: set[Path] = set()
        result: list[Path] = []
        for layer in reversed(self.layers):
            if layer not in seen:
                seen.add(layer)
                result.append(layer)
        return result


async def pull(
    ref_text: str,
    store: LayerStore,
    *,
    auth: RegistryAuth | tuple[str, str] | None = None,
    on_progress: Progress | None = None,
    offline: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> PulledImage:
    """Pull ``ref_text`` (``python:3.12-slim``, ``ghcr.io/o/app@sha256:…``) into ``store``.

    ``auth`` is a registry login, ``on_progress`` receives human-readable lines such as
    ``pulling sha256:0123456789ab… (12.3 MiB)``, ``offline=True`` never contacts the
    registry, and ``transport`` replaces the network (tests).

    Example::

        image = await pull("python:3.12-slim", LayerStore(cache / "oci"), on_progress=print)
        await rootfs.create(image.lowerdirs, disk_mib=2048)
    """
    ref = parse_reference(ref_text)
    say: Progress = on_progress or _ignore
    records = _Records(store)
    if ref.digest:
        cached = records.image(ref.digest, ref)
        if cached is not None:
            say(f"{ref} is already pulled ({short_digest(cached.manifest_digest)})")
            return cached
    if offline:
        cached = records.for_reference(ref)
        if cached is None:
            raise ImageNotFoundError(
                f"image {ref} has not been pulled before, and offline mode forbids asking "
                f"{ref.registry}; pull it once with the registry reachable"
            )
        say(f"offline: using {ref} as pulled before ({short_digest(cached.manifest_digest)})")
        return cached
    login = RegistryAuth(*auth) if isinstance(auth, tuple) else auth
    async with RegistryClient(ref, auth=login, transport=transport) as client:
        if not ref.digest:
            try:
                digest = await client.manifest_digest(ref.manifest_ref)
            except RegistryUnreachableError as exc:
                cached = records.for_reference(ref)
                if cached is None:
                    raise
                say(
                    f"registry {ref.registry} is unreachable, using {ref} as pulled before "
                    f"({short_digest(cached.manifest_digest)}): {exc.message}"
                )
                log.warning("using cached %s: %s", ref, exc.message)
                return cached
            cached = records.image(digest, ref)
            if cached is not None:
                records.remember(ref, digest)
                say(f"{ref} is up to date ({short_digest(cached.manifest_digest)})")
                return cached
        return await _pull_new(client, ref, store, records, say)


async def _pull_new(
    client: RegistryClient, ref: Reference, store: LayerStore, records: _Records, say: Progress
) -> PulledImage:
    manifest = await client.resolve(ref.manifest_ref)
    cached = records.image(manifest.digest, ref)
    if cached is not None:  # a new index (or tag) around an image we have
        records.save(manifest, cached.config, _diff_ids_of(records, manifest.digest), ref)
        say(f"{ref} is up to date ({short_digest(manifest.digest)})")
        return cached
    document = _load_config(await client.get_blob_bytes(manifest.config), ref)
    diff_ids = _diff_ids(document, manifest, ref)
    config = ImageConfig.from_oci(document)
    total = sum(layer.size for layer in manifest.layers)
    say(f"pulling {ref}: {len(manifest.layers)} layers, {_mib(total)}")

    slots = asyncio.Semaphore(_PARALLEL_DOWNLOADS)

    async def one(desc: Descriptor, diff_id: str) -> Path:
        async def fetch(dest: Path) -> None:
            say(f"pulling {short_digest(desc.digest)} ({_mib(desc.size)})")
            await client.fetch_blob(desc.digest, dest, size=desc.size)

        async with slots:
            path, made = await store.ensure(diff_id, desc.media_type, fetch)
        if not made:
            say(f"{short_digest(desc.digest)} already present")
        return path

    tasks = [
        asyncio.create_task(one(desc, diff_id))
        for desc, diff_id in zip(manifest.layers, diff_ids, strict=True)
    ]
    try:
        layers = list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    records.save(manifest, config, diff_ids, ref)
    say(f"pulled {ref} ({short_digest(manifest.digest)}, {_mib(total)})")
    return PulledImage(ref, manifest.digest, config, layers, total)


def _load_config(body: bytes, ref: Reference) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise RegistryError(f"the image config of {ref} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise RegistryError(f"the image config of {ref} is not a JSON object")
    os_name, arch = document.get("os"), document.get("architecture")
    if (os_name and os_name != "linux") or (arch and arch != "amd64"):
        raise UnsupportedImageError(
            f"{ref} is built for {os_name}/{arch}; Stockade sandboxes run linux/amd64 images"
        )
    return document


def _diff_ids(document: Mapping[str, Any], manifest: ImageManifest, ref: Reference) -> list[str]:
    rootfs = document.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise RegistryError(f"the image config of {ref} has no rootfs.diff_ids list")
    if len(diff_ids) != len(manifest.layers):
        raise RegistryError(
            f"the image config of {ref} lists {len(diff_ids)} layers but its manifest "
            f"{len(manifest.layers)}: the image is corrupt"
        )
    return list(diff_ids)


def _diff_ids_of(records: _Records, digest: str) -> list[str]:
    record = records.load(digest)
    return list(record["diff_ids"]) if record else []


def pulled_images(store: LayerStore) -> list[PulledImage]:
    """Every image pulled into ``store`` by a tag or name, newest first (digest-only pulls
    are listed under the references they were first pulled by)."""
    records = _Records(store)
    found: list[tuple[str, PulledImage]] = []
    for path in sorted(records.ref_files()):
        try:
            entry = json.loads(path.read_text())
            ref = parse_reference(str(entry["reference"]))
            image = records.image(str(entry["digest"]), ref)
        except (OSError, ValueError, KeyError, TypeError, StockadeError):
            continue
        if image is not None:
            found.append((str(entry.get("at", "")), image))
    found.sort(key=lambda item: item[0], reverse=True)
    return [image for _, image in found]


def forget_pulled(store: LayerStore, ref_text: str) -> bool:
    """Forget that ``ref_text`` was pulled (its layers stay until garbage collection)."""
    ref = parse_reference(ref_text)
    path = _Records(store).ref_path(ref)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class _Records:
    """The pulled-image JSON files (see the module docstring). Written atomically."""

    def __init__(self, store: LayerStore) -> None:
        self._store = store
        self._digests = store.root / "images" / "by-digest"
        self._refs = store.root / "images" / "by-ref"

    def load(self, digest: str) -> dict[str, Any] | None:
        try:
            value = json.loads((self._digests / f"{digest.replace(':', '-')}.json").read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def image(self, digest: str, ref: Reference) -> PulledImage | None:
        """The image recorded under ``digest``, if all its layers are still in the store."""
        record = self.load(digest)
        if record is None:
            return None
        try:
            layers = [self._store.path(d) for d in record["diff_ids"]]
            image = PulledImage(
                ref,
                str(record["manifest_digest"]),
                ImageConfig.from_oci({"config": record["config"]}),
                layers,
                int(record["size"]),
            )
        except (KeyError, TypeError, ValueError, UnsupportedImageError):
            return None
        if not all(layer.is_dir() for layer in layers):
            return None  # a layer was removed since: pull again
        return image

    def for_reference(self, ref: Reference) -> PulledImage | None:
        try:
            record = json.loads(self._ref_path(ref).read_text())
            digest = str(record["digest"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return self.image(digest, ref)

    def remember(self, ref: Reference, digest: str) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        _write_json(self._ref_path(ref), {"reference": str(ref), "digest": digest, "at": now})

    def save(
        self, manifest: ImageManifest, config: ImageConfig, diff_ids: Sequence[str], ref: Reference
    ) -> None:
        record = {
            "manifest_digest": manifest.digest,
            "config": config.to_oci(),
            "diff_ids": list(diff_ids),
            "size": sum(layer.size for layer in manifest.layers),
        }
        for digest in dict.fromkeys((manifest.digest, manifest.resolved_digest)):
            _write_json(self._digests / f"{digest.replace(':', '-')}.json", record)
        self.remember(ref, manifest.resolved_digest)

    def ref_files(self) -> list[Path]:
        try:
            return [p for p in self._refs.iterdir() if p.suffix == ".json"]
        except OSError:
            return []

    def ref_path(self, ref: Reference) -> Path:
        return self._ref_path(ref)

    def _ref_path(self, ref: Reference) -> Path:
        key = hashlib.sha256(str(ref).encode()).hexdigest()
        return self._refs / f"{key}.json"


def _write_json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def _ignore(_: str) -> None:
    pass
