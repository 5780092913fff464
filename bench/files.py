"""The file-verb figures of ``make bench`` (``--only files``):

- watch event latency: a write inside the sandbox to its event at the SDK client
  (``files.watch``), against raw inotify on the host: the same bash loop writing into a
  host directory that this process watches with inotify(7) directly. The baseline is the
  kernel's floor with no gVisor, agent, server or HTTP in the way. Each write is stamped
  with bash's ``$EPOCHREALTIME`` just before it happens (no process is spawned for the
  stamp); gVisor reads the host's clock, so the two stamps compare.
- a 100 MB download through a signed URL (plain httpx, no API key) against the API's own
  download (``files.read_to``) of the same file, in turns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from stockade import Sandbox

from .access import Row, Timer, _in_turns

MB = 1024 * 1024
# Reads a number per line and writes file f<number>, printing the number and the time.
_WRITER = 'while read n; do t=$EPOCHREALTIME; echo x > "$1/f$n"; echo "$n $t"; done'
_IN_CREATE = 0x100
_EVENT = struct.Struct("iIII")


def _stamp(line: str, n: int) -> float:
    got, stamp = line.split()
    assert int(got) == n, (got, n)
    return float(stamp.replace(",", "."))  # $EPOCHREALTIME follows the locale's separator


def _sandbox_latencies(sb: Sandbox, runs: int) -> list[float]:
    sb.run("rm -rf /tmp/wbench && mkdir -p /tmp/wbench", check=True)
    writer = sb.exec("bash", "-c", _WRITER, "bash", "/tmp/wbench")
    out: list[float] = []
    try:
        with sb.files.watch("/tmp/wbench") as events:
            for n in range(runs + 2):
                writer.stdin.write(f"{n}\n")
                for event in events:
                    if event.type == "create" and event.path == f"/tmp/wbench/f{n}":
                        break
                received = time.time()
                stamp = _stamp(writer.stdout.readline(), n)
                if n >= 2:  # two warm-up writes
                    out.append(received - stamp)
    finally:
        writer.kill()
    return out


def _host_latencies(runs: int) -> list[float]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    directory = Path(tempfile.mkdtemp(prefix="stockade-wbench-"))
    fd = libc.inotify_init1(os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    writer = None
    try:
        assert libc.inotify_add_watch(fd, str(directory).encode(), _IN_CREATE) >= 0
        writer = subprocess.Popen(
            ["bash", "-c", _WRITER, "bash", str(directory)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        assert writer.stdin is not None and writer.stdout is not None
        out: list[float] = []
        for n in range(runs + 2):
            writer.stdin.write(f"{n}\n")
            writer.stdin.flush()
            want = f"f{n}".encode()
            seen = False
            while not seen:
                select.select([fd], [], [], 10)
                data = os.read(fd, 65536)
                received = time.time()
                offset = 0
                while offset < len(data):
                    _, _, _, length = _EVENT.unpack_from(data, offset)
                    name = data[offset + 16 : offset + 16 + length].rstrip(b"\0")
                    seen = seen or name == want
                    offset += 16 + length
            stamp = _stamp(writer.stdout.readline(), n)
            if n >= 2:
                out.append(received - stamp)
        return out
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()
        os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)


def file_rows(image: str, runs: int, timed: Timer) -> list[Row]:
    rows: list[Row] = []
    sb = Sandbox.create(image=image, timeout=900)
    try:
        rows.append(
            ("watch event latency (write → event)", _sandbox_latencies(sb, runs),
             _host_latencies(runs), "raw inotify")
        )  # fmt: skip
        sb.run("head -c 104857600 /dev/urandom > /tmp/big.bin", check=True)
        url = sb.files.download_url("/tmp/big.bin", expires=3600)
        sink = Path(tempfile.mkdtemp(prefix="stockade-fbench-")) / "out.bin"
        plain = httpx.Client(timeout=300)

        def signed() -> None:
            with plain.stream("GET", url) as response, sink.open("wb") as f:
                response.raise_for_status()
                for chunk in response.iter_bytes():
                    f.write(chunk)
            assert sink.stat().st_size == 100 * MB

        def api() -> None:
            assert sb.files.read_to("/tmp/big.bin", sink) == 100 * MB

        turns = min(runs, 10)
        ours, theirs = _in_turns(timed, signed, api, turns)
        rows.append(("download 100 MB: signed URL", ours, theirs, "API download"))
        plain.close()
        shutil.rmtree(sink.parent, ignore_errors=True)
    finally:
        sb.terminate()
    return rows


def file_legend() -> str:
    return (
        "\nfiles: watch event latency = a write in the sandbox (stamped by bash's\n"
        "$EPOCHREALTIME just before it) to its create event at the SDK client; raw inotify =\n"
        "the same writer on the host, watched with inotify(7) in this process. Signed URL =\n"
        "GET of files.download_url() with plain httpx and no API key; API download =\n"
        "files.read_to() of the same file, in turns."
    )
