"""Process over the WebSocket transport (asyncio), against a real WebSocket server."""

from __future__ import annotations

import asyncio

import pytest

from stockade import AsyncSandbox, CommandTimeoutError, StockadeConnectionError
from tests.unit.fakes import BIG_STDERR


async def test_exec_read_and_wait(asb: AsyncSandbox) -> None:
    p = await asb.exec("echo", "hi")
    assert await p.stdout.read() == "hi\n"
    assert await p.wait() == 0


async def test_async_iteration_and_stdin(asb: AsyncSandbox) -> None:
    async with await asb.exec("cat") as p:
        await p.stdin.write("a\nb\n")
        await p.stdin.drain()
        await p.stdin.close()
        assert [line async for line in p.stdout] == ["a\n", "b\n"]
        assert await p.wait() == 0


async def test_concurrent_readers_no_deadlock(asb: AsyncSandbox) -> None:
    p = await asb.exec("noisy")
    out, err = await asyncio.gather(p.stdout.read(), p.stderr.read_bytes())
    assert out == "begin\ndone\n"
    assert len(err) == BIG_STDERR
    assert await p.wait() == 0


async def test_only_stdout_while_stderr_floods(asb: AsyncSandbox) -> None:
    p = await asb.exec("noisy")
    assert [line async for line in p.stdout] == ["begin\n", "done\n"]
    assert await p.wait() == 0


async def test_iter_bytes(asb: AsyncSandbox) -> None:
    p = await asb.exec("echo", "x")
    assert b"".join([chunk async for chunk in p.stdout.iter_bytes()]) == b"x\n"


async def test_many_processes_concurrently(asb: AsyncSandbox) -> None:
    async def one(i: int) -> str:
        p = await asb.exec("echo", str(i))
        text = await p.stdout.read()
        await p.wait()
        return text

    assert await asyncio.gather(*(one(i) for i in range(10))) == [f"{i}\n" for i in range(10)]


async def test_timeout_and_oom(asb: AsyncSandbox) -> None:
    p = await asb.exec("slow", timeout=2.5)
    with pytest.raises(CommandTimeoutError, match=r"timeout=2\.5s"):
        await p.wait()
    p = await asb.exec("hog")
    assert await p.wait() == 137 and p.oom


async def test_poll_signal_kill(asb: AsyncSandbox) -> None:
    p = await asb.exec("sleep")
    assert await p.poll() is None
    await p.terminate()
    assert await p.wait() == 143


async def test_cut_stream(asb: AsyncSandbox) -> None:
    p = await asb.exec("drop")
    with pytest.raises(StockadeConnectionError):
        await p.wait()


async def test_closing_the_process_closes_the_socket(asb: AsyncSandbox) -> None:
    p = await asb.exec("sleep")
    await p.aclose()
    with pytest.raises(StockadeConnectionError):
        await p.wait()
