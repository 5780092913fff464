"""The sandbox filesystem through the SDK: write, read, list, stat, mkdir, remove, big files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from stockade import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
)

from .conftest import LiveServer
from .helpers import RssSampler, random_file, sha256_file


def test_write_and_read_text(sb: Sandbox) -> None:
    text = "héllo wörld ✓\nsecond line\n"
    info = sb.files.write("/tmp/hello.txt", text)
    assert info.path == "/tmp/hello.txt"
    assert info.name == "hello.txt"
    assert info.type == "file"
    assert info.size_bytes == len(text.encode())
    assert sb.files.read_text("/tmp/hello.txt") == text
    # The sandbox's own programs see the same bytes.
    assert sb.run(["cat", "/tmp/hello.txt"]).stdout == text

    # Overwriting replaces the whole file; an empty file is a file.
    sb.files.write("/tmp/hello.txt", "short")
    assert sb.files.read_text("/tmp/hello.txt") == "short"
    assert sb.files.write("/tmp/empty", b"").size_bytes == 0
    assert sb.files.read_bytes("/tmp/empty") == b""


def test_write_and_read_binary_with_every_byte_value(sb: Sandbox) -> None:
    data = bytes(range(256)) * 64 + b"\x00\r\n\xff"
    assert sb.files.write("/tmp/all-bytes.bin", data).size_bytes == len(data)
    assert sb.files.read_bytes("/tmp/all-bytes.bin") == data
    made_inside = sb.run("printf '\\000\\001\\377' > /tmp/inside.bin")
    assert made_inside.exit_code == 0
    assert sb.files.read_bytes("/tmp/inside.bin") == b"\x00\x01\xff"

    # File objects and iterators of chunks stream in as well.
    sb.files.write("/tmp/from-file.bin", io.BytesIO(data))
    assert sb.files.read_bytes("/tmp/from-file.bin") == data
    sb.files.write("/tmp/from-chunks.bin", iter([b"ab", b"", b"cd" * 1000]))
    assert sb.files.read_bytes("/tmp/from-chunks.bin") == b"ab" + b"cd" * 1000


def test_write_creates_parent_directories(sb: Sandbox) -> None:
    sb.files.write("/deep/a/b/c/file.txt", "x")
    for d in ("/deep", "/deep/a", "/deep/a/b", "/deep/a/b/c"):
        assert sb.files.stat(d).type == "dir"
    assert sb.run("cat /deep/a/b/c/file.txt").stdout == "x"


def test_list_directory(sb: Sandbox) -> None:
    sb.files.mkdir("/listing/sub")
    sb.files.write("/listing/b.txt", "bb")
    sb.files.write("/listing/a.txt", "a")
    sb.run("ln -s a.txt /listing/link && mkfifo /listing/pipe").check()
    entries = sb.files.list("/listing")
    assert [e.name for e in entries] == ["a.txt", "b.txt", "link", "pipe", "sub"]
    by_name = {e.name: e for e in entries}
    assert by_name["a.txt"].type == "file" and by_name["a.txt"].size_bytes == 1
    assert by_name["a.txt"].path == "/listing/a.txt"
    assert by_name["b.txt"].size_bytes == 2
    assert by_name["sub"].type == "dir" and by_name["sub"].is_dir
    assert by_name["link"].type == "symlink" and by_name["link"].target == "a.txt"
    assert by_name["pipe"].type == "other"
    assert sb.files.list("/listing/sub") == []
    assert "etc" in {e.name for e in sb.files.list("/")}


def test_stat_type_size_mode(sb: Sandbox) -> None:
    sb.files.write("/tmp/stat-me", "12345")
    info = sb.files.stat("/tmp/stat-me")
    assert (info.type, info.size_bytes, info.name) == ("file", 5, "stat-me")
    assert info.is_file and not info.is_dir
    assert info.mode == 0o644
    assert info.mtime > 1_600_000_000

    sb.run("chmod 750 /tmp/stat-me").check()
    assert sb.files.stat("/tmp/stat-me").mode == 0o750

    d = sb.files.stat("/etc")
    assert d.type == "dir" and d.mode == 0o755
    link = sb.run("ln -sf /etc/hostname /tmp/a-link")
    assert link.ok
    linked = sb.files.stat("/tmp/a-link")
    assert (linked.type, linked.target) == ("symlink", "/etc/hostname")


def test_mkdir(sb: Sandbox) -> None:
    made = sb.files.mkdir("/made/x/y")
    assert (made.path, made.type) == ("/made/x/y", "dir")
    assert sb.run("test -d /made/x/y").ok
    # Idempotent for an existing directory.
    assert sb.files.mkdir("/made/x/y").type == "dir"
    assert sb.files.mkdir("/made/z", parents=False).type == "dir"
    with pytest.raises(NotFoundError):
        sb.files.mkdir("/nowhere/a/b", parents=False)
    sb.files.write("/made/file", "f")
    with pytest.raises(ConflictError):
        sb.files.mkdir("/made/file")


def test_remove_files_and_directories(sb: Sandbox) -> None:
    sb.files.write("/rm/dir/inner/file.txt", "x")
    sb.files.write("/rm/single.txt", "x")
    sb.files.mkdir("/rm/empty")

    sb.files.remove("/rm/single.txt")
    assert not sb.files.exists("/rm/single.txt")
    sb.files.remove("/rm/empty")
    assert not sb.files.exists("/rm/empty")

    with pytest.raises(ConflictError, match="recursive"):
        sb.files.remove("/rm/dir")
    assert sb.files.exists("/rm/dir/inner/file.txt")

    sb.files.remove("/rm/dir", recursive=True)
    assert not sb.files.exists("/rm/dir")
    assert sb.run("test -e /rm/dir").exit_code == 1
    with pytest.raises(NotFoundError):
        sb.files.remove("/rm/dir")


def test_missing_paths_are_not_found(sb: Sandbox) -> None:
    for call in (
        lambda: sb.files.read_bytes("/no/such/file"),
        lambda: sb.files.read_text("/tmp/missing.txt"),
        lambda: sb.files.stat("/tmp/missing.txt"),
        lambda: sb.files.list("/no/such/dir"),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert sb.files.exists("/etc/hostname")
    assert not sb.files.exists("/tmp/missing.txt")


def test_wrong_kinds_and_relative_paths_are_invalid(sb: Sandbox) -> None:
    with pytest.raises(InvalidArgumentError, match="directory"):
        sb.files.read_bytes("/etc")
    with pytest.raises(InvalidArgumentError):
        sb.files.list("/etc/hostname")
    for call in (
        lambda: sb.files.write("relative/x.txt", "x"),
        lambda: sb.files.read_text("etc/hostname"),
        lambda: sb.files.stat("tmp"),
        lambda: sb.files.list("."),
        lambda: sb.files.mkdir("a/b"),
        lambda: sb.files.remove("tmp"),
    ):
        with pytest.raises(InvalidArgumentError, match="absolute"):
            call()
    assert not sb.run("test -e /relative").ok


def test_200_mb_file_in_and_out_without_server_memory_growth(
    server: LiveServer, sb: Sandbox, tmp_path: Path
) -> None:
    assert server.proc is not None
    size = 200 * 1024 * 1024
    source = tmp_path / "big.bin"
    expected = random_file(source, size)
    back = tmp_path / "back.bin"

    with RssSampler(server.proc.pid) as rss:
        with source.open("rb") as f:
            info = sb.files.write("/data/big.bin", f)
        assert info.size_bytes == size
        inside = sb.run("sha256sum /data/big.bin").stdout.split()[0]
        assert inside == expected
        assert sb.files.read_to("/data/big.bin", back) == size
    assert sha256_file(back) == expected
    assert rss.growth_mib < 100, (
        f"server RSS grew by {rss.growth_mib:.0f} MiB moving a 200 MiB file "
        f"(from {rss.baseline_kib // 1024} to {rss.peak_kib // 1024} MiB)"
    )
    sb.files.remove("/data/big.bin")
