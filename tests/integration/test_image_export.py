"""``stockade image export``: an image leaves the server as an OCI layout tarball that the
standard tools read back to the same tree.

The test image is built with umoci and pushed to a registry on loopback: two layers, the
second deleting a file (a whiteout) and adding one, and a config with Env and WorkingDir.
The server pulls it, and the registry is stopped before any export, so an export provably
needs no registry. Exports go through the CLI and plain HTTP, and are checked with skopeo
(layers, Env, WorkingDir) and by unpacking them with umoci and comparing the tree, file by
file, with the original's.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockade import Client

from .conftest import LiveServer
from .helpers import unique, wait_for
from .registry import run_tool, start_registry

pytestmark = [pytest.mark.runsc, pytest.mark.timeout(60, func_only=True)]

CLI = Path(sys.executable).parent / "stockade"
# Random, so gzip cannot shrink it: the tarball outgrows the socket buffers, and a client that
# stops reading leaves the server with most of it still to send.
BIG = 24 * 1024 * 1024
BASE_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Pushed:
    ref: str  # by tag: 127.0.0.1:PORT/it/export:v1
    pinned: str  # by digest, as `stockade image pull` prints it
    layout: Path  # the umoci layout it was built in, image tag v1


def _build(work: Path) -> Path:
    layout = work / "layout"
    run_tool("umoci", "init", "--layout", layout)
    run_tool("umoci", "new", "--image", f"{layout}:v1")
    first = work / "b1"
    run_tool("umoci", "unpack", "--image", f"{layout}:v1", first)
    root = first / "rootfs"
    for d in ("bin", "etc", "data"):
        (root / d).mkdir()
    (root / "etc/keep").write_text("keep\n")
    (root / "etc/gone").write_text("deleted by layer 2\n")
    os.symlink("keep", root / "etc/link")
    (root / "bin/tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(root / "bin/tool", 0o755)
    (root / "data/big").write_bytes(os.urandom(BIG))
    run_tool("umoci", "repack", "--image", f"{layout}:v1", first)
    second = work / "b2"
    run_tool("umoci", "unpack", "--image", f"{layout}:v1", second)
    (second / "rootfs/etc/gone").unlink()  # a whiteout in layer 2
    (second / "rootfs/data/new").write_text("new\n")
    run_tool("umoci", "repack", "--image", f"{layout}:v1", second)
    run_tool(
        "umoci", "config", "--image", f"{layout}:v1", "--config.env", "FOO=from-image",
        "--config.env", "PATH=/bin", "--config.workingdir", "/data",
    )  # fmt: skip
    return layout


@pytest.fixture(scope="module")
def pushed(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    work = tmp_path_factory.mktemp("export-registry")
    registry = start_registry(work, "export", work / "storage")
    try:
        layout = _build(work)
        ref = f"{registry.host}/it/export:v1"
        run_tool("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1", f"docker://{ref}")
        with Client(server.url, server.token) as client:
            info = client.pull_image(ref)
    finally:
        registry.stop()  # exports must not need it
    assert info.pinned
    return Pushed(ref, info.pinned, layout)


def _cli(server: LiveServer, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STOCKADE_URL": server.url, "STOCKADE_TOKEN": server.token}
    return subprocess.run(
        [str(CLI), *map(str, args)], capture_output=True, text=True, timeout=50, env=env,
        check=False,
    )  # fmt: skip


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def _config(image: str) -> dict[str, Any]:
    """The ``config`` section of an image, as skopeo reads it (``oci-archive:F:TAG`` …)."""
    section: dict[str, Any] = json.loads(run_tool("skopeo", "inspect", "--config", image))["config"]
    return section


def _layers(image: str) -> list[str]:
    layers: list[str] = json.loads(run_tool("skopeo", "inspect", image))["Layers"]
    return layers


def _unpack(image: str, bundle: Path) -> Path:
    """``umoci unpack`` an ``oci:`` layout or an ``oci-archive:`` tarball; returns the rootfs."""
    kind, _, rest = image.partition(":")
    if kind == "oci-archive":
        archive, _, tag = rest.rpartition(":")
        layout = bundle.with_name(bundle.name + "-layout")
        layout.mkdir()
        run_tool("tar", "-xf", archive, "-C", layout)
        rest = f"{layout}:{tag}"
    run_tool("umoci", "unpack", "--image", rest, bundle)
    return bundle / "rootfs"


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below ``root`` with its type, content (or target), mode and owner."""
    found: dict[str, tuple[object, ...]] = {}
    for top, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(top) / name
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: tuple[object, ...] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir",)
            else:
                what = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            mode = stat.S_IMODE(st.st_mode)
            found[str(path.relative_to(root))] = (*what, mode, st.st_uid, st.st_gid)
    return found


def _layer_names(archive: Path) -> list[list[str]]:
    """The entry names of each layer in the tarball, bottom first."""
    with tarfile.open(archive) as tar:

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            assert member is not None, name
            return member.read()

        def blob(digest: str) -> bytes:
            return read(f"blobs/sha256/{digest.removeprefix('sha256:')}")

        manifest = json.loads(blob(json.loads(read("index.json"))["manifests"][0]["digest"]))
        names: list[list[str]] = []
        for layer in manifest["layers"]:
            with tarfile.open(
                fileobj=gzip.GzipFile(fileobj=io.BytesIO(blob(layer["digest"])))
            ) as t:
                names.append(t.getnames())
        return names


