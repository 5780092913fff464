"""Bounds on what a sandbox can make the server hold, against real runsc: the entrypoint's
output, directory listings, the agent's channel, and the interpreter of code kernels."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stockade import CodeContext, Sandbox
from stockade.errors import SandboxTerminatedError, StockadeError

from .conftest import LiveServer
from .helpers import wait_for

pytestmark = [pytest.mark.runsc, pytest.mark.timeout(300, func_only=True)]

MiB = 1024 * 1024
LOG_CAP = 10 * MiB  # the server's default --max-log-bytes


def _wait_ended(http: httpx.Client, sandbox_id: str, within: float) -> dict[str, object]:
    def ended() -> dict[str, object] | None:
        info: dict[str, object] = http.get(f"/v1/sandboxes/{sandbox_id}").raise_for_status().json()
        return info if info["status"] not in ("starting", "running") else None

    return wait_for(ended, timeout=within, interval=0.5, what=f"sandbox {sandbox_id} to end")


def test_a_gigabyte_of_output_leaves_a_capped_log_with_its_tail(
    server: LiveServer, http: httpx.Client
) -> None:
    script = "head -c 1073741824 /dev/zero | tr '\\0' 'x'; echo; echo the-very-end"
    sb = Sandbox.create(image="debian", entrypoint=["sh", "-c", script], timeout=600)
    info = _wait_ended(http, sb.id, 240)
    assert (info["reason"], info["exit_code"]) == ("exited", 0), info
    directory = server.data_dir / "sandboxes" / sb.id
    sizes = [(directory / n).stat().st_size for n in ("output.log", "output.log.1")]
    assert sizes[0] <= LOG_CAP and sum(sizes) <= LOG_CAP, sizes
    assert sum(sizes) >= LOG_CAP // 2  # the tail is kept, not just the last bytes
    logs = http.get(f"/v1/sandboxes/{sb.id}/logs").raise_for_status().content
    assert len(logs) == sum(sizes)
    assert logs.endswith(b"x\nthe-very-end\n") and set(logs[:-14]) == {ord("x")}


def test_logs_follow_a_running_sandbox_through_the_cap(
    server: LiveServer, http: httpx.Client
) -> None:
    # 24 MiB in lines of 256 KiB while a client follows: it reads on through the rotations
    # and sees the end.
    script = (
        "i=0; while [ $i -lt 96 ]; do head -c 262143 /dev/zero | tr '\\0' 'y'; echo; "
        "i=$((i+1)); done; echo done-following"
    )
    sb = Sandbox.create(image="debian", entrypoint=["sh", "-c", script], timeout=600)
    got = bytearray()
    with http.stream("GET", f"/v1/sandboxes/{sb.id}/logs", params={"follow": "true"}) as r:
        for chunk in r.iter_bytes():
            got += chunk
            del got[: max(0, len(got) - 2 * LOG_CAP)]  # the test's own memory stays bounded
    assert got.endswith(b"y\ndone-following\n")
    _wait_ended(http, sb.id, 60)
    directory = server.data_dir / "sandboxes" / sb.id
    assert sum((directory / n).stat().st_size for n in ("output.log", "output.log.1")) <= LOG_CAP


@pytest.fixture(scope="module")
def crowded() -> Iterator[Sandbox]:
    """A sandbox with a directory of 100 000 files whose 200-byte names are not UTF-8."""
    with Sandbox.create(image="python", disk=4096, timeout=900) as sb:
        made = sb.run(
            ["python3", "-c",
             "import os\n"
             "os.mkdir(b'/d')\n"
             "tail = bytes(range(0x80, 0x80 + 96)) * 2\n"
             "for i in range(100_000):\n"
             "    os.close(os.open(b'/d/%06d-' % i + tail, os.O_CREAT | os.O_WRONLY, 0o644))\n"
             "print('made')"],
            timeout=240,
        )  # fmt: skip
        assert made.stdout == "made\n", made.stderr
        yield sb


def test_a_listing_of_100000_long_names_answers_bounded(
    crowded: Sandbox, http: httpx.Client
) -> None:
    t0 = time.monotonic()
    r = http.get(f"/v1/sandboxes/{crowded.id}/files/list", params={"path": "/d"})
    took = time.monotonic() - t0
    r.raise_for_status()
    body = r.json()
    assert body["truncated"] is True
    entries = body["entries"]
    # Each name is 6 + 192 bytes, sent escaped (six characters a byte) twice (name and path):
    # 8 MiB of listing holds a few thousand of them, never all 100 000.
    assert 1000 < len(entries) < 10_000
    assert len(r.content) < 32 * MiB
    names = [e["name"] for e in entries]
    assert names == sorted(names)
    first = names[0].encode("utf-8", "surrogateescape")
    assert first == b"000000-" + bytes(range(0x80, 0x80 + 96)) * 2
    assert took < 60
    # The sandbox is fine, and so is its agent channel.
    assert crowded.run(["echo", "still here"]).stdout == "still here\n"
    small = http.get(f"/v1/sandboxes/{crowded.id}/files/list", params={"path": "/"}).json()
    assert small["truncated"] is False and "d" in [e["name"] for e in small["entries"]]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_an_agent_channel_fed_garbage_fails_the_sandbox(
    server: LiveServer, http: httpx.Client
) -> None:
    bystander = Sandbox.create(image="debian", timeout=300)
    sb = Sandbox.create(image="debian", timeout=300)
    try:
        assert sb.run(["true"]).exit_code == 0  # its link is up
        directory = server.data_dir / "sandboxes" / sb.id
        pid = int((directory / "pid").read_text())
        # Code in the sandbox writes to the agent's own output channel (its fd 1); the
        # command's own session may end with the link.
        with contextlib.suppress(StockadeError):
            sb.run(["sh", "-c", "printf 'this is no frame' > /proc/1/fd/1"])
        info = _wait_ended(http, sb.id, 30)
        assert (info["status"], info["reason"]) == ("failed", "agent_protocol"), info
        assert "not a frame" in str(info["message"])
        # Its runsc sandbox is gone, and only its output is kept.
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
        left = {p.name for p in directory.iterdir()} if directory.exists() else set()
        assert left <= {"output.log", "output.log.1"}, left
        with pytest.raises(SandboxTerminatedError, match="agent_protocol"):
            sb.run(["true"])
        assert bystander.run(["echo", "fine"]).stdout == "fine\n"
    finally:
        sb.terminate()
        bystander.terminate()


@pytest.fixture(scope="module")
def ci(server: LiveServer) -> Iterator[Sandbox]:
    with Sandbox.create(image="code-interpreter", memory=2048, timeout=1800) as sb:
        yield sb


def test_a_kernel_never_runs_a_python3_planted_earlier_on_path(ci: Sandbox) -> None:
    hostile = '#!/bin/sh\necho "$@" >> /tmp/hostile-python-ran\nexec /usr/bin/python3 "$@"\n'
    ci.files.write("/usr/local/bin/python3", hostile.encode())
    ci.run(["chmod", "755", "/usr/local/bin/python3"])
    # The sandbox's own PATH finds the planted one first...
    assert ci.run(["sh", "-c", "command -v python3"]).stdout == "/usr/local/bin/python3\n"
    ctx: CodeContext | None = ci.create_code_context()
    try:
        assert ctx is not None
        ex = ci.run_code("import sys; print(sys.executable)", context=ctx)
        assert ex.error is None, ex.error
        assert "".join(ex.logs.stdout).strip() == "/usr/bin/python3"
        # ...but neither the kernel, its watcher, its relays nor its shutdown used it.
        ci.remove_code_context(ctx)
        ctx = None
        assert not ci.files.exists("/tmp/hostile-python-ran")
    finally:
        if ctx is not None:
            ci.remove_code_context(ctx)


def test_exec_output_nobody_reads_holds_the_command_back(
    server: LiveServer, http: httpx.Client
) -> None:
    # 50 MB of output to clients that read none of it: the server passes on what the
    # connection takes and grants the agent no more, so the command waits on its pipe.
    size = 50_000_000
    with Sandbox.create(image="debian", timeout=300) as sb:
        argv = ["sh", "-c", f"head -c {size} /dev/zero; touch /tmp/all-written-ws"]
        ws = _unread_ws_exec(server, sb.id, argv)
        try:
            _assert_held_back(sb, size, "/tmp/all-written-ws")
        finally:
            ws.close()
        argv = ["sh", "-c", f"head -c {size + 1} /dev/zero; touch /tmp/all-written-ndjson"]
        with http.stream("POST", f"/v1/sandboxes/{sb.id}/exec", json={"argv": argv}) as r:
            assert r.status_code == 200
            _assert_held_back(sb, size + 1, "/tmp/all-written-ndjson")
        assert sb.run(["echo", "ok"]).stdout == "ok\n"


def _unread_ws_exec(server: LiveServer, sandbox_id: str, argv: list[str]) -> socket.socket:
    """Start an exec over a WebSocket spoken by hand, whose output nobody reads: a client
    library would take it in the background (websockets queues every frame it gets), and
    the small receive buffer keeps what the kernel takes in small too."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1/sandboxes/{sandbox_id}/exec/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key}\r\nAuthorization: Bearer {server.token}\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: no frame is read with it
        byte = sock.recv(1)
        assert byte, f"the server closed the connection: {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 101 "), head
    # The request, as a client's (masked) text frame.
    payload = json.dumps({"argv": argv}).encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def _written(sb: Sandbox, size: int) -> int | None:
    """How much the sandbox's ``head -c SIZE /dev/zero`` has written; None if none runs."""
    script = (
        "for p in /proc/[0-9]*; do "
        f"if [ \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" = 'head -c {size} /dev/zero ' ]; "
        "then sed -n 's/^wchar: //p' $p/io; fi; done"
    )
    found = sb.run(["sh", "-c", script]).stdout.split()
    return int(found[0]) if found else None


def _assert_held_back(sb: Sandbox, size: int, done: str) -> None:
    """The unread ``head -c SIZE`` runs, and is still held back well short of its end once
    as much output, started after it and read by a client, has got through to its end:
    the witness that it would have been done by then, had anything read it."""
    wait_for(lambda: _written(sb, size), timeout=30, what=f"`head -c {size}` to run")
    read = size + 2  # a command line of its own
    with sb.exec("head", "-c", str(read), "/dev/zero", timeout=120) as p:
        assert sum(len(chunk) for chunk in p.stdout.iter_bytes()) == read
        assert p.wait() == 0
    written = _written(sb, size)
    assert written is not None, "the unread command is gone (it ended, or was killed)"
    assert written < size // 2, f"it wrote {written} of {size} bytes that nobody read"
    assert not sb.files.exists(done)
