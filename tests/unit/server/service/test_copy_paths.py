"""Copy steps never write outside their layer: the path check shared by the SDK and the
server, and the descriptor-based unpacker that lays a caller's tar into a layer."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from stockade import Image, InvalidArgumentError
from stockade._paths import path_in_root
from stockade.errors import UnsafeLayerError
from stockade.server.images.oci import unpack_copy
from stockade.server.service.builder import parse_spec

DIGEST = "sha256:" + "0" * 64


@pytest.mark.parametrize(
    ("given", "normal"),
    [("/", "/"), ("/app", "/app"), ("//app//src/", "/app/src"), ("/a/./b/../c", "/a/c"),
     ("/a/..", "/")],
)  # fmt: skip
def test_paths_inside_the_root_are_normalised(given: str, normal: str) -> None:
    assert path_in_root(given, "dest") == normal


@pytest.mark.parametrize(
    "bad", ["/..", "/../etc", "/../../../../etc/cron.d", "/a/../../b", "app", "", "/a\x00b", "/\n"]
)
def test_paths_that_leave_the_root_are_refused_naming_the_path(bad: str) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        path_in_root(bad, "dest")
    assert "dest" in err.value.message and repr(bad)[:20] in err.value.message


def test_the_sdk_refuses_an_escaping_copy_before_uploading(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InvalidArgumentError, match="leaves the root"):
        Image.debian_slim().add_local_dir(tmp_path, "/../../../../etc/cron.d")
    with pytest.raises(InvalidArgumentError, match="leaves the root"):
        Image.debian_slim().add_local_file(tmp_path / "f", "/../f")


def test_the_server_refuses_an_escaping_copy_dest() -> None:
    for dest in ("/../../..", "/../../../../etc/cron.d", "etc"):
        with pytest.raises(InvalidArgumentError, match="dest"):
            parse_spec({"image": "debian", "steps": [{"op": "copy", "dest": dest,
                                                       "context": DIGEST}]})  # fmt: skip
    spec = parse_spec({"image": "debian", "steps": [{"op": "copy", "dest": "/app/./x/..",
                                                      "context": DIGEST}]})  # fmt: skip
    assert spec.steps[0]["dest"] == "/app"


def _tar(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(buffer.getvalue())
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def _tree(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every entry under root: mode, owner, link count and contents (a symlink's target)."""
    seen: dict[str, tuple[int, int, int, bytes]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            body = b""
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p).encode()
            elif stat.S_ISREG(st.st_mode):
                body = Path(p).read_bytes()
            seen[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_nlink, body)
    return seen


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """A layer directory beside host files that an escape would reach."""
    (tmp_path / "host" / "etc").mkdir(parents=True)
    (tmp_path / "host" / "etc" / "passwd").write_text("root:x:0:0\n")
    layer = tmp_path / "layer"
    layer.mkdir()
    return tmp_path, layer


def test_a_copy_lands_in_its_layer_owned_by_root(world: tuple[Path, Path]) -> None:
    top, layer = world
    tar = _tar(
        top / "ok.tar",
        (_info(".", tarfile.DIRTYPE, mode=0o777, uid=1000), None),
        (_info("bin", tarfile.DIRTYPE, mode=0o750, uid=1000), None),
        (_info("bin/tool", size=2, mode=0o4755, uid=1000, gid=1000), b"hi"),
        (_info(".wh.keep", size=1, mode=0o644), b"k"),
        (_info("dev0", tarfile.CHRTYPE, mode=0o666), None),
        (_info("link", tarfile.SYMTYPE, linkname="/etc/passwd"), None),
        (_info("bin/again", tarfile.LNKTYPE, linkname="bin/tool"), None),
    )
    unpack_copy(tar, layer, "/opt/app")
    app = layer / "opt" / "app"
    assert stat.S_IMODE(layer.stat().st_mode) == 0o755
    assert stat.S_IMODE(app.stat().st_mode) == 0o755  # the tar's "." does not change dest
    tool = (app / "bin" / "tool").stat()
    assert (tool.st_uid, tool.st_gid, stat.S_IMODE(tool.st_mode)) == (0, 0, 0o4755)
    assert (app / "bin" / "again").stat().st_ino == tool.st_ino
    assert (app / ".wh.keep").read_text() == "k"  # a file named so, not a whiteout
    assert not (app / "dev0").exists()
    assert os.readlink(app / "link") == "/etc/passwd"  # resolved inside the sandbox only


@pytest.mark.parametrize(
    "members",
    [
        [(_info("../../host/etc/passwd", size=4), b"evil")],
        [(_info("/host/etc/passwd", size=4), b"evil")],
        [(_info("out", tarfile.SYMTYPE, linkname="../../host/etc"), None),
         (_info("out/passwd", size=4), b"evil")],
        [(_info("out", tarfile.SYMTYPE, linkname="/"), None),
         (_info("out/etc/passwd", size=4), b"evil")],
        [(_info("hl", tarfile.LNKTYPE, linkname="../../host/etc/passwd"), None)],
        [(_info("hl", tarfile.LNKTYPE, linkname="/etc/passwd"), None)],
        [(_info("hl", tarfile.LNKTYPE, linkname="not-yet-there"), None)],
    ],
    ids=["dotdot", "absolute", "relative-symlink", "absolute-symlink", "hardlink-out",
         "hardlink-absolute", "hardlink-missing"],
)  # fmt: skip
def test_escapes_are_refused_and_change_nothing_outside(
    world: tuple[Path, Path], members: list[tuple[tarfile.TarInfo, bytes | None]]
) -> None:
    top, layer = world
    tar = _tar(top / "evil.tar", *members)
    before = _tree(top / "host")
    with pytest.raises(UnsafeLayerError):
        unpack_copy(tar, layer, "/")
    assert _tree(top / "host") == before


def test_a_dest_that_resolves_to_the_root_stays_in_the_layer(world: tuple[Path, Path]) -> None:
    top, layer = world
    dest = parse_spec(
        {"image": "debian", "steps": [{"op": "copy", "dest": "/x/../.", "context": DIGEST}]}
    ).steps[0]["dest"]
    assert dest == "/"
    tar = _tar(top / "root.tar", (_info(".", tarfile.DIRTYPE, mode=0o777, uid=7), None),
               (_info("etc/motd", size=2), b"hi"))  # fmt: skip
    before = _tree(top / "host")
    unpack_copy(tar, layer, dest)
    assert (layer / "etc" / "motd").read_text() == "hi"
    assert stat.S_IMODE(layer.stat().st_mode) == 0o755 and layer.stat().st_uid == 0
    assert _tree(top / "host") == before
    assert sorted(p.name for p in top.iterdir()) == ["host", "layer", "root.tar"]


def test_a_non_tar_is_refused(world: tuple[Path, Path]) -> None:
    top, layer = world
    (top / "junk.tar").write_bytes(b"\x00not a tar" * 100)
    with pytest.raises(UnsafeLayerError):
        unpack_copy(top / "junk.tar", layer, "/app")
