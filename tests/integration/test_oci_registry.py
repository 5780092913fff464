"""Pulls from a real registry (Debian's docker-registry) of images built and pushed with real
tools (umoci, skopeo), stacked as a real overlayfs, and exports read back by those tools.

Three registry processes serve one storage directory: one anonymous (images are pushed
there), one behind htpasswd Basic auth, and one behind token auth, whose token service is a
small HTTP server in this file signing JWTs with a throwaway certificate (``openssl``).
Everything listens on 127.0.0.1. Needs root (overlay mounts, unpacking) and the packages
docker-registry, skopeo, umoci, apache2-utils (htpasswd) and openssl.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from stockade.errors import (
    DigestMismatchError,
    ImageNotFoundError,
    RegistryAuthError,
    RegistryUnreachableError,
    UnsupportedImageError,
)
from stockade.server.images.oci import (
    LayerStore,
    PulledImage,
    RegistryAuth,
    export_layout,
    parse_reference,
    pull,
)

from .registry import Registry, free_port, opaque_layer, run_tool, start_registry

pytestmark = [pytest.mark.runsc, pytest.mark.timeout(60)]

TOOLS = ("docker-registry", "skopeo", "umoci", "htpasswd", "openssl", "mount")
USER, PASSWORD = "alice", "s3cret-" + secrets.token_hex(4)
SERVICE, ISSUER = "stockade-test-registry", "stockade-test-token-issuer"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class TokenService:
    """A token server as Docker Hub's: Basic credentials in, a signed JWT for the scope out.

    Anonymous callers may pull ``public/*`` (Docker Hub's everyday case) and get a token
    granting nothing elsewhere, as real services do for private repositories.
    """

    def __init__(self, work: Path) -> None:
        self.key, cert = work / "token.key", work / "token.crt"
        run_tool(
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=stockade test token issuer", "-keyout", self.key, "-out", cert,
        )  # fmt: skip
        self.cert = cert
        pem = cert.read_text()
        self._x5c = "".join(pem.split("-----")[2].split())  # the DER, base64, as JWS wants
        self.issued = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.handle(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(req.path).query)
        user = None
        header = req.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if (name, password) != (USER, PASSWORD):
                self._reply(req, 401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            user = name
        access = []
        for scope in " ".join(query.get("scope", [])).split():
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            if user is not None:
                access.append({"type": kind, "name": repo, "actions": actions.split(",")})
            elif repo.startswith("public/"):
                access.append({"type": kind, "name": repo, "actions": ["pull"]})
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": user or "", "aud": query.get("service", [""])[0],
            "exp": now + 300, "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8),
            "access": access,
        }  # fmt: skip
        self._reply(req, 200, {"token": self._sign(claims), "expires_in": 300})
        self.issued += 1

    def _sign(self, claims: dict[str, object]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = f"{_b64url(json.dumps(header))}.{_b64url(json.dumps(claims))}"
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(), capture_output=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        return f"{signing_input}.{_b64url(signature)}"

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _b64url(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Lab:
    work: Path
    storage: Path
    anon: Registry
    basic: Registry
    token: Registry
    tokens: TokenService
    layout: Path  # the OCI layout the images were built in
    app_digest: str  # manifest digest of test/app:v1 (linux/amd64)
    corrupt_layer: str  # blob digest whose bytes were flipped in the registry's storage

    def ref(self, repo: str, registry: Registry | None = None) -> str:
        return f"{(registry or self.anon).host}/{repo}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("registry tests mount overlays and unpack layers as root (use `make test`)")
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path(f"/usr/bin/{t}").exists()]
    if missing:
        pytest.fail(
            f"missing {missing}: apt-get install docker-registry skopeo umoci apache2-utils openssl"
        )
    work = tmp_path_factory.mktemp("oci-lab")
    storage = work / "storage"
    started: list[Registry] = []
    tokens = TokenService(work)
    try:
        anon = start_registry(work, "anon", storage)
        started.append(anon)
        htpasswd = work / "htpasswd"
        htpasswd.write_text(run_tool("htpasswd", "-Bbn", USER, PASSWORD))
        basic = start_registry(
            work, "basic", storage,
            f"auth:\n  htpasswd:\n    realm: stockade-test\n    path: {htpasswd}\n",
        )  # fmt: skip
        started.append(basic)
        token = start_registry(
            work, "token", storage,
            f"auth:\n  token:\n    realm: {tokens.realm}\n    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n    rootcertbundle: {tokens.cert}\n",
        )  # fmt: skip
        started.append(token)
        layout, app_digest, corrupt_layer = _build_and_push(work, anon.host, storage)
        yield Lab(work, storage, anon, basic, token, tokens, layout, app_digest, corrupt_layer)
    finally:
        for registry in started:
            registry.stop()
        tokens.stop()


# -- the images --------------------------------------------------------------------------------


def _build_and_push(work: Path, host: str, storage: Path) -> tuple[Path, str, str]:
    """Build the test images with umoci and push them with skopeo; return (layout, the
    manifest digest of test/app:v1, the corrupted blob's digest)."""
    layout = work / "layout"
    run_tool("umoci", "init", "--layout", layout)
    run_tool("umoci", "new", "--image", f"{layout}:v1")

    # Layer 1: a small tree with the metadata that must survive.
    bundle = work / "bundle1"
    run_tool("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    root = bundle / "rootfs"
    for d in ("etc", "data/sub", "bin"):
        (root / d).mkdir(parents=True)
    (root / "etc/hello").write_text("hello\n")
    (root / "etc/keep").write_text("keep\n")
    os.link(root / "etc/keep", root / "etc/keep-hard")
    os.symlink("keep", root / "etc/keep-link")
    (root / "data/sub/a").write_text("a\n")
    (root / "data/b").write_text("b\n")
    (root / "bin/tool").write_text("#!/bin/sh\necho tool\n")
    os.chown(root / "bin/tool", 1000, 1000)
    os.chmod(root / "bin/tool", 0o4755)
    run_tool("umoci", "repack", "--image", f"{layout}:v1", bundle)

    # Layer 2 (umoci's own whiteout): delete etc/hello.
    bundle2 = work / "bundle2"
    run_tool("umoci", "unpack", "--image", f"{layout}:v1", bundle2)
    (bundle2 / "rootfs/etc/hello").unlink()
    run_tool("umoci", "repack", "--image", f"{layout}:v1", bundle2)

    # Layer 3 (hand-made, as umoci never writes one): data/ becomes opaque, with a new file.
    opaque = opaque_layer(work / "opaque.tar")
    run_tool("umoci", "raw", "add-layer", "--image", f"{layout}:v1", opaque)
    run_tool(
        "umoci", "config", "--image", f"{layout}:v1",
        "--config.env", "FOO=bar", "--config.env", "PATH=/bin",
        "--config.workingdir", "/data", "--config.entrypoint", "/bin/tool",
        "--config.cmd", "--flag", "--config.user", "1000:1000",
    )  # fmt: skip

    # Other platforms, for the multi-platform indexes.
    run_tool(
        "umoci", "config", "--image", f"{layout}:v1", "--architecture", "arm64", "--tag", "arm64"
    )
    run_tool(
        "umoci", "config", "--image", f"{layout}:v1", "--architecture", "arm", "--tag", "armv7"
    )
    _add_index(layout, "multi", [("arm64", "", "arm64"), ("v1", "", "amd64")])
    _add_index(layout, "armonly", [("arm64", "", "arm64"), ("armv7", "v7", "arm")])

    # A unique image for corruption, and one to recompress with zstd (unique content, so
    # skopeo cannot reuse gzip blobs it already pushed in place of zstd ones).
    for tag, content in (("corrupt", "to be corrupted"), ("zstd", "zstd layer")):
        run_tool("umoci", "new", "--image", f"{layout}:{tag}")
        b = work / f"bundle-{tag}"
        run_tool("umoci", "unpack", "--image", f"{layout}:{tag}", b)
        (b / "rootfs/file").write_text(f"{content} {secrets.token_hex(8)}\n")
        run_tool("umoci", "repack", "--image", f"{layout}:{tag}", b)
    zlayout = work / "zstd-layout"
    run_tool("skopeo", "copy", "--dest-compress-format", "zstd", f"oci:{layout}:zstd",
         f"oci:{zlayout}:zstd")  # fmt: skip

    push = ("skopeo", "copy", "--dest-tls-verify=false")
    run_tool(*push, f"oci:{layout}:v1", f"docker://{host}/test/app:v1")
    run_tool(*push, "--all", f"oci:{layout}:multi", f"docker://{host}/test/multi:v1")
    run_tool(*push, "--all", f"oci:{layout}:armonly", f"docker://{host}/test/armonly:v1")
    run_tool(*push, f"oci:{layout}:v1", f"docker://{host}/public/app:v1")
    run_tool(*push, "--format", "v2s2", f"oci:{layout}:v1", f"docker://{host}/test/docker:v1")
    run_tool(*push, "--all", "--format", "v2s2", f"oci:{layout}:multi",
         f"docker://{host}/test/dockerlist:v1")  # fmt: skip
    run_tool(*push, f"oci:{layout}:corrupt", f"docker://{host}/test/corrupt:v1")
    run_tool(*push, "--dest-compress-format", "zstd", f"oci:{zlayout}:zstd",
         f"docker://{host}/test/zstd:v1")  # fmt: skip

    corrupt_manifest = _layout_manifest(layout, "corrupt")
    corrupt_layer = corrupt_manifest["layers"][0]["digest"]
    hexdigits = corrupt_layer.removeprefix("sha256:")
    stored = storage / "docker/registry/v2/blobs/sha256" / hexdigits[:2] / hexdigits / "data"
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored.write_bytes(bytes(raw))
    return layout, _layout_digest(layout, "v1"), corrupt_layer


def _layout_index(layout: Path) -> dict[str, object]:
    index: dict[str, object] = json.loads((layout / "index.json").read_text())
    return index


def _layout_descriptor(layout: Path, tag: str) -> dict[str, object]:
    entries = _layout_index(layout)["manifests"]
    assert isinstance(entries, list)
    for entry in entries:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return dict(entry)
    raise AssertionError(f"no tag {tag} in {layout}")


def _layout_digest(layout: Path, tag: str) -> str:
    return str(_layout_descriptor(layout, tag)["digest"])


def _layout_manifest(layout: Path, tag: str) -> dict[str, list[dict[str, str]]]:
    digest = _layout_digest(layout, tag).removeprefix("sha256:")
    manifest: dict[str, list[dict[str, str]]] = json.loads(
        (layout / "blobs/sha256" / digest).read_text()
    )
    return manifest


def _add_index(layout: Path, tag: str, entries: list[tuple[str, str, str]]) -> None:
    """Write a multi-platform index of the images tagged in ``entries`` as ``tag``."""
    manifests = []
    for source_tag, variant, arch in entries:
        desc = {
            k: v for k, v in _layout_descriptor(layout, source_tag).items() if k != "annotations"
        }
        platform = {"architecture": arch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        manifests.append({**desc, "platform": platform})
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    digest = hashlib.sha256(body).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(body)
    index = _layout_index(layout)
    assert isinstance(index["manifests"], list)
    index["manifests"].append(
        {
            "mediaType": OCI_INDEX, "digest": f"sha256:{digest}", "size": len(body),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))


# -- helpers for the checks --------------------------------------------------------------------


class CountingTransport(httpx.AsyncBaseTransport):
    """The real network, with a list of the requests that went over it."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.requests: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url.path}")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class RefusingTransport(httpx.AsyncBaseTransport):
    """A network that is down."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 101] Network is unreachable", request=request)


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below ``root`` with what identifies it (type, mode, owner, content)."""
    result: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            ident = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                result[rel] = (*ident, path.read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                result[rel] = (*ident[:1], os.readlink(path))
            else:
                result[rel] = ident
    return result


class Overlay:
    """The image's layers mounted read-only as the kernel will mount them for a sandbox."""

    def __init__(self, image: PulledImage, where: Path) -> None:
        self.image, self.merged = image, where

    def __enter__(self) -> Path:
        self.merged.mkdir(parents=True, exist_ok=True)
        lower = ":".join(str(p) for p in self.image.lowerdirs)
        if len(self.image.lowerdirs) == 1:  # overlayfs wants two lowers without an upper
            empty = self.merged.parent / f"{self.merged.name}-empty"
            empty.mkdir(exist_ok=True)
            lower += f":{empty}"
        run_tool("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", self.merged)
        return self.merged

    def __exit__(self, *exc: object) -> None:
        run_tool("umount", self.merged)


EXPECTED_APP_FILES = {
    "bin", "bin/tool", "data", "data/new", "etc", "etc/keep", "etc/keep-hard", "etc/keep-link",
}  # fmt: skip


def _check_app_tree(merged: Path) -> None:
    tree = _tree(merged)
    assert set(tree) == EXPECTED_APP_FILES  # etc/hello deleted; data/sub and data/b hidden
    assert (merged / "etc/keep").read_text() == "keep\n"
    assert os.readlink(merged / "etc/keep-link") == "keep"
    assert (merged / "data/new").read_text() == "new\n"
    tool = os.stat(merged / "bin/tool")
    assert (stat.S_IMODE(tool.st_mode), tool.st_uid, tool.st_gid) == (0o4755, 1000, 1000)


# -- the tests ---------------------------------------------------------------------------------


async def test_pull_stacks_as_overlay_and_keeps_config(lab: Lab, tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    lines: list[str] = []
    image = await pull(lab.ref("test/app:v1"), store, on_progress=lines.append)
    assert image.manifest_digest == lab.app_digest
    assert len(image.layers) == 3 and all(p.parent == store.root for p in image.layers)
    assert image.lowerdirs == image.layers[::-1]
    assert image.size > 0
    config = image.config
    assert config.env == ("FOO=bar", "PATH=/bin")
    assert (config.working_dir, config.user) == ("/data", "1000:1000")
    assert (config.entrypoint, config.cmd) == (("/bin/tool",), ("--flag",))
    assert sum(line.startswith("pulling sha256:") for line in lines) == 3, lines
    assert all("MiB)" in line for line in lines if line.startswith("pulling sha256:"))
    # The whiteouts are overlay's own in the store, so the kernel applies them.
    hello = os.lstat(image.layers[1] / "etc/hello")
    assert stat.S_ISCHR(hello.st_mode) and hello.st_rdev == 0
    assert os.getxattr(image.layers[2] / "data", "trusted.overlay.opaque") == b"y"
    assert (image.layers[0] / "etc/keep-hard").stat().st_ino == (
        image.layers[0] / "etc/keep"
    ).stat().st_ino
    with Overlay(image, tmp_path / "merged") as merged:
        _check_app_tree(merged)


async def test_second_pull_downloads_nothing(lab: Lab, tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    first = await pull(lab.ref("test/app:v1"), store)

    again = CountingTransport()
    lines: list[str] = []
    second = await pull(lab.ref("test/app:v1"), store, transport=again, on_progress=lines.append)
    assert again.requests == ["HEAD /v2/test/app/manifests/v1"]  # a tag is re-checked
    assert second == first
    assert any("up to date" in line for line in lines), lines

    by_digest = CountingTransport()
    pinned = await pull(lab.ref(f"test/app@{lab.app_digest}"), store, transport=by_digest)
    assert by_digest.requests == []  # a digest never changes: no need to ask
    assert pinned.layers == first.layers

    offline_lines: list[str] = []
    down = await pull(
        lab.ref("test/app:v1"),
        store,
        transport=RefusingTransport(),
        on_progress=offline_lines.append,
    )
    assert down.manifest_digest == first.manifest_digest
    assert any("unreachable" in line and "pulled before" in line for line in offline_lines)
    assert (await pull(lab.ref("test/app:v1"), store, offline=True)).layers == first.layers
    with pytest.raises(ImageNotFoundError, match="offline"):
        await pull(lab.ref("test/multi:v1"), store, offline=True)

    # Another image sharing the layers downloads only its own manifests and config.
    shared = CountingTransport()
    multi = await pull(lab.ref("test/multi:v1"), store, transport=shared)
    assert multi.layers == first.layers
    assert not [r for r in shared.requests if "/blobs/" in r], shared.requests


async def test_multi_platform_index_resolves_to_linux_amd64(lab: Lab, tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    image = await pull(lab.ref("test/multi:v1"), store)
    assert image.manifest_digest == lab.app_digest
    with Overlay(image, tmp_path / "merged") as merged:
        _check_app_tree(merged)


@pytest.mark.parametrize(
    ("repo", "media_type"),
    [
        ("test/docker", "application/vnd.docker.distribution.manifest.v2+json"),
        ("test/dockerlist", "application/vnd.docker.distribution.manifest.list.v2+json"),
    ],
)
async def test_docker_manifest_formats(
    lab: Lab, tmp_path: Path, repo: str, media_type: str
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.head(
            f"http://{lab.anon.host}/v2/{repo}/manifests/v1",
            headers={"Accept": f"{media_type}, {OCI_INDEX}, {OCI_MANIFEST}"},
        )
    assert resp.headers["content-type"] == media_type  # skopeo really wrote Docker's format
    image = await pull(lab.ref(f"{repo}:v1"), LayerStore(tmp_path / "store"))
    assert image.config.working_dir == "/data"
    with Overlay(image, tmp_path / "merged") as merged:
        _check_app_tree(merged)


async def test_no_linux_amd64_names_the_platforms(lab: Lab, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedImageError) as info:
        await pull(lab.ref("test/armonly:v1"), LayerStore(tmp_path / "store"))
    assert info.value.code == "unsupported_image"
    assert "linux/arm64" in info.value.message and "linux/arm/v7" in info.value.message


async def test_zstd_layers(lab: Lab, tmp_path: Path) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(
            f"http://{lab.anon.host}/v2/test/zstd/manifests/v1", headers={"Accept": OCI_MANIFEST}
        )
    manifest = resp.json()
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+zstd"
    ]
    image = await pull(lab.ref("test/zstd:v1"), LayerStore(tmp_path / "store"))
    assert (image.layers[0] / "file").read_text().startswith("zstd layer ")


async def test_missing_image_or_tag(lab: Lab, tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    for ref in ("test/app:no-such-tag", "test/no-such-repo:v1", f"test/app@sha256:{'0' * 64}"):
        with pytest.raises(ImageNotFoundError) as info:
            await pull(lab.ref(ref), store)
        assert info.value.code == "image_not_found"
        assert info.value.status == 404
        assert "not found" in info.value.message


async def test_unreachable_registry(lab: Lab, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(RegistryUnreachableError) as info:
        await pull(f"127.0.0.1:{port}/test/app:v1", LayerStore(tmp_path / "store"))
    assert info.value.code == "registry_unreachable"
    assert f"127.0.0.1:{port}" in info.value.message
    assert "check the registry address" in info.value.message


async def test_basic_auth(lab: Lab, tmp_path: Path) -> None:
    ref = lab.ref("test/app:v1", lab.basic)
    image = await pull(ref, LayerStore(tmp_path / "ok"), auth=(USER, PASSWORD))
    assert image.manifest_digest == lab.app_digest
    for auth in (RegistryAuth(USER, "wrong"), None):
        with pytest.raises(RegistryAuthError) as info:
            await pull(ref, LayerStore(tmp_path / "refused"), auth=auth)
        assert info.value.code == "registry_auth_failed"
        assert "auth=(user, password)" in info.value.message
        assert "wrong" not in info.value.message  # the password never lands in a message


async def test_token_auth(lab: Lab, tmp_path: Path) -> None:
    ref = lab.ref("test/app:v1", lab.token)
    issued = lab.tokens.issued
    image = await pull(ref, LayerStore(tmp_path / "ok"), auth=RegistryAuth(USER, PASSWORD))
    assert image.manifest_digest == lab.app_digest
    assert lab.tokens.issued > issued  # the registry really sent us to the token service
    with pytest.raises(RegistryAuthError, match=r"refused user 'alice'.*auth=\(user, password\)"):
        await pull(ref, LayerStore(tmp_path / "wrong"), auth=(USER, "wrong"))
    with pytest.raises(RegistryAuthError, match="anonymous"):  # a token granting nothing
        await pull(ref, LayerStore(tmp_path / "anonymous"))
    # A public repository: an anonymous token, as for Docker Hub's official images.
    public = await pull(lab.ref("public/app:v1", lab.token), LayerStore(tmp_path / "public"))
    assert public.manifest_digest == lab.app_digest


async def test_corrupted_blob_is_refused(lab: Lab, tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    with pytest.raises(DigestMismatchError) as info:
        await pull(lab.ref("test/corrupt:v1"), store)
    assert info.value.code == "digest_mismatch"
    assert lab.corrupt_layer in info.value.message
    assert list(store.tmp.iterdir()) == []  # the partial download is gone
    assert list(store.root.glob("sha256-*")) == []


async def test_export_round_trip(lab: Lab, tmp_path: Path) -> None:
    store = LayerStore(tmp_path / "store")
    image = await pull(lab.ref("test/app:v1"), store)
    out = tmp_path / "export" / "app.tar"
    digest = await export_layout(image.layers, image.config, out, tag="v1")

    inspect = json.loads(run_tool("skopeo", "inspect", f"oci-archive:{out}:v1"))
    assert inspect["Digest"] == digest
    assert len(inspect["Layers"]) == 3
    assert (inspect["Os"], inspect["Architecture"]) == ("linux", "amd64")
    config = json.loads(run_tool("skopeo", "inspect", "--config", f"oci-archive:{out}:v1"))[
        "config"
    ]
    assert config == {
        "User": "1000:1000", "Env": ["FOO=bar", "PATH=/bin"], "Entrypoint": ["/bin/tool"],
        "Cmd": ["--flag"], "WorkingDir": "/data",
    }  # fmt: skip

    # umoci applies the exported whiteouts itself: its rootfs equals our overlay's view.
    layout = tmp_path / "layout"
    with tarfile.open(out) as tar:
        tar.extractall(layout, filter="data")
    bundle = tmp_path / "bundle"
    run_tool("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    with Overlay(image, tmp_path / "merged") as merged:
        _check_app_tree(merged)
        assert _tree(bundle / "rootfs") == _tree(merged)

    # And the archive goes back into a registry, and pulls again as the same tree.
    run_tool("skopeo", "copy", "--dest-tls-verify=false", f"oci-archive:{out}:v1",
         f"docker://{lab.anon.host}/test/exported:v1")  # fmt: skip
    again = await pull(lab.ref("test/exported:v1"), LayerStore(tmp_path / "again"))
    assert again.config == image.config
    with Overlay(again, tmp_path / "merged-again") as merged:
        _check_app_tree(merged)


def test_reference_of_a_loopback_registry_is_plain_http(lab: Lab) -> None:
    assert parse_reference(lab.ref("test/app:v1")).plain_http
