"""A `stockade serve` of the benchmark's own, on a temporary data directory."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


class Server:
    def __init__(
        self,
        work: Path,
        *,
        extra_args: tuple[str, ...] = (),
        port_offset: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.token = "sk_bench_" + secrets.token_hex(8)
        self.port = 7900 + os.getpid() % 90 + port_offset
        self.data = work / "data"
        self.log = open(work / "server.log", "wb")  # noqa: SIM115
        env = {**os.environ, **(env or {}), "STOCKADE_TOKEN": self.token}
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "stockade"), "serve",
             "--port", str(self.port), "--data-dir", str(self.data), *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(600):
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        if not port_offset:
            os.environ["STOCKADE_URL"] = self.url
            os.environ["STOCKADE_TOKEN"] = self.token

    def set_pool(self, image: str, size: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        httpx.put(f"{self.url}/v1/pools/{image}", json={"size": size}, headers=headers)

    def wait_pools_full(self, timeout: float = 120.0) -> None:
        """Wait until every pool has as many sandboxes ready as its size."""
        headers = {"Authorization": f"Bearer {self.token}"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pools = httpx.get(f"{self.url}/v1/pools", headers=headers).json()["pools"]
            if all(p["ready"] >= p["size"] for p in pools):
                return
            time.sleep(0.05)

    def runsc(self) -> str:
        line = next(
            x for x in (self.data.parent / "server.log").read_text().splitlines() if "runsc:" in x
        )
        return line.split("runsc:")[1].strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
