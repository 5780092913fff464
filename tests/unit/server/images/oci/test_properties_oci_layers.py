"""Property tests of the layer unpacker on hostile tars: whatever a layer holds, unpacking it
fails with UnsafeLayerError or succeeds, and in both cases nothing outside the destination
changed and nothing was written through a symlink.

Each example unpacks into ``parent/dest``, where ``parent`` also holds a sentinel file, a
directory and symlinks; the tars aim at them with ``..``, absolute names, symlinks to them
followed by entries below, hard links, whiteouts and device nodes. The unpacker runs as root
(as the server does), so a write that escaped would succeed: the snapshot of ``parent`` taken
before and after is the proof.

Symlink targets only ever point into this test's own temporary tree, never at "/" or /etc:
were the unpacker broken, a failing example must not damage the machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import sys
import tarfile
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.errors import UnsafeLayerError
from stockade.server.images.oci.layers import OPAQUE_XATTR, unpack_layer

# Deterministic for CI, no timing checks on a small, busy machine. Examples make and remove
# directory trees, which the too_slow health check would flag.
PROPS = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True, scope="module")
def _root() -> None:
    if os.geteuid() != 0:
        pytest.fail("unpacking layers makes device nodes and chowns files: run as root (make test)")


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="stockade-layer-props-") as tmp:
        yield Path(tmp).resolve()


# -- the place a layer is unpacked to ----------------------------------------------------------


@dataclass(frozen=True)
class Place:
    parent: Path
    dest: Path
    blob: Path


def make_place(base: Path) -> Place:
    parent = Path(tempfile.mkdtemp(dir=base))
    (parent / "sentinel").write_bytes(b"sentinel: must never change")
    (parent / "sentinel").chmod(0o640)
    (parent / "outside").mkdir()
    (parent / "outside" / "file").write_bytes(b"outside: must never change")
    (parent / "link-to-outside").symlink_to("outside")
    (parent / "dest").mkdir()
    (parent / "dest").chmod(0o755)
    return Place(parent, parent / "dest", Path(tempfile.mkdtemp(dir=base)) / "layer.tar")


def walk(root: Path, skip: Path | None = None) -> Iterator[Path]:
    """``root`` and everything below it, symlinks not followed, ``skip`` not entered. Not
    recursive: Path.rglob and os.walk are, and a layer may be deeper than Python's stack."""
    stack = [root]
    while stack:
        path = stack.pop()
        yield path
        if path != skip and stat.S_ISDIR(path.lstat().st_mode):
            stack.extend(Path(entry.path) for entry in os.scandir(path))


def remove(root: Path) -> None:
    """``rm -rf root`` without recursion (shutil.rmtree recurses once per level)."""
    for path in sorted(walk(root), key=lambda p: len(p.parts), reverse=True):
        if stat.S_ISDIR(path.lstat().st_mode):
            path.rmdir()
        else:
            path.unlink()


def snapshot(parent: Path, dest: Path) -> dict[str, tuple[object, ...]]:
    """Everything about ``parent``'s tree but ``dest``'s contents, without following links."""
    found: dict[str, tuple[object, ...]] = {}
    for path in walk(parent, skip=dest):
        if path == dest:
            continue
        st_ = path.lstat()
        what: object = None
        if stat.S_ISREG(st_.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st_.st_mode):
            what = os.readlink(path)
        xattrs = tuple(sorted(os.listxattr(path, follow_symlinks=False)))
        found[str(path.relative_to(parent))] = (
            st_.st_mode,
            st_.st_uid,
            st_.st_gid,
            st_.st_nlink,
            st_.st_mtime_ns,
            st_.st_size,
            what,
            xattrs,
        )
    return found


# -- hostile tars ------------------------------------------------------------------------------

