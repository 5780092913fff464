"""A real OCI registry (Debian's docker-registry) on loopback for the tests, and a runner for
the tools that build and push images to it (umoci, skopeo)."""

from __future__ import annotations

import io
import secrets
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .helpers import wait_for


def run_tool(*argv: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def start_registry(work: Path, name: str, storage: Path, auth: str = "") -> Registry:
    port = free_port()
    config = work / f"{name}.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n"
        "  maintenance:\n    uploadpurging:\n      enabled: false\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n" + auth
    )
    log = work / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["/usr/bin/docker-registry", "serve", str(config)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    registry = Registry(f"127.0.0.1:{port}", proc, log)

    def answers() -> bool | None:
        if proc.poll() is not None:
            raise AssertionError(f"registry {name} exited {proc.returncode}")
        try:
            status = httpx.get(f"http://{registry.host}/v2/", timeout=1).status_code
        except httpx.TransportError:
            return None
        return status in (200, 401) or None

    try:
        wait_for(answers, timeout=15, interval=0.05, what=f"registry {name} to answer")
    except AssertionError as exc:
        registry.stop()
        raise AssertionError(f"{exc}: {log.read_text()[-2000:]}") from None
    return registry


def opaque_layer(path: Path) -> Path:
    """A layer tar in which ``data/`` becomes opaque (hiding what lower layers put there)
    and holds one new file, ``data/new``. Written by hand: umoci never writes one."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("data", None), ("data/.wh..wh..opq", b""), ("data/new", b"new\n")):
            info = tarfile.TarInfo(name)
            info.mtime = int(time.time())
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return path
