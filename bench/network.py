"""The network figures of ``make bench``: what a sandbox's network costs.

- create → first output on the networked server against a server with ``--no-network``
  (the difference is the namespace, veth and nftables set-up, plus gVisor's netstack);
- an HTTP GET through the server's port proxy against the same GET straight from the host
  to the sandbox's address;
- a 100 MB download through the proxy against the same download direct.

Traffic stays on this machine: host ↔ sandbox only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from stockade import Sandbox

from .server import Server

Row = tuple[str, list[float], list[float], str]
_BIG = 100 * 1024 * 1024


def network_rows(
    work: Path, runs: int, timed: Callable[[Callable[[], object], int], list[float]]
) -> list[Row]:
    rows: list[Row] = []

    created: list[Sandbox] = []

    def create_and_echo(**kw: str) -> Callable[[], object]:
        def go() -> None:
            sb = Sandbox.create(image="debian", timeout=120, **kw)  # type: ignore[arg-type]
            p = sb.exec("echo", "hi")
            assert p.stdout.readline() == "hi\n"
            p.wait()
            created.append(sb)

        return go

    def terminate_created() -> None:
        for sb in created:
            sb.terminate()
        created.clear()

    (work / "nonet").mkdir()
    plain = Server(work / "nonet", extra_args=("--no-network",), port_offset=1)
    try:
        networked = timed(create_and_echo(), runs)
        terminate_created()
        bare = timed(create_and_echo(url=plain.url, token=plain.token), runs)
        terminate_created()
    finally:
        plain.stop()
    rows.append(("create → first output, networked", networked, bare, "--no-network"))

    sb = Sandbox.create(image="python", timeout=900, ports=[8000])
    try:
        sb.run("mkdir -p /srv && head -c 104857600 /dev/zero > /srv/big && echo ok > /srv/small")
        sb.run("cd /srv && setsid nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
        ip = sb.info().network.ip  # type: ignore[union-attr]
        direct, proxied = f"http://{ip}:8000/", sb.tunnel(8000)
        headers = {"X-Stockade-Access-Token": sb.access_token}
        with httpx.Client(timeout=60, trust_env=False) as client:
            for _ in range(100):
                try:
                    client.get(direct + "small").raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)

            def get(url: str) -> Callable[[], object]:
                return lambda: client.get(url + "small", headers=headers).raise_for_status()

            def download(url: str) -> Callable[[], object]:
                def go() -> None:
                    n = 0
                    with client.stream("GET", url + "big", headers=headers) as r:
                        for chunk in r.iter_raw(1 << 20):
                            n += len(chunk)
                    assert n == _BIG, n

                return go

            rows.append(("HTTP GET through the port proxy", timed(get(proxied), runs),
                         timed(get(direct), runs), "direct"))  # fmt: skip
            n = max(3, runs // 4)
            rows.append(("100 MB download through the proxy", timed(download(proxied), n),
                         timed(download(direct), n), "direct"))  # fmt: skip
    finally:
        sb.terminate()
    return rows