# Names: components that climb, hide, repeat and overflow, joined in any order.
COMPONENTS = [
    "a",
    "b",
    "c",
    "link",
    "..",
    ".",
    "",
    ".wh.a",
    ".wh..wh..opq",
    ".wh..",
    ".wh.",
    ".wh...",
    ".wh..wh.plnk",
    "sentinel",
    "outside",
    "x" * 256,
    "y" * 255,
    "\udcff",
]
# Most names come from a few, so that a symlink, the entries below it and the hard links
# to it meet in one tar often enough.
COMMON = [
    "a",
    "b",
    "link",
    "a/b",
    "a/link",
    "link/x",
    "link/sentinel",
    "link/file",
    "link/outside/file",
    "a/link/x",
    "b/c",
    "c",
]
names = st.one_of(
    st.sampled_from(COMMON),
    st.sampled_from(COMMON),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=4).map("/".join),
    st.tuples(
        st.sampled_from(["/", "./", "../", "a/../../", "link/", "link/../"]),
        st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3).map("/".join),
    ).map("".join),
)


def link_targets(parent: Path) -> st.SearchStrategy[str]:
    """Where a symlink may point: inside the layer, at the parent's sentinel, climbing out,
    and at the absolute paths of this example's own tree."""
    return st.one_of(
        names,
        st.sampled_from(
            [
                "..",
                "../..",
                "../sentinel",
                "../outside",
                "../link-to-outside",
                ".",
                "a/../..",
                str(parent),
                str(parent / "sentinel"),
                str(parent / "outside"),
                str(parent / "dest"),
                str(parent / "dest" / "a"),
            ]
        ),
    )


KINDS = [
    "file",
    "file",
    "dir",
    "dir",
    "symlink",
    "symlink",
    "hardlink",
    "chr",
    "whiteout-dev",
    "blk",
    "fifo",
]


@dataclass(frozen=True)
class Member:
    kind: str
    name: str
    link: str = ""
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    xattrs: tuple[tuple[str, str], ...] = ()


def any_members(parent: Path) -> st.SearchStrategy[Member]:
    return st.builds(
        Member,
        kind=st.sampled_from(KINDS),
        name=names,
        link=link_targets(parent),
        mode=st.integers(0, 0o7777),
        uid=st.sampled_from([0, 0, 1000, 65534, 2**32 - 2, 2**32 - 1, 2**40, -1, -5]),
        xattrs=st.lists(
            st.sampled_from(
                [
                    ("user.note", "v"),
                    ("trusted.overlay.redirect", "/sentinel"),
                    ("trusted.overlay.opaque", "y"),
                    ("security.capability", "\x01"),
                    ("security.selinux", "x"),
                ]
            ),
            max_size=2,
        ).map(tuple),
    )


LINKS = ["link", "a", "a/link", "b"]
BELOW = ["x", "sentinel", "file", "outside/file", "outside", "link-to-outside/file", "a"]


def attacks(parent: Path) -> st.SearchStrategy[list[Member]]:
    """Tars whose members refer to each other: a symlink, then entries below it and hard
    links to it. Members drawn independently rarely meet in one tar, and the first member
    with a bad owner or name ends the unpack before they do; here every owner and name is
    valid, and the symlinks point at existing directories and files, inside and out."""
    targets = st.sampled_from(
        [
            "..",
            "../outside",
            "../link-to-outside",
            "../sentinel",
            ".",
            "a",
            "b",
            "link",
            "a/..",
            str(parent),
            str(parent / "outside"),
            str(parent / "sentinel"),
            str(parent / "dest"),
            str(parent / "link-to-outside"),
        ]
    )
    symlink = st.builds(Member, kind=st.just("symlink"), name=st.sampled_from(LINKS), link=targets)
    below = st.builds(
        Member,
        kind=st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "whiteout-dev"]),
        name=st.tuples(st.sampled_from(LINKS), st.sampled_from(BELOW)).map("/".join),
        link=targets,
    )
    plain = st.builds(
        Member,
        kind=st.sampled_from(["file", "dir", "hardlink"]),
        name=st.sampled_from(LINKS),
        link=st.sampled_from(LINKS),
    )
    # A symlink and a hard link to it, drawn as one: linking must take the symlink itself,
    # never the file it points at (the sentinel's inode would join the layer).
    pair = st.tuples(symlink, st.sampled_from(LINKS)).map(
        lambda t: [t[0], Member("hardlink", t[1], link=t[0].name)]
    )
    units = st.one_of(
        symlink.map(lambda m: [m]), below.map(lambda m: [m]), plain.map(lambda m: [m]), pair
    )
    return st.lists(units, min_size=1, max_size=6).map(lambda us: [m for u in us for m in u])


