"""sb.files: uploads stream, downloads stream, and the small verbs (sync and async)."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from stockade import AsyncSandbox, ConflictError, InvalidArgumentError, NotFoundError, Sandbox
from stockade._base import CHUNK_SIZE, sync_chunks
from tests.unit.fakes import FakeApi, error_body


def test_write_text_and_read_back(sb: Sandbox, api: FakeApi) -> None:
    info = sb.files.write("/app/x.txt", "hello")
    request = api.last("PUT")
    assert request.url.params["path"] == "/app/x.txt"
    assert request.headers["content-length"] == "5"
    assert (info.path, info.name, info.type, info.size_bytes, info.is_file) == (
        "/app/x.txt", "x.txt", "file", 5, True,
    )  # fmt: skip
    assert sb.files.read_text("/app/x.txt") == "hello"
    assert sb.files.read_bytes("/app/x.txt") == b"hello"


def test_write_streams_file_objects_and_iterators(sb: Sandbox, api: FakeApi) -> None:
    data = bytes(range(256)) * 20000  # 5 MB: several chunks
    sb.files.write("/big.bin", io.BytesIO(data))
    request = api.last("PUT")
    assert "content-length" not in request.headers  # sent chunked, never whole
    assert request.headers["transfer-encoding"] == "chunked"
    assert api.files[("sb-1", "/big.bin")] == data

    def pieces() -> Iterator[bytes]:
        yield b"ab"
        yield b"cd"

    sb.files.write("/it.bin", pieces())
    assert api.files[("sb-1", "/it.bin")] == b"abcd"


def test_file_objects_are_read_a_chunk_at_a_time() -> None:
    reads: list[int] = []

    class Source(io.BytesIO):
        def read(self, size: int | None = -1, /) -> bytes:
            reads.append(size if size is not None else -1)
            return super().read(size)

    chunks = list(sync_chunks(Source(b"x" * (CHUNK_SIZE * 2 + 1))))
    assert [len(c) for c in chunks] == [CHUNK_SIZE, CHUNK_SIZE, 1]
    assert set(reads) == {CHUNK_SIZE}  # never read() whole


def test_read_to_path_and_file(sb: Sandbox, api: FakeApi, tmp_path: Path) -> None:
    api.files[("sb-1", "/out.bin")] = b"\x00" * 3000
    target = tmp_path / "out.bin"
    assert sb.files.read_to("/out.bin", target) == 3000
    assert target.read_bytes() == b"\x00" * 3000
    sink = io.BytesIO()
    assert sb.files.read_to("/out.bin", sink) == 3000
    assert sink.getvalue() == b"\x00" * 3000


def test_read_to_missing_file_leaves_nothing(sb: Sandbox, tmp_path: Path) -> None:
    target = tmp_path / "missing.bin"
    with pytest.raises(NotFoundError, match="does not exist"):
        sb.files.read_to("/missing", target)
    assert not target.exists()


def test_reading_a_directory(sb: Sandbox) -> None:
    sb.files.mkdir("/d")
    with pytest.raises(InvalidArgumentError, match="is a dir"):
        sb.files.read_bytes("/d")


def test_list_stat_mkdir_remove_exists(sb: Sandbox, api: FakeApi) -> None:
    info = sb.files.mkdir("/app/d", parents=False)
    assert json.loads(api.last("POST").content) == {"path": "/app/d", "parents": False}
    assert info.is_dir and info.mode == 0o755
    sb.files.mkdir("/app")
    sb.files.write("/app/b.txt", b"b")
    sb.files.write("/app/a.txt", b"a")
    assert [e.name for e in sb.files.list("/app")] == ["a.txt", "b.txt", "d"]
    assert sb.files.stat("/app/a.txt").size_bytes == 1
    assert sb.files.exists("/app/a.txt")
    sb.files.remove("/app/a.txt")
    assert api.last("DELETE").url.params["recursive"] == "false"
    assert not sb.files.exists("/app/a.txt")
    api.errors[("DELETE", "/v1/sandboxes/sb-1/files")] = (
        409, error_body("conflict", "/app is not empty; pass recursive=true"),
    )  # fmt: skip
    with pytest.raises(ConflictError, match="not empty"):
        sb.files.remove("/app")
    sb.files.remove("/app", recursive=True)
    assert api.last("DELETE").url.params["recursive"] == "true"


def test_exists_on_an_unknown_sandbox_raises(sb: Sandbox, api: FakeApi) -> None:
    del api.sandboxes["sb-1"]
    with pytest.raises(NotFoundError, match="sandbox sb-1"):
        sb.files.exists("/x")


async def test_async_files(asb: AsyncSandbox, api: FakeApi, tmp_path: Path) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"one ", b"two"):
            yield piece

    await asb.files.write("/a.txt", pieces())
    assert await asb.files.read_bytes("/a.txt") == b"one two"
    await asb.files.write("/b.bin", io.BytesIO(b"z" * 10))
    assert await asb.files.read_to("/b.bin", tmp_path / "b.bin") == 10
    assert [e.name for e in await asb.files.list("/")] == ["a.txt", "b.bin"]
    assert await asb.files.exists("/a.txt")
    await asb.files.remove("/a.txt")
    assert not await asb.files.exists("/a.txt")
    assert (await asb.files.mkdir("/d")).is_dir
    assert (await asb.files.stat("/d")).type == "dir"
