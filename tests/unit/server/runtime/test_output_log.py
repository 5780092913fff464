"""output.log: copied from the sandbox's FIFO with a cap that keeps the tail, read back in
bounded chunks, across rotations."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from stockade.server.config import ConfigError, ServerConfig
from stockade.server.runtime import output_log
from stockade.server.runtime.output_log import OutputLog, read_log, read_tail

CAP = 64 * 1024


def _sizes(directory: Path) -> tuple[int, int]:
    return tuple(  # type: ignore[return-value]
        (directory / n).stat().st_size if (directory / n).exists() else 0
        for n in ("output.log", "output.log.1")
    )


async def _collect(directory: Path) -> bytes:
    async def ended() -> bool:
        return False

    return b"".join([c async for c in read_log(directory, follow=False, alive=ended)])


def test_write_keeps_the_tail_within_the_cap(tmp_path: Path) -> None:
    out = OutputLog(tmp_path, CAP)
    data = b"".join(b"%08d\n" % i for i in range(100_000))  # 900 kB, 14 times the cap
    for i in range(0, len(data), 4000):
        out.write(data[i : i + 4000])
    current, old = _sizes(tmp_path)
    assert current <= CAP // 2 and old == CAP // 2
    assert current + old <= CAP
    kept = (tmp_path / "output.log.1").read_bytes() + (tmp_path / "output.log").read_bytes()
    assert data.endswith(kept) and len(kept) >= CAP // 2
    assert read_tail(tmp_path, 100) == data[-100:]
    assert read_tail(tmp_path, CAP) == kept  # across both files, no more than there is


def test_one_write_larger_than_the_cap(tmp_path: Path) -> None:
    out = OutputLog(tmp_path, CAP)
    data = os.urandom(10 * CAP)
    out.write(data)
    assert sum(_sizes(tmp_path)) <= CAP
    assert read_tail(tmp_path, CAP).endswith(data[-CAP // 4 :])


def test_the_cap_has_a_floor(tmp_path: Path) -> None:
    assert OutputLog(tmp_path, 10).cap == output_log.MIN_MAX_LOG_BYTES


async def test_copies_the_fifo_and_reads_back_across_rotations(tmp_path: Path) -> None:
    out = OutputLog(tmp_path, CAP)
    writer = out.new_pipe()  # what the sandbox gets as its stderr
    try:
        sent = b""
        for i in range(40):  # 40 x 8 KiB: five rotations
            chunk = bytes([65 + i % 26]) * 8192
            os.write(writer, chunk)
            sent += chunk
            await asyncio.sleep(0)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if read_tail(tmp_path, 8192) == sent[-8192:]:
                break
        assert sum(_sizes(tmp_path)) <= CAP
        got = await _collect(tmp_path)
        assert sent.endswith(got) and len(got) >= CAP // 2
    finally:
        os.close(writer)
    # Every writer gone (the sandbox ended): the copier stops by itself.
    for _ in range(50):
        await asyncio.sleep(0.01)
        if not out.reading:
            break
    assert not out.reading
    out.close()


async def test_each_readiness_callback_copies_at_most_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(output_log, "_READ_BUDGET", 4096)
    out = OutputLog(tmp_path, 1 << 20)
    writer = out.new_pipe()
    try:
        os.write(writer, b"z" * 20000)
        out._on_readable()
        assert _sizes(tmp_path)[0] == 4096
        out.drain()  # before reading a tail for an error: all of it
        assert _sizes(tmp_path)[0] == 20000
    finally:
        os.close(writer)
        out.close()


async def test_a_restarted_server_attaches_to_the_fifo(tmp_path: Path) -> None:
    first = OutputLog(tmp_path, CAP)
    writer = first.new_pipe()
    try:
        os.write(writer, b"before\n")
        first.close()  # the server stops; the sandbox keeps its end
        os.write(writer, b"meanwhile\n")
        second = OutputLog(tmp_path, CAP)
        assert second.attach()
        second.drain()
        assert (tmp_path / "output.log").read_bytes() == b"before\nmeanwhile\n"
        second.close()
    finally:
        os.close(writer)
    (tmp_path / "output.pipe").unlink()
    assert not OutputLog(tmp_path, CAP).attach()  # an older sandbox without a FIFO


async def test_follow_reads_on_through_a_rotation(tmp_path: Path) -> None:
    out = OutputLog(tmp_path, CAP)
    live = True

    async def alive() -> bool:
        return live

    out.write(b"a" * 1000)
    chunks: list[bytes] = []

    async def follow() -> None:
        async for chunk in read_log(tmp_path, follow=True, alive=alive):
            chunks.append(chunk)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.3)
    out.write(b"b" * (CAP // 2 - 1000))  # fills output.log to the brim
    out.write(b"c" * 1000)  # rotates: output.log.1 now holds the a's and b's
    await asyncio.sleep(0.5)
    live = False
    await asyncio.wait_for(task, 5)
    got = b"".join(chunks)
    assert got == b"a" * 1000 + b"b" * (CAP // 2 - 1000) + b"c" * 1000


def test_max_log_bytes_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_TOKEN", "t")
    monkeypatch.setattr("stockade.server.config.find_runsc", lambda cache: "/bin/true")
    monkeypatch.delenv("STOCKADE_MAX_LOG_BYTES", raising=False)

    def load(**kw: Any) -> ServerConfig:
        return ServerConfig.load(data_dir=tmp_path / "d", cache_dir=tmp_path / "c", **kw)

    assert load().max_log_bytes == 10 * 1024 * 1024
    assert load(max_log_bytes=1 << 20).max_log_bytes == 1 << 20
    monkeypatch.setenv("STOCKADE_MAX_LOG_BYTES", "200000")
    assert load().max_log_bytes == 200000
    assert load(max_log_bytes=1 << 20).max_log_bytes == 1 << 20  # the flag wins
    monkeypatch.setenv("STOCKADE_MAX_LOG_BYTES", "lots")
    with pytest.raises(ConfigError, match="STOCKADE_MAX_LOG_BYTES"):
        load()
    with pytest.raises(ConfigError, match="at least"):
        load(max_log_bytes=100)
