"""A sandbox's working directory is made inside its root, with the image's symlinks
resolved there: no link of an image leads the server to make directories on the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stockade.server.runtime.rootfs import makedirs_in_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "usr" / "bin").mkdir(parents=True)
    (r / "bin").symlink_to("usr/bin")
    (r / "etc").mkdir()
    (r / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    return r


def test_plain_paths_are_made_with_their_parents(root: Path) -> None:
    makedirs_in_root(root, "/app/src/./pkg/")
    assert (root / "app" / "src" / "pkg").is_dir()
    makedirs_in_root(root, "/app/src")  # exists: nothing to do
    assert (root / "app" / "src" / "pkg").is_dir()


def test_relative_links_are_followed_inside_the_root(root: Path) -> None:
    makedirs_in_root(root, "/bin/tools")
    assert (root / "usr" / "bin" / "tools").is_dir()


def test_an_absolute_link_starts_again_from_the_root_not_the_host(
    root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "host-dir"
    outside.mkdir()
    (root / "w").symlink_to(str(outside))  # /w -> <the host's directory>
    makedirs_in_root(root, "/w/x")
    assert not (outside / "x").exists()
    assert (root / str(outside).lstrip("/") / "x").is_dir()


def test_dotdot_never_climbs_above_the_root(root: Path, tmp_path: Path) -> None:
    (root / "up").symlink_to("../../..")
    makedirs_in_root(root, "/up/escaped")
    makedirs_in_root(root, "/../../also")
    assert (root / "escaped").is_dir() and (root / "also").is_dir()
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "also").exists()


def test_a_file_in_the_way_and_link_loops_are_errors(root: Path) -> None:
    with pytest.raises(ValueError, match="passwd is a file"):
        makedirs_in_root(root, "/etc/passwd/x")
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(ValueError, match="too many levels"):
        makedirs_in_root(root, "/a/x")
    assert sorted(os.listdir(root)) == ["a", "b", "bin", "etc", "usr"]
