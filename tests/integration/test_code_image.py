"""The built-in `code-interpreter` image: built by the image builder from wheels that the
host's pip downloaded, with no network in the sandbox, and usable as a base like any image.

The test server builds it in its own layer store (see conftest.private_cache), from the
machine's wheelhouse.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from stockade import Image, Sandbox

from .conftest import LiveServer
from .helpers import unique

pytestmark = pytest.mark.runsc

_IMPORTS = "import ipykernel, bash_kernel, numpy, pandas, matplotlib"


def test_the_code_interpreter_image_has_the_kernels_and_libraries(
    server: LiveServer, http: httpx.Client
) -> None:
    with Sandbox.create(image="code-interpreter", timeout=300) as sb:
        r = sb.run(["python3", "-c", f"{_IMPORTS}; print(numpy.__version__, pandas.__version__)"])
        assert r.exit_code == 0, r.stderr
        assert r.stdout.strip().startswith("2.")
        r = sb.run(
            'python3 -c \'import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as '
            'plt; plt.plot([1, 2]); plt.savefig("/tmp/p.png")\' && head -c 4 /tmp/p.png | od -c'
        )
        assert r.exit_code == 0 and "P   N   G" in r.stdout, r.stderr
        # The kernels the code interpreter starts are there for python3.
        r = sb.run(["python3", "-m", "ipykernel_launcher", "--help"])
        assert r.exit_code == 0, r.stderr
        # The wheels were seen by the build step only.
        r = sb.run("ls /opt/stockade/wheels; ls /opt; ls /complete")
        assert r.exit_code != 0
        assert "stockade" not in r.stdout, r.stdout
    images = {i["name"]: i for i in http.get("/v1/images").json()["images"]}
    listed = images["code-interpreter"]
    assert listed["ready"] is True and listed["size_mib"] > 100, listed
    assert "ipykernel" in listed["description"]


def test_images_build_on_the_code_interpreter(server: LiveServer) -> None:
    marker = unique("ci")
    img = Image.from_name("code-interpreter").run_commands(f"echo {marker} > /marker")
    log: list[str] = []
    with Sandbox.create(image=img, timeout=300, on_image_log=log.append) as sb:
        r = sb.run(["sh", "-c", f"cat /marker && python3 -c '{_IMPORTS}; print(numpy.pi)'"])
        assert r.exit_code == 0, r.stderr
        assert r.stdout.splitlines() == [marker, "3.141592653589793"]
        assert sb.run("test -e /opt/stockade").exit_code != 0
    assert any("[1/1] run" in line for line in log), log


def test_the_code_interpreter_image_exports_bottom_layer_first(
    server: LiveServer, http: httpx.Client
) -> None:
    with Sandbox.create(image="code-interpreter", timeout=60):
        pass  # made by now
    names: list[str] = []
    blobs: dict[str, list[str]] = {}
    with http.stream("GET", "/v1/images/export", params={"ref": "code-interpreter"}) as r:
        assert r.status_code == 200, r.read()
        with tarfile.open(fileobj=_Reader(r.iter_bytes()), mode="r|") as tar:
            for member in tar:
                names.append(member.name)
                f = tar.extractfile(member)
                if f is None:
                    continue
                if member.name == "index.json" or member.size < 4096:
                    blobs[member.name] = [f.read().decode(errors="replace")]
                else:
                    # A layer: the names in it, without keeping its bytes.
                    with tarfile.open(fileobj=f, mode="r|*") as layer:
                        blobs[member.name] = [m.name for m in layer]
    index = json.loads(blobs["index.json"][0])
    manifest = json.loads(blobs["blobs/sha256/" + index["manifests"][0]["digest"][7:]][0])
    layers = [blobs["blobs/sha256/" + d["digest"][7:]] for d in manifest["layers"]]
    assert len(layers) == 3
    # Bottom first: Debian with python3, then the packages, then matplotlib's font cache.
    assert any(n.endswith("usr/bin/python3.11") for n in layers[0])
    assert any("numpy/__init__.py" in n for n in layers[1])
    assert not any("numpy/__init__.py" in n for n in layers[0] + layers[2])


class _Reader(io.RawIOBase):
    """A file over an iterator of byte chunks, for tarfile's streaming mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._rest))
        buffer[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n