def tars(parent: Path) -> st.SearchStrategy[list[Member]]:
    return st.one_of(st.lists(any_members(parent), min_size=1, max_size=10), attacks(parent))


def tar_of(items: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, m in enumerate(items):
            info = tarfile.TarInfo(m.name)
            info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.uid, 1_600_000_000
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in m.xattrs}
            data = None
            if m.kind == "file":
                # Each file's bytes name its member: what ends up where tells who wrote it.
                data = io.BytesIO(f"member {i}".encode())
                info.size = len(data.getvalue())
            elif m.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif m.kind in ("symlink", "hardlink"):
                info.type = tarfile.SYMTYPE if m.kind == "symlink" else tarfile.LNKTYPE
                info.linkname = m.link
            elif m.kind in ("chr", "whiteout-dev", "blk"):
                info.type = tarfile.BLKTYPE if m.kind == "blk" else tarfile.CHRTYPE
                info.devmajor, info.devminor = (0, 0) if m.kind == "whiteout-dev" else (1, 3)
            else:
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, data)
    return out.getvalue()


def normalized(name: str) -> str | None:
    """A member name as the unpacker reads it, relative to the layer root (None: refused)."""
    if name.startswith("/"):
        return None
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def check_inside(dest: Path, items: list[Member]) -> None:
    """Everything in ``dest`` is where some member put it, nothing came through a symlink."""
    declared: set[str] = set()  # the non-directories members may have made
    parents: set[str] = set()  # directories: declared ones and the parents of any member
    writer: dict[str, str] = {}  # "member i" -> the name it was written to
    hardlinked: set[str] = set()
    for i, m in enumerate(items):
        name = normalized(m.name)
        if name is None or name == "":
            continue
        head, _, leaf = name.rpartition("/")
        for k in range(name.count("/") + 1):
            parents.add("/".join(name.split("/")[:k]))
        if leaf.startswith(".wh."):  # a whiteout, whatever the member's type
            declared.add(f"{head}/{leaf[4:]}".lstrip("/"))
        elif m.kind == "dir":
            parents.add(name)
        else:
            declared.add(name)
        if m.kind == "file":
            writer[f"member {i}"] = name
        if m.kind == "hardlink":
            hardlinked.add(name)
    for path in walk(dest):
        if path == dest:
            continue
        rel = str(path.relative_to(dest))
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            assert rel in parents, f"directory {rel!r} that no member names"
            xattrs = os.listxattr(path, follow_symlinks=False)
            assert all(not a.startswith("trusted.") or a == OPAQUE_XATTR for a in xattrs), (
                rel,
                xattrs,
            )
            continue
        assert rel in declared, f"{rel!r} that no member names: written through a symlink?"
        if stat.S_ISREG(mode):
            content = path.read_bytes()
            assert content.startswith(b"member "), (rel, content)
            # A file holds its own member's bytes, or is a hard link to another's.
            assert writer[content.decode()] == rel or rel in hardlinked, (rel, content)
            assert not any(a.startswith("trusted.") for a in os.listxattr(path)), rel
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            # Only overlay whiteouts: a device from a layer would open the host's hardware.
            assert stat.S_ISCHR(mode) and path.lstat().st_rdev == os.makedev(0, 0), rel


def unpack_in_worker(blob: Path, dest: Path) -> str:
    """unpack_layer as the server runs it: in a worker thread (asyncio.to_thread), under
    Python's default recursion limit. Hypothesis raises that limit by 2000 frames while a
    test runs, which would hide a recursion as deep as a hostile layer can make."""
    outcome: list[str | BaseException] = []

    def work() -> None:
        try:
            outcome.append(unpack_layer(blob, dest))
        except BaseException as exc:
            outcome.append(exc)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # Python's default, the server's
    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    finally:
        sys.setrecursionlimit(limit)  # hypothesis warns if the test leaves it changed
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def unpack_and_check(place: Place, blob: bytes, items: list[Member] | None) -> None:
    place.blob.write_bytes(blob)
    before = snapshot(place.parent, place.dest)
    try:
        unpack_in_worker(place.blob, place.dest)
    except UnsafeLayerError:
        pass
    finally:
        assert snapshot(place.parent, place.dest) == before
        assert place.dest.is_dir() and not place.dest.is_symlink()
    # The layer root's own entry ("./") may change dest's mode: only its contents are
    # checked, and those only from what the members say (also after a refusal: what was
    # unpacked before it must not have escaped either).
    if items is not None:
        check_inside(place.dest, items)


