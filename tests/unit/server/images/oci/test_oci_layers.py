"""The layer store unpacks tars built here: metadata kept, whiteouts converted, escapes refused.

Unpacking creates device nodes (overlay whiteouts), sets ``trusted.*`` attributes and chowns,
all of which need root, as the server has; the tests skip elsewhere.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import pytest
import zstandard

from stockade.errors import DigestMismatchError, UnsafeLayerError, UnsupportedImageError
from stockade.server.images.oci.export import export_layout
from stockade.server.images.oci.image import ImageConfig
from stockade.server.images.oci.layers import OPAQUE_XATTR, LayerStore


@pytest.fixture(autouse=True)
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "unpacking layers makes device nodes and trusted xattrs: run as root (make test)"
        )


TAR = "application/vnd.oci.image.layer.v1.tar"
GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MTIME = 1_600_000_000

Entry = tuple[tarfile.TarInfo, bytes | None]


def _info(name: str, kind: bytes, *, mode: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, MTIME
    return info


def file(name: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    info = _info(name, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid)
    info.size = len(data)
    return info, data


def directory(name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return _info(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid), None


def symlink(name: str, target: str, *, uid: int = 0) -> Entry:
    info = _info(name, tarfile.SYMTYPE, mode=0o777, uid=uid, gid=uid)
    info.linkname = target
    return info, None


def hardlink(name: str, target: str) -> Entry:
    info = _info(name, tarfile.LNKTYPE, mode=0o644)
    info.linkname = target
    return info, None


def device(name: str, major: int, minor: int) -> Entry:
    info = _info(name, tarfile.CHRTYPE, mode=0o666)
    info.devmajor, info.devminor = major, minor
    return info, None


def fifo(name: str) -> Entry:
    return _info(name, tarfile.FIFOTYPE, mode=0o640), None


def build(entries: Sequence[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def compress(data: bytes, media_type: str) -> bytes:
    if media_type == GZIP:
        return gzip.compress(data, mtime=0)
    if media_type == ZSTD:
        return zstandard.ZstdCompressor().compress(data)
    return data


def diff_id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> LayerStore:
    return LayerStore(tmp_path / "store")


async def add(
    store: LayerStore, tmp_path: Path, entries: Sequence[Entry], media_type: str = TAR
) -> Path:
    tar = build(entries)
    blob = tmp_path / f"blob-{hashlib.sha256(tar).hexdigest()[:8]}"
    blob.write_bytes(compress(tar, media_type))
    return await store.add_from_blob(blob, media_type, diff_id(tar))


def leftovers(store: LayerStore) -> list[str]:
    return sorted(p.name for p in store.tmp.iterdir())


@pytest.mark.parametrize("media_type", [TAR, GZIP, ZSTD])
async def test_unpacks_tree_with_owners_modes_and_mtimes(
    store: LayerStore, tmp_path: Path, media_type: str
) -> None:
    layer = await add(
        store,
        tmp_path,
        [
            directory("./"),
            directory("etc/", mode=0o750, uid=10, gid=20),
            file("etc/passwd", b"root:x:0:0\n"),
            file("usr/bin/su", b"#!su", mode=0o4755, uid=0, gid=0),  # parents not listed
            file("home/u/notes", b"mine", mode=0o600, uid=1000, gid=1001),
            symlink("bin", "usr/bin"),
            symlink("abs", "/etc/passwd", uid=7),
            hardlink("etc/passwd-hard", "etc/passwd"),
            fifo("run/fifo"),
            device("dev/null", 1, 3),
        ],
        media_type,
    )
    assert layer.parent == store.root and layer.name.startswith("sha256-")
    assert (layer / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    st = os.stat(layer / "etc")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (
        0o750, 10, 20, MTIME,
    )  # fmt: skip
    su = os.stat(layer / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755  # setuid survives the chown
    assert stat.S_IMODE(os.stat(layer / "usr").st_mode) == 0o755  # made for a missing parent
    notes = os.stat(layer / "home/u/notes")
    assert (notes.st_uid, notes.st_gid, stat.S_IMODE(notes.st_mode)) == (1000, 1001, 0o600)
    assert int(notes.st_mtime) == MTIME
    assert os.readlink(layer / "bin") == "usr/bin"
    assert os.readlink(layer / "abs") == "/etc/passwd"  # kept as written, never followed
    assert os.lstat(layer / "abs").st_uid == 7
    assert int(os.lstat(layer / "abs").st_mtime) == MTIME
    assert os.stat(layer / "etc/passwd-hard").st_ino == os.stat(layer / "etc/passwd").st_ino
    assert stat.S_ISFIFO(os.lstat(layer / "run/fifo").st_mode)
    assert not (layer / "dev/null").exists()  # device nodes are not taken from images
    assert store.has(diff_id(build([directory("./")]))) is False
    assert leftovers(store) == []


async def test_whiteouts_become_overlay_whiteouts(store: LayerStore, tmp_path: Path) -> None:
    layer = await add(
        store,
        tmp_path,
        [
            directory("etc/"),
            file("etc/.wh.hostname"),
            directory("data/"),
            file("data/.wh..wh..opq"),
            file("data/new", b"new"),
            file("deep/er/.wh.gone"),  # parents of a whiteout need not be listed
            file("kept", b"same layer"),
            file(".wh.kept"),  # a whiteout never hides its own layer's files
            file(".wh.back"),
            file("back", b"recreated later in the tar"),
            file(".wh..wh.plnk"),  # AUFS bookkeeping, meaningless here
        ],
    )
    wh = os.lstat(layer / "etc/hostname")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == os.makedev(0, 0)
    assert stat.S_ISCHR(os.lstat(layer / "deep/er/gone").st_mode)
    assert os.getxattr(layer / "data", OPAQUE_XATTR) == b"y"
    assert (layer / "data/new").read_bytes() == b"new"
    assert (layer / "kept").read_bytes() == b"same layer"
    assert (layer / "back").read_bytes() == b"recreated later in the tar"
    names = {p.name for p in layer.rglob("*")}
    assert not any(n.startswith(".wh.") for n in names), names
    with pytest.raises(OSError):
        os.getxattr(layer / "etc", OPAQUE_XATTR)


async def test_already_overlay_whiteout_devices_are_kept(store: LayerStore, tmp_path: Path) -> None:
    layer = await add(store, tmp_path, [device("gone", 0, 0)])
    assert os.lstat(layer / "gone").st_rdev == os.makedev(0, 0)


async def test_later_entries_replace_earlier_ones(store: LayerStore, tmp_path: Path) -> None:
    layer = await add(
        store,
        tmp_path,
        [
            directory("a/"),
            file("a/inside", b"x"),
            file("a", b"a file now"),
            file("b", b"a file first"),
            directory("b/"),
            file("b/inside", b"y"),
            file("c", b"one"),
            file("c", b"two"),
        ],
    )
    assert (layer / "a").read_bytes() == b"a file now"
    assert (layer / "b/inside").read_bytes() == b"y"
    assert (layer / "c").read_bytes() == b"two"


async def test_safe_xattrs_only(store: LayerStore, tmp_path: Path) -> None:
    info, data = file("f", b"x")
    info.pax_headers = {
        "SCHILY.xattr.user.note": "hello",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.trusted.overlay.opaque": "y",
    }
    layer = await add(store, tmp_path, [(info, data)])
    assert os.getxattr(layer / "f", "user.note") == b"hello"
    assert not [a for a in os.listxattr(layer / "f") if a.startswith("trusted.")]


ESCAPES: dict[str, Callable[[str], list[Entry]]] = {
    "dotdot": lambda _: [file("../evil", b"x")],
    "dotdot-inside": lambda _: [directory("a/"), file("a/../../evil", b"x")],
    "absolute": lambda _: [file("/evil", b"x")],
    "through-symlink": lambda out: [symlink("link", out), file("link/evil", b"x")],
    "through-relative-symlink": lambda _: [symlink("up", "../../.."), file("up/evil", b"x")],
    "dir-through-symlink": lambda out: [symlink("link", out), directory("link/sub/")],
    "whiteout-through-symlink": lambda out: [symlink("link", out), file("link/.wh.victim")],
    "opaque-through-symlink": lambda out: [symlink("link", out), file("link/.wh..wh..opq")],
    "hardlink-out": lambda _: [hardlink("leak", "../../../etc/passwd")],
    "hardlink-absolute": lambda _: [hardlink("leak", "/etc/passwd")],
    "hardlink-missing": lambda _: [hardlink("leak", "not/here")],
    "hardlink-through-symlink": lambda out: [symlink("link", out), hardlink("leak", "link/victim")],
    "under-a-file": lambda _: [file("f", b"x"), file("f/evil", b"x")],
    "whiteout-dotdot": lambda _: [file(".wh..."), file("x")],
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
async def test_path_escapes_are_refused(store: LayerStore, tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("untouched")
    entries = ESCAPES[case](str(outside))
    with pytest.raises(UnsafeLayerError):
        await add(store, tmp_path, entries)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "untouched"
    assert os.listxattr(outside) == []
    assert not (tmp_path / "evil").exists() and not (tmp_path / "store" / "evil").exists()
    assert [p.name for p in store.root.glob("sha256-*")] == []
    assert leftovers(store) == []


async def test_diff_id_mismatch_is_refused(store: LayerStore, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(gzip.compress(build([file("a", b"real")])))
    claimed = diff_id(build([file("a", b"claimed")]))
    with pytest.raises(DigestMismatchError, match="unpacks to"):
        await store.add_from_blob(blob, GZIP, claimed)
    assert not store.has(claimed)
    assert leftovers(store) == []


async def test_trailing_bytes_count_in_the_diff_id(store: LayerStore, tmp_path: Path) -> None:
    tar = build([file("a", b"x")]) + b"\0" * 4096  # extra padding after the end marker
    blob = tmp_path / "blob"
    blob.write_bytes(tar)
    layer = await store.add_from_blob(blob, TAR, diff_id(tar))
    assert (layer / "a").read_bytes() == b"x"


@pytest.mark.parametrize(
    "content",
    [b"not a tar at all" * 100, gzip.compress(b"x" * 10000)[:40], b""],
    ids=["garbage", "truncated-gzip", "empty"],
)
async def test_invalid_archives_are_refused(
    store: LayerStore, tmp_path: Path, content: bytes
) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(content)
    with pytest.raises((UnsafeLayerError, DigestMismatchError)):
        await store.add_from_blob(blob, GZIP, diff_id(content))
    assert leftovers(store) == [] and not list(store.root.glob("sha256-*"))


async def test_unsupported_media_type(store: LayerStore, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(build([file("a")]))
    with pytest.raises(UnsupportedImageError, match="media type"):
        await store.add_from_blob(blob, "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                                  diff_id(blob.read_bytes()))  # fmt: skip


async def test_present_layers_are_reused(store: LayerStore, tmp_path: Path) -> None:
    tar = build([file("a", b"x")])
    blob = tmp_path / "blob"
    blob.write_bytes(tar)
    first = await store.add_from_blob(blob, TAR, diff_id(tar))
    blob.unlink()  # not even opened the second time
    assert await store.add_from_blob(blob, TAR, diff_id(tar)) == first


async def test_concurrent_adds_of_one_layer_fetch_once(store: LayerStore, tmp_path: Path) -> None:
    tar = build([file(f"f{i}", b"x" * 1000) for i in range(200)])
    fetches = 0

    async def fetch(dest: Path) -> None:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.1)  # long enough for every other caller to queue on the lock
        await asyncio.to_thread(dest.write_bytes, gzip.compress(tar))

    results = await asyncio.gather(*(store.ensure(diff_id(tar), GZIP, fetch) for _ in range(5)))
    assert fetches == 1
    assert len({path for path, _ in results}) == 1
    assert sorted(made for _, made in results) == [False, False, False, False, True]
    assert len(list(store.root.glob("sha256-*"))) == 1
    assert leftovers(store) == []


async def test_failed_fetch_cleans_up_and_releases_the_lock(
    store: LayerStore, tmp_path: Path
) -> None:
    tar = build([file("a", b"x")])

    async def broken(dest: Path) -> None:
        await asyncio.to_thread(dest.write_bytes, b"partial")
        raise RuntimeError("network down")

    async def working(dest: Path) -> None:
        await asyncio.to_thread(dest.write_bytes, tar)

    with pytest.raises(RuntimeError):
        await store.ensure(diff_id(tar), TAR, broken)
    assert leftovers(store) == []
    path, made = await asyncio.wait_for(store.ensure(diff_id(tar), TAR, working), 5)
    assert made and (path / "a").read_bytes() == b"x"


async def test_leftovers_of_a_dead_unpack_are_removed(store: LayerStore, tmp_path: Path) -> None:
    tar = build([file("a", b"x")])
    key = diff_id(tar).replace(":", "-")
    dead = store.tmp / f"{key}-99999-deadbeef"  # as a killed server leaves it
    (dead / "half").mkdir(parents=True)
    (store.tmp / f"{key}-99999-cafe.blob.part").write_bytes(b"partial")
    blob = tmp_path / "blob"
    blob.write_bytes(tar)
    await store.add_from_blob(blob, TAR, diff_id(tar))
    assert leftovers(store) == []


async def test_export_converts_whiteouts_back(store: LayerStore, tmp_path: Path) -> None:
    """Store format -> OCI layout: devices become .wh. files, the opaque xattr .wh..wh..opq."""
    base = await add(store, tmp_path, [file("keep", b"k"), file("gone", b"g"), file("d/old")])
    top = await add(
        store,
        tmp_path,
        [file(".wh.gone"), directory("d/"), file("d/.wh..wh..opq"), file("d/new", b"n")],
    )
    out = tmp_path / "image.tar"
    config = ImageConfig(env=("A=1",), working_dir="/d", cmd=("sh",), user="1:2")
    manifest_digest = await export_layout([base, top], config, out, tag="v1")
    with tarfile.open(out) as outer:
        index = json.load(_member(outer, "index.json"))
        assert index["manifests"][0]["digest"] == manifest_digest
        assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "v1"}
        manifest = json.load(_member(outer, _blob_path(manifest_digest)))
        image_config = json.load(_member(outer, _blob_path(manifest["config"]["digest"])))
        layer_names = []
        for desc, want_diff_id in zip(
            manifest["layers"], image_config["rootfs"]["diff_ids"], strict=True
        ):
            raw = _member(outer, _blob_path(desc["digest"])).read()
            assert "sha256:" + hashlib.sha256(raw).hexdigest() == desc["digest"]
            assert diff_id(gzip.decompress(raw)) == want_diff_id
            with tarfile.open(fileobj=io.BytesIO(raw)) as layer_tar:
                layer_names.append(layer_tar.getnames())
    assert image_config["config"] == {
        "Env": ["A=1"], "WorkingDir": "/d", "Cmd": ["sh"], "User": "1:2",
    }  # fmt: skip
    assert sorted(layer_names[0]) == ["d", "d/old", "gone", "keep"]
    assert sorted(layer_names[1]) == [".wh.gone", "d", "d/.wh..wh..opq", "d/new"]
    top_names = layer_names[1]
    assert top_names.index("d/.wh..wh..opq") == top_names.index("d") + 1  # right after its dir
    # Unpacking what was exported gives the same store layer back.
    again = LayerStore(tmp_path / "again")
    with tarfile.open(out) as outer:
        desc = manifest["layers"][1]
        blob = tmp_path / "top.tar.gz"
        blob.write_bytes(_member(outer, _blob_path(desc["digest"])).read())
    copy = await again.add_from_blob(blob, desc["mediaType"], image_config["rootfs"]["diff_ids"][1])
    assert os.lstat(copy / "gone").st_rdev == 0 and stat.S_ISCHR(os.lstat(copy / "gone").st_mode)
    assert os.getxattr(copy / "d", OPAQUE_XATTR) == b"y"


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    f = tar.extractfile(name)
    assert f is not None
    return f


def _blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")
