"""apt_install and pip_install in image builds, against package sources on this machine.

The stand-in public host of netlab.py serves a pip "simple" index with one wheel
(pypi.test) and a flat apt repository with one package (deb.test). The test servers
build with exactly those hosts allowed (conftest.py), so a build step reaches nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade import BuildError, Image, Sandbox

from .conftest import LiveServer
from .helpers import unique
from .netlab import netlab

pytestmark = pytest.mark.runsc

APT_SOURCES = (
    "echo 'deb [trusted=yes] http://deb.test/debian ./' > /etc/apt/sources.list"
    " && rm -f /etc/apt/sources.list.d/*"
)


def _wheel(directory: Path) -> str:
    """A minimal pure-Python wheel of ``tinypkg`` 1.0; returns its file name."""
    name = "tinypkg-1.0-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": b"VALUE = 'tiny'\n",
        "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{path},sha256={digest},{len(data)}\n"
    record += "tinypkg-1.0.dist-info/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
        z.writestr("tinypkg-1.0.dist-info/RECORD", record)
    (directory / name).write_bytes(buffer.getvalue())
    return name


def _pip_index(root: Path) -> None:
    files = root / "files"
    files.mkdir(parents=True)
    wheel = _wheel(files)
    sha = hashlib.sha256((files / wheel).read_bytes()).hexdigest()
    project = root / "simple" / "tinypkg"
    project.mkdir(parents=True)
    (project / "index.html").write_text(
        f'<html><body><a href="/files/{wheel}#sha256={sha}">{wheel}</a></body></html>\n'
    )
    (root / "simple" / "index.html").write_text('<a href="tinypkg/">tinypkg</a>\n')


def _apt_repo(root: Path, work: Path) -> None:
    pkg = work / "tinydeb"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr/share/tinydeb").mkdir(parents=True)
    (pkg / "usr/share/tinydeb/hello").write_text("hello from tinydeb\n")
    (pkg / "DEBIAN/control").write_text(
        "Package: tinydeb\nVersion: 1.0\nArchitecture: all\nMaintainer: tests <t@t>\n"
        "Description: a package for the tests\n"
    )
    repo = root / "debian"
    repo.mkdir(parents=True)
    deb = repo / "tinydeb_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(pkg), str(deb)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    data = deb.read_bytes()
    packages = (
        "Package: tinydeb\nVersion: 1.0\nArchitecture: all\nMaintainer: tests <t@t>\n"
        f"Filename: ./{deb.name}\nSize: {len(data)}\n"
        f"SHA256: {hashlib.sha256(data).hexdigest()}\nDescription: a package for the tests\n\n"
    ).encode()
    (repo / "Packages").write_bytes(packages)
    (repo / "Release").write_text(
        "Origin: tests\nLabel: tests\nSuite: stable\nCodename: tests\nArchitectures: all amd64\n"
        "Date: Thu, 26 Nov 2026 00:00:00 UTC\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n"
    )


@pytest.fixture(scope="module", autouse=True)
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    root = tmp_path_factory.mktemp("packages")
    _pip_index(root)
    _apt_repo(root, tmp_path_factory.mktemp("deb-build"))
    with netlab(files=root):
        yield


def test_pip_install(server: LiveServer) -> None:
    img = Image.debian_slim(python_version="3.11").pip_install("tinypkg==1.0")
    with Sandbox.create(image=img, timeout=120) as sb:
        r = sb.run(["python3", "-c", "import tinypkg; print(tinypkg.VALUE)"])
        assert r.stdout == "tiny\n", r.stderr


def test_apt_install(server: LiveServer) -> None:
    img = Image.from_name("debian").run_commands(APT_SOURCES).apt_install("tinydeb")
    with Sandbox.create(image=img, timeout=120) as sb:
        assert sb.run("cat /usr/share/tinydeb/hello").stdout == "hello from tinydeb\n"
        # The package lists are not kept in the layer.
        assert sb.run("ls /var/lib/apt/lists | grep -c deb.test || true").stdout == "0\n"


def test_a_missing_pip_package_is_named(server: LiveServer) -> None:
    missing = unique("no-such-package")
    with pytest.raises(BuildError, match=f"package {missing} does not exist"):
        Sandbox.create(image=Image.debian_slim().pip_install(missing), timeout=60)


def test_a_missing_apt_package_is_named(server: LiveServer) -> None:
    missing = unique("no-such-deb")
    img = Image.from_name("debian").run_commands(APT_SOURCES).apt_install(missing)
    with pytest.raises(BuildError, match=f"package {missing} does not exist"):
        Sandbox.create(image=img, timeout=60)


def test_build_steps_reach_only_the_package_sources(server: LiveServer) -> None:
    # Two short lines, whatever order stdout and stderr arrive in: a traceback would push
    # the first line out of the failure's last lines.
    probe = (
        "import sys, urllib.request as u\n"
        "print(u.urlopen('http://pypi.test/simple/', timeout=5).status, flush=True)\n"
        "try:\n"
        "    u.urlopen('http://public.test/', timeout=5)\n"
        "except OSError as e:\n"
        "    sys.exit(f'public.test refused: {e}')\n"
    )
    img = Image.debian_slim().run_commands(f'python3 -c "{probe}"')
    with pytest.raises(BuildError) as failed:
        Sandbox.create(image=img, timeout=60)
    # The package index answered; the other public host did not.
    assert "200" in failed.value.message, failed.value.message
    assert "public.test refused" in failed.value.message, failed.value.message
