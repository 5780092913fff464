"""What a kernel (code in the sandbox) can make the server hold, and which python3 the
server's own helpers run."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any, cast

import pytest
import zmq.asyncio

from stockade.server.service.code.kernel import LANGUAGES, Kernel, image_python, message_size
from stockade.server.service.code.relay import MessageGuard, MessageTooLarge, UnixRelay
from stockade.server.service.execs import ExecService

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GREETING = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x01" + b"NULL" + bytes(16) + bytes(32)


def _frame(body: bytes, *, more: bool = False, command: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) > 255:
        return bytes([flags | 2]) + len(body).to_bytes(8, "big") + body
    return bytes([flags, len(body)]) + body


def _message(*parts: bytes) -> bytes:
    return b"".join(_frame(p, more=i < len(parts) - 1) for i, p in enumerate(parts))


# ------------------------------------------------------------------ the relay's guard


def test_the_guard_passes_messages_within_the_limit_however_they_are_cut() -> None:
    stream = GREETING + _frame(b"\x05READY", command=True)
    stream += _message(b"<IDS|MSG>", b"sig", b"{}", b"{}", b"{}", b"x" * 900)
    stream += _message(b"y" * 1000) * 50  # many messages: only each one counts
    guard = MessageGuard(1000 + 64)
    guard.feed(stream)
    byte_by_byte = MessageGuard(1000 + 64)
    for i in range(len(stream)):
        byte_by_byte.feed(stream[i : i + 1])


def test_the_guard_stops_a_message_of_many_small_parts() -> None:
    # Each part is tiny (ZeroMQ's own per-frame limit never trips), their sum is not.
    guard = MessageGuard(100_000)
    guard.feed(GREETING)
    with pytest.raises(MessageTooLarge):
        for _ in range(10_000):
            guard.feed(_frame(b"p" * 100, more=True))


def test_the_guard_stops_a_large_frame_at_its_header() -> None:
    guard = MessageGuard(1 << 20)
    guard.feed(GREETING)
    with pytest.raises(MessageTooLarge):
        guard.feed(bytes([2]) + (1 << 40).to_bytes(8, "big"))


# ------------------------------------------------------------ the image's python3


def _layer(root: Path, *files: str) -> str:
    for f in files:
        path = root / f.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def test_image_python_follows_the_image_path_in_its_layers(tmp_path: Path) -> None:
    base = _layer(tmp_path / "base", "/usr/bin/python3")
    assert image_python([base], PATH) == "/usr/bin/python3"
    top = _layer(tmp_path / "top", "/usr/local/bin/python3")
    assert image_python([top, base], PATH) == "/usr/local/bin/python3"
    venv = _layer(tmp_path / "venv", "/opt/venv/bin/python3")
    assert image_python([venv, base], "/opt/venv/bin:" + PATH) == "/opt/venv/bin/python3"
    # Relative entries (the working directory, writable in the sandbox) never count.
    cwd = _layer(tmp_path / "cwd", "/bin/python3")
    assert image_python([cwd, base], ".:bin:" + PATH) == "/usr/bin/python3"
    assert image_python([str(tmp_path / "empty")], PATH) == "/usr/bin/python3"


def test_image_python_honours_whiteouts(tmp_path: Path) -> None:
    base = _layer(tmp_path / "base", "/usr/local/bin/python3", "/usr/bin/python3")
    top = tmp_path / "top" / "usr" / "local" / "bin"
    top.mkdir(parents=True)
    (top / ".wh.python3").touch()
    assert image_python([str(tmp_path / "top"), base], PATH) == "/usr/bin/python3"
    if os.geteuid() == 0:  # an overlay whiteout is a 0/0 character device
        top2 = tmp_path / "top2" / "usr" / "local" / "bin"
        top2.mkdir(parents=True)
        os.mknod(top2 / "python3", stat.S_IFCHR | 0o600, os.makedev(0, 0))
        assert image_python([str(tmp_path / "top2"), base], PATH) == "/usr/bin/python3"


def test_image_python_does_not_follow_links_out_of_the_layer(tmp_path: Path) -> None:
    host = _layer(tmp_path / "host", "/bin/python3")
    layer = tmp_path / "layer"
    _layer(layer, "/usr/bin/python3")
    (layer / "usr" / "local").mkdir(parents=True)
    (layer / "usr" / "local" / "bin").symlink_to(Path(host) / "bin")  # absolute, on the host
    assert image_python([str(layer)], PATH) == "/usr/bin/python3"


class _Recorder:
    """An ExecService whose start records the argv and refuses to run anything."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    async def start(self, sandbox_id: str, argv: list[str], **kw: Any) -> Any:
        self.argvs.append(list(argv))
        raise RuntimeError("not here")


