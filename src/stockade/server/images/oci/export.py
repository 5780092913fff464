"""Export layer directories as an OCI image layout tarball, the format other tools import.

The result is what ``skopeo copy oci-archive:out.tar:TAG docker://…`` pushes and what
``umoci unpack`` or ``podman load`` read::

    oci-layout                      {"imageLayoutVersion": "1.0.0"}
    index.json                      one manifest, annotated org.opencontainers.image.ref.name
    blobs/sha256/<hex>              the manifest, the image config, and one gzip tar per layer

Layers go out in the OCI whiteout format, the inverse of what the layer store does on pull:
an overlay whiteout (a 0:0 character device) becomes an empty ``.wh.<name>`` file, and a
directory with ``trusted.overlay.opaque=y`` gets a ``.wh..wh..opq`` entry right after its
own. A sandbox's upper directory is a valid layer too, so this also turns a filesystem
snapshot into an image.

Layer tars are deterministic for a given tree (sorted entries, no host user names, gzip
without a timestamp), so exporting an unchanged layer twice gives the same blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ....errors import InvalidArgumentError, UnsupportedImageError
from .image import ImageConfig
from .layers import OPAQUE_XATTR
from .reference import is_valid_tag

__all__ = ["export_layout"]

_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_REF_NAME = "org.opencontainers.image.ref.name"
# Attributes that would make the tree mean something other than its files: overlayfs renames
# and metadata-only copies. Layers from the store never have them; an upper directory could,
# if the overlay was mounted with redirect_dir or metacopy, and would export wrongly.
_UNEXPORTABLE = ("trusted.overlay.redirect", "trusted.overlay.metacopy")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int


async def export_layout(layers: Sequence[Path], config: ImageConfig, out: Path, *, tag: str) -> str:
    """Write ``layers`` (bottom-first, as ``PulledImage.layers``) as an OCI layout tarball.

    Returns the digest of the image manifest. ``out`` appears complete or not at all.

    Example::

        digest = await export_layout(image.layers, image.config, Path("app.tar"), tag="v1")
        # then: skopeo copy oci-archive:app.tar:v1 docker://registry.example/app:v1
    """
    if not is_valid_tag(tag):
        raise InvalidArgumentError(
            f"tag {tag!r} is not valid: use letters, digits, '_', '.' and '-' (e.g. 'v1')"
        )
    for layer in layers:
        if not layer.is_dir():
            raise InvalidArgumentError(f"layer {layer} is not a directory")
    return await asyncio.to_thread(_export, list(layers), config, out, tag)


def _export(layers: list[Path], config: ImageConfig, out: Path, tag: str) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        blobs = staging / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer_blobs: list[_Blob] = []
        diff_ids: list[str] = []
        for layer in layers:
            diff_id, blob = _write_layer(layer, blobs)
            diff_ids.append(diff_id)
            layer_blobs.append(blob)
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        image_config = {
            "created": now,
            "architecture": "amd64",
            "os": "linux",
            "config": config.to_oci(),
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": now, "created_by": "stockade export"} for _ in layers],
        }
        config_blob = _write_json_blob(blobs, image_config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": _OCI_MANIFEST,
            "config": _descriptor(_OCI_CONFIG, config_blob),
            "layers": [_descriptor(_OCI_LAYER_GZIP, b) for b in layer_blobs],
        }
        manifest_blob = _write_json_blob(blobs, manifest)
        index = {
            "schemaVersion": 2,
            "mediaType": _OCI_INDEX,
            "manifests": [
                {
                    **_descriptor(_OCI_MANIFEST, manifest_blob),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {_REF_NAME: tag},
                }
            ],
        }
        (staging / "index.json").write_bytes(_json(index))
        (staging / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
        partial = staging / "layout.tar"
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in ("oci-layout", "index.json", "blobs", "blobs/sha256"):
                tar.add(staging / name, arcname=name, recursive=False, filter=_anonymous)
            for path in sorted(blobs.iterdir()):
                tar.add(path, arcname=f"blobs/sha256/{path.name}", filter=_anonymous)
        os.replace(partial, out)
        return manifest_blob.digest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_layer(layer: Path, blobs: Path) -> tuple[str, _Blob]:
    """One layer directory as a gzip tar blob in ``blobs``; returns (diff_id, blob)."""
    fd, tmp_name = tempfile.mkstemp(dir=blobs, prefix=".layer-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            # file -> hash (blob digest) -> gzip -> hash (diff_id) -> tar, in one pass.
            compressed = _HashingWriter(raw)
            # mtime=0 and no file name in the header: the same tree gives the same blob.
            with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=6) as gz:
                uncompressed = _HashingWriter(gz)
                buffered = io.BufferedWriter(uncompressed, _CHUNK)
                with tarfile.open(
                    fileobj=buffered, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_CHUNK
                ) as tar:
                    _add_tree(tar, layer, "")
                buffered.close()  # flushes into gzip; closes only the hashing wrapper
        digest = f"sha256:{compressed.hash.hexdigest()}"
        tmp.chmod(0o644)  # mkstemp made it private; blobs are world-readable like the rest
        os.rename(tmp, blobs / digest.removeprefix("sha256:"))
        return f"sha256:{uncompressed.hash.hexdigest()}", _Blob(digest, compressed.size)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _add_tree(tar: tarfile.TarFile, directory: Path, prefix: str) -> None:
    """Add the entries below ``directory`` (not itself), sorted, converting whiteouts."""
    with os.scandir(directory) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        path = Path(entry.path)
        arcname = prefix + entry.name
        st = os.lstat(path)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            tar.addfile(_whiteout_info(prefix + ".wh." + entry.name, st))
            continue
        _check_exportable(path, st)
        info = tar.gettarinfo(str(path), arcname=arcname)
        if info is None:
            continue  # a socket: it means nothing outside a running system
        _anonymous(info)
        info.pax_headers = {**info.pax_headers, **_xattr_headers(path, st)}
        if info.isreg():
            with open(path, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)
        if info.isdir():
            if _is_opaque(path):
                tar.addfile(_whiteout_info(arcname + "/.wh..wh..opq", st))
            _add_tree(tar, path, arcname + "/")


def _whiteout_info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE
    info.mode = 0o644
    info.mtime = int(st.st_mtime)
    return info


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Numeric ids only: the host's user and group names mean nothing inside an image.
    info.uname = info.gname = ""
    return info


def _is_opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _check_exportable(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        return
    for attr in _UNEXPORTABLE:
        with contextlib.suppress(OSError):
            os.getxattr(path, attr, follow_symlinks=False)
            raise UnsupportedImageError(
                f"{path} carries {attr}: it comes from an overlay mounted with redirect_dir or "
                "metacopy, which an OCI layer cannot express"
            )


def _xattr_headers(path: Path, st: os.stat_result) -> dict[str, str]:
    """The xattrs worth carrying (file capabilities, user attributes) as PAX headers."""
    if stat.S_ISLNK(st.st_mode):
        return {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    headers: dict[str, str] = {}
    for attr in names:
        if attr.startswith("user.") or attr == "security.capability":
            with contextlib.suppress(OSError):
                value = os.getxattr(path, attr, follow_symlinks=False)
                headers[f"SCHILY.xattr.{attr}"] = value.decode("utf-8", "surrogateescape")
    return headers


class _HashingWriter(io.RawIOBase):
    """Hashes and counts what passes through to ``dst``."""

    def __init__(self, dst: IO[bytes] | gzip.GzipFile) -> None:
        self._dst = dst
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.hash.update(view)
        self.size += len(view)
        self._dst.write(view)
        return len(view)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _write_json_blob(blobs: Path, value: object) -> _Blob:
    data = _json(value)
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return _Blob(f"sha256:{hexdigest}", len(data))


def _descriptor(media_type: str, blob: _Blob) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": blob.digest, "size": blob.size}
