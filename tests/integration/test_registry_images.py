"""Sandboxes from OCI registry images: pulled from a real registry on loopback through the
SDK, the API and the CLI, then run by gVisor over the pulled layers.

The test image is built with umoci and pushed with skopeo. It has three layers: a static
busybox with a few files, a layer that deletes one of them, and an opaque directory; and a
config with Env and WorkingDir, which the sandbox must honour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from stockade import (
    Client,
    Image,
    ImageNotFoundError,
    InvalidArgumentError,
    RegistryAuthError,
    RegistryUnreachableError,
    Sandbox,
)

from .conftest import LiveServer
from .helpers import wait_ended
from .registry import Registry, free_port, opaque_layer, run_tool, start_registry

pytestmark = pytest.mark.runsc

USER, PASSWORD = "tester", "s3cret-pw"


@dataclass
class Registries:
    anon: Registry
    basic: Registry

    def ref(self, repo: str, *, basic: bool = False) -> str:
        return f"{(self.basic if basic else self.anon).host}/{repo}"


def _build(work: Path, host: str) -> None:
    layout = work / "layout"
    run_tool("umoci", "init", "--layout", layout)
    run_tool("umoci", "new", "--image", f"{layout}:v1")
    bundle = work / "b1"
    run_tool("umoci", "unpack", "--image", f"{layout}:v1", bundle)
    root = bundle / "rootfs"
    for d in ("bin", "etc", "data/old", "tmp"):
        (root / d).mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)
    (root / "bin/busybox").write_bytes(Path("/bin/busybox").read_bytes())
    os.chmod(root / "bin/busybox", 0o755)
    for tool in ("sh", "cat", "ls", "pwd", "env", "echo", "test"):
        os.symlink("busybox", root / "bin" / tool)
    (root / "etc/hello").write_text("hello\n")
    (root / "etc/keep").write_text("keep\n")
    (root / "data/old/gone").write_text("hidden by the opaque layer\n")
    run_tool("umoci", "repack", "--image", f"{layout}:v1", bundle)
    bundle2 = work / "b2"
    run_tool("umoci", "unpack", "--image", f"{layout}:v1", bundle2)
    (bundle2 / "rootfs/etc/hello").unlink()  # a whiteout in layer 2
    run_tool("umoci", "repack", "--image", f"{layout}:v1", bundle2)
    opaque = opaque_layer(work / "opaque.tar")
    run_tool("umoci", "raw", "add-layer", "--image", f"{layout}:v1", opaque)
    run_tool(
        "umoci", "config", "--image", f"{layout}:v1", "--config.env", "FOO=from-image",
        "--config.env", "PATH=/bin", "--config.workingdir", "/data",
        "--config.entrypoint", "/bin/sh", "--config.entrypoint", "-c",
        "--config.cmd", "echo main $FOO in $(pwd); exit 3",
    )  # fmt: skip
    run_tool("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:v1",
             f"docker://{host}/it/busybox:v1")  # fmt: skip


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    work = tmp_path_factory.mktemp("registry")
    storage = work / "storage"
    anon = start_registry(work, "anon", storage)
    htpasswd = work / "htpasswd"
    htpasswd.write_text(run_tool("htpasswd", "-Bbn", USER, PASSWORD))
    basic = start_registry(
        work, "basic", storage,
        f"auth:\n  htpasswd:\n    realm: stockade-test\n    path: {htpasswd}\n",
    )  # fmt: skip
    try:
        _build(work, anon.host)
        yield Registries(anon, basic)
    finally:
        anon.stop()
        basic.stop()


def test_a_sandbox_runs_over_the_pulled_layers(server: LiveServer, registries: Registries) -> None:
    lines: list[str] = []
    img = Image.from_registry(registries.ref("it/busybox:v1"))
    with Sandbox.create(image=img, timeout=120, on_image_log=lines.append) as sb:
        assert lines, "the pull reports its progress"
        r = sb.run('echo "$FOO $(pwd)"; ls /data; ls /etc; test -e /etc/hello || echo no-hello')
        assert r.exit_code == 0, r.stderr
        out = r.stdout.splitlines()
        assert out[0] == "from-image /data"  # Env and WorkingDir from the image config
        assert out[1] == "new"  # data/ is opaque in layer 3: data/old is hidden
        assert "keep" in out[2:] and "hello" not in " ".join(out[2:-1])
        assert out[-1] == "no-hello"  # deleted by the whiteout of layer 2
        # Writes land in the sandbox's own upper layer, never in the shared layers.
        sb.run("echo mine > /etc/keep")
        assert sb.files.read_text("/etc/keep") == "mine\n"
    with Sandbox.create(image=img, env={"FOO": "mine"}, timeout=60) as again:
        assert again.run("cat /etc/keep; echo $FOO").stdout == "keep\nmine\n"


def test_the_second_create_pulls_nothing(server: LiveServer, registries: Registries) -> None:
    img = Image.from_registry(registries.ref("it/busybox:v1"))
    lines: list[str] = []
    with Sandbox.create(image=img, timeout=60, on_image_log=lines.append) as sb:
        assert sb.run("echo ok").stdout == "ok\n"
    assert not any(line.startswith("pulling") for line in lines), lines


def test_private_registry_needs_its_login(server: LiveServer, registries: Registries) -> None:
    ref = registries.ref("it/busybox:v1", basic=True)
    with pytest.raises(RegistryAuthError, match="auth="):
        Sandbox.create(image=Image.from_registry(ref), timeout=60)
    with pytest.raises(RegistryAuthError):
        Sandbox.create(image=Image.from_registry(ref, auth=(USER, "wrong")), timeout=60)
    with Sandbox.create(image=Image.from_registry(ref, auth=(USER, PASSWORD)), timeout=60) as sb:
        assert sb.run("echo $FOO").stdout == "from-image\n"


def test_registry_errors_are_typed(server: LiveServer, registries: Registries) -> None:
    with pytest.raises(ImageNotFoundError):
        Sandbox.create(image=Image.from_registry(registries.ref("it/busybox:nope")), timeout=60)
    with pytest.raises(ImageNotFoundError):
        Sandbox.create(image=Image.from_registry(registries.ref("it/missing:v1")), timeout=60)
    started = time.monotonic()
    with pytest.raises(RegistryUnreachableError):
        Sandbox.create(image=Image.from_registry(f"127.0.0.1:{free_port()}/x/y:v1"))
    assert time.monotonic() - started < 30
    with pytest.raises(InvalidArgumentError):
        Sandbox.create(image="127.0.0.1:5000/UPPER/case:v1")


def test_pull_through_the_api_and_list(
    server: LiveServer, registries: Registries, http: httpx.Client
) -> None:
    r = http.post("/v1/images/pull", json={"ref": "Not A Reference"})
    assert r.status_code == 422
    ref = registries.ref("it/busybox:v1")
    with Client(server.url, server.token) as client:
        info = client.pull_image(ref)
        assert info.kind == "registry" and info.digest and info.pinned
        assert info.pinned.endswith(info.digest)
        listed = {i.name: i for i in client.images()}
        assert listed[ref].digest == info.digest and listed["python"].kind == "base"


def test_cli_pulls_and_runs(server: LiveServer, registries: Registries) -> None:
    cli = str(Path(sys.executable).parent / "stockade")
    ref = registries.ref("it/busybox:v1")
    pulled = subprocess.run([cli, "image", "pull", ref], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    assert "@sha256:" in pulled.stdout
    ran = subprocess.run([cli, "run", "--image", ref, "--", "sh", "-c", "echo $FOO"],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "from-image\n"
    ls = subprocess.run([cli, "image", "ls", "--json"], capture_output=True, text=True,
                        timeout=60, check=False)  # fmt: skip
    assert ref in {i["name"] for i in json.loads(ls.stdout)}


def test_the_image_entrypoint_runs_when_asked(server: LiveServer, registries: Registries) -> None:
    img = Image.from_registry(registries.ref("it/busybox:v1"))
    # By default the sandbox idles: the image's Cmd is not its main process.
    with Sandbox.create(image=img, timeout=60) as idle:
        assert idle.run("echo up").stdout == "up\n"
    sb = Sandbox.create(image=img, image_entrypoint=True, timeout=60)
    info = wait_ended(sb, timeout=30)
    assert (info.reason, info.exit_code) == ("exited", 3), info
    assert info.entrypoint == ["/bin/sh", "-c", "echo main $FOO in $(pwd); exit 3"]
    assert sb.logs() == "main from-image in /data\n"
    with pytest.raises(InvalidArgumentError, match="no Entrypoint or Cmd"):
        Sandbox.create(image="debian", image_entrypoint=True)