async def test_kernel_helpers_run_the_absolute_python(tmp_path: Path) -> None:
    recorder = _Recorder()
    context = zmq.asyncio.Context()
    try:
        kernel = Kernel(
            cast(ExecService, recorder), "sb-1", LANGUAGES["python"], None,
            zmq_context=context, runtime_root=tmp_path, image="python",
            python="/opt/img/bin/python3",
        )  # fmt: skip
        with pytest.raises(RuntimeError):
            await kernel.start()
        with pytest.raises(RuntimeError):
            await kernel._kill_tree(42)
        relay = UnixRelay(cast(ExecService, recorder), "sb-1", 5555, tmp_path / "r",
                          python="/opt/img/bin/python3")  # fmt: skip
        with pytest.raises(RuntimeError):
            await relay._pump(cast(Any, None), cast(Any, None))
    finally:
        context.term()
    assert [argv[0] for argv in recorder.argvs] == ["/opt/img/bin/python3"] * 3


# ------------------------------------------------------------- the kernel's queues


class _Client:
    """An iopub channel that brings one large message after another, for ever."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sent = 0

    async def get_iopub_msg(self) -> dict[str, Any]:
        await asyncio.sleep(0)
        self.sent += 1
        return {
            "msg_type": "stream",
            "parent_header": {"msg_id": "run-1"},
            "content": {"name": "stdout", "text": self.text},
        }


async def test_queued_kernel_output_is_bounded(tmp_path: Path) -> None:
    context = zmq.asyncio.Context()
    limit = 1 << 20
    try:
        kernel = Kernel(
            cast(ExecService, None), "sb-1", LANGUAGES["python"], None,
            zmq_context=context, runtime_root=tmp_path, image="python", queue_bytes=limit,
        )  # fmt: skip
        client = _Client("x" * 100_000)
        kernel._current = "run-1"
        reader = asyncio.create_task(kernel._read_iopub(cast(Any, client)))
        for _ in range(200):
            await asyncio.sleep(0)
        size = message_size(await client.get_iopub_msg())
        # A reader that takes nothing: the queue fills to the bound and stops there.
        assert kernel._iopub_bytes <= limit
        assert kernel._iopub.qsize() == limit // size
        sent = client.sent
        for _ in range(50):
            await asyncio.sleep(0)
        assert client.sent == sent  # the channel is not read while the queue is full
        # Taking messages makes room again.
        for _ in range(3):
            assert (await kernel._next(None)) is not None
        for _ in range(50):
            await asyncio.sleep(0)
        assert client.sent > sent and kernel._iopub_bytes <= limit
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
    finally:
        context.term()


async def test_the_launcher_line_is_all_the_kernel_keeps_of_its_stdout(tmp_path: Path) -> None:
    context = zmq.asyncio.Context()
    try:
        kernel = Kernel(
            cast(ExecService, None), "sb-1", LANGUAGES["python"], None,
            zmq_context=context, runtime_root=tmp_path, image="python",
        )  # fmt: skip
        for _ in range(1000):  # a launcher that never prints its PID line
            kernel._note_pid(b"z" * 65536)
        assert len(kernel._stdout) <= 65536 + 64
    finally:
        context.term()