@PROPS
@given(st.data())
def test_hostile_tars_stay_inside_the_destination(base: Path, data: st.DataObject) -> None:
    place = make_place(base)
    try:
        items = data.draw(tars(place.parent), label="tar")
        unpack_and_check(place, tar_of(items), items)
    finally:
        remove(place.parent)
        remove(place.blob.parent)


@settings(PROPS, max_examples=30)
@given(st.one_of(st.integers(1, 300), st.integers(900, 1500)), st.data())
def test_deep_trees_are_unpacked_or_refused(base: Path, depth: int, data: st.DataObject) -> None:
    """A tree as deep as a name can make it, then replaced by a file: removing it must not
    overflow the stack (shutil.rmtree recurses once per level)."""
    place = make_place(base)
    try:
        items = [
            Member("file", "/".join(["a"] * depth) + "/f"),
            Member(data.draw(st.sampled_from(["file", "symlink", "dir"])), "a", link="b"),
        ]
        unpack_and_check(place, tar_of(items), items)
    finally:
        remove(place.parent)
        remove(place.blob.parent)


def gzip_turning_bad(raw: bytes, at: int) -> bytes:
    """``raw`` gzipped, its deflate stream valid up to the uncompressed offset ``at`` and then
    an invalid block type: what a corrupt download looks like to zlib, at any point."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(raw[:at]) + deflate.flush(zlib.Z_FULL_FLUSH)
    # A block header: BFINAL 0, BTYPE 3 (reserved): zlib's "invalid block type".
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + b"\x06\x00\x00\x00"


# A layer larger than the unpacker's 1 MiB read-ahead, so that a corruption can surface in a
# member's data and after the end of the archive, not only inside tarfile's header reads.
_BIG = io.BytesIO()
with tarfile.open(fileobj=_BIG, mode="w") as _tar:
    _info = tarfile.TarInfo("big")
    _info.size = 3 << 20
    _tar.addfile(_info, io.BytesIO(bytes(_info.size)))
    _small = tarfile.TarInfo("small")
    _tar.addfile(_small, io.BytesIO(b""))
BIG_TAR = _BIG.getvalue() + bytes(2 << 20)  # zero padding after the archive is hashed too


@settings(PROPS, max_examples=40)
@given(
    st.one_of(
        # Offsets spread over the whole stream: integers() would favour the first bytes.
        st.sampled_from(range(0, len(BIG_TAR) + 1, 1 << 16)).map(
            lambda at: gzip_turning_bad(BIG_TAR, at)
        ),
        st.binary(max_size=3000),
        st.binary(max_size=2000).map(lambda b: b"\x1f\x8b\x08\x00" + b),
        st.binary(max_size=2000).map(lambda b: b"\x28\xb5\x2f\xfd" + b),
        st.tuples(st.integers(0, 4000), st.binary(min_size=1, max_size=8)).map(
            lambda t: (g := gzip.compress(BIG_TAR[:4096], mtime=0))[: t[0]] + t[1] + g[t[0] :]
        ),
        st.integers(0, 3000).map(
            lambda n: zstandard.ZstdCompressor(write_checksum=True).compress(BIG_TAR[:4096])[:n]
        ),
    )
)
def test_any_blob_unpacks_or_is_refused(base: Path, blob: bytes) -> None:
    """Garbage, truncated and corrupt gzip and zstd streams: UnsafeLayerError, never zlib's or
    another library's own exception."""
    place = make_place(base)
    try:
        unpack_and_check(place, blob, None)  # the files hold zeros, not "member i"
    finally:
        remove(place.parent)
        remove(place.blob.parent)