def _export_fds(server: LiveServer) -> list[str]:
    """What the server's open descriptors into its exports directory point at."""
    assert server.proc is not None
    pid = server.proc.pid
    exports = server.data_dir.parent / "cache" / "exports"
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(f"{exports}/"):
            targets.append(target)
    return targets


def test_cli_export_matches_the_pushed_image(
    server: LiveServer, pushed: Pushed, tmp_path: Path
) -> None:
    out = tmp_path / "app.tar"
    result = _cli(server, "image", "export", pushed.ref, out)
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and "MiB" in result.stdout
    assert out.is_file() and not _partial(out).exists()

    exported = f"oci-archive:{out}:v1"  # the tag defaults to the reference's
    original = f"oci:{pushed.layout}:v1"
    assert len(_layers(exported)) == 2
    config = _config(exported)
    assert config["Env"] == _config(original)["Env"] and "FOO=from-image" in config["Env"]
    assert config["WorkingDir"] == "/data"
    # The deletion travels as an OCI whiteout, in the layer that made it.
    assert "etc/.wh.gone" in _layer_names(out)[1]

    got = _tree(_unpack(exported, tmp_path / "exported"))
    assert got == _tree(_unpack(original, tmp_path / "original"))
    assert "etc/gone" not in got and {"etc/keep", "etc/link", "data/new", "data/big"} <= set(got)


def test_http_export_by_digest(
    server: LiveServer, pushed: Pushed, http: httpx.Client, tmp_path: Path
) -> None:
    r = http.get("/v1/images/export", params={"ref": pushed.pinned, "tag": "exported"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-tar"
    assert r.headers["content-disposition"] == 'attachment; filename="export-exported.tar"'
    assert int(r.headers["content-length"]) == len(r.content)
    out = tmp_path / "by-digest.tar"
    out.write_bytes(r.content)
    exported = f"oci-archive:{out}:exported"
    assert len(_layers(exported)) == 2
    got = _tree(_unpack(exported, tmp_path / "exported"))
    assert got == _tree(_unpack(f"oci:{pushed.layout}:v1", tmp_path / "original"))
    # A digest has no tag to default to.
    with http.stream("GET", "/v1/images/export", params={"ref": pushed.pinned}) as r:
        assert r.status_code == 200
        assert r.headers["content-disposition"] == 'attachment; filename="export-latest.tar"'
        r.read()
    assert server.proc is not None
    wait_for(lambda: not _export_fds(server) or None, timeout=10, what="the exports to be closed")


def test_base_image_export(server: LiveServer, tmp_path: Path) -> None:
    with Client(server.url, server.token) as client:
        client.build_image("debian")  # built in the shared cache already: returns at once
    out = tmp_path / "debian.tar"
    result = _cli(server, "image", "export", "debian", out)
    assert result.returncode == 0, result.stderr
    exported = f"oci-archive:{out}:latest"
    assert len(_layers(exported)) == 1
    assert _config(exported) == {"Env": [BASE_PATH]}
    rootfs = _unpack(exported, tmp_path / "debian")
    assert (rootfs / "etc/debian_version").read_text().startswith("12.")


def test_a_client_gone_mid_download_frees_the_file(server: LiveServer, pushed: Pushed) -> None:
    assert server.proc is not None
    # A small, fixed receive buffer: with autotuning (tcp_rmem up to 32 MiB on some hosts)
    # the whole body could be in flight, and the server done with the file, at once.
    slow_reader = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)])
    with (
        httpx.Client(
            base_url=server.url, headers=server.headers, timeout=50, transport=slow_reader
        ) as client,
        client.stream("GET", "/v1/images/export", params={"ref": pushed.ref}) as r,
    ):
        assert r.status_code == 200
        assert int(r.headers["content-length"]) > BIG
        next(r.iter_raw())
        # Unlinked as soon as it was opened: only the descriptor keeps it.
        (target,) = _export_fds(server)
        assert target.endswith(" (deleted)"), target
    # Most of the body is unread when the connection closes.
    wait_for(lambda: not _export_fds(server) or None, timeout=10, what="the export to be closed")


def test_unknown_and_malformed_refs(server: LiveServer, http: httpx.Client, tmp_path: Path) -> None:
    unknown = f"127.0.0.1:9/it/{unique('never')}:v1"
    r = http.get("/v1/images/export", params={"ref": unknown})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"
    assert "stockade image ls" in r.json()["error"]["message"]
    for params in ({"ref": "Not A Reference"}, {"ref": ""}, {}, {"ref": "debian", "tag": "a b"}):
        r = http.get("/v1/images/export", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"]["code"] == "invalid_argument"

    out = tmp_path / "never.tar"
    result = _cli(server, "image", "export", unknown, out)
    assert result.returncode == 1
    assert "error:" in result.stderr and "stockade image ls" in result.stderr
    result = _cli(server, "image", "export", "Not A Reference", out)
    assert result.returncode == 1 and "invalid image reference" in result.stderr
    result = _cli(server, "image", "export", "debian", tmp_path / "no-such-dir" / "x.tar")
    assert result.returncode == 1 and "could not write" in result.stderr
    assert list(tmp_path.iterdir()) == []  # neither OUT nor OUT.partial
