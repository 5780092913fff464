"""A real Stockade server on loopback, driving real runsc, for the integration tests.

The server runs as a separate process (as users run it) with its own temporary data
directory, and shares the machine's image cache so base images are built once. Tests
talk to it through the SDK, the CLI or plain HTTP.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from stockade import Sandbox

from .helpers import force_cleanup, wait_for
from .netlab import stand_in_dns

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LiveServer:
    """A `stockade serve` subprocess; restartable without losing its data directory."""

    data_dir: Path
    token: str
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.data_dir.parent / "server.log"

    @property
    def tls(self) -> bool:
        """Whether it serves HTTPS (started with --tls-self-signed or --tls-cert)."""
        return any(arg in ("--tls-self-signed", "--tls-cert") for arg in self.extra_args)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self) -> None:
        env = {**os.environ, "STOCKADE_TOKEN": self.token}
        log = open(self.log_path, "ab")  # noqa: SIM115  (kept open for the child's lifetime)
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "stockade"), "serve",
                "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args,
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        log.close()
        proc = self.proc

        def answers() -> bool | None:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}:\n{self.log()}")
            try:
                # Whether it answers, not whom it is: the TLS tests check the certificate.
                answer = httpx.get(f"{self.url}/healthz", timeout=1, verify=not self.tls)
                return answer.status_code == 200 or None
            except httpx.HTTPError:
                return None

        try:
            wait_for(answers, timeout=60, what="the server to answer /healthz")
        except AssertionError as exc:
            raise RuntimeError(f"{exc}:\n{self.log()}") from None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def terminate_all(self) -> None:
        """End every sandbox this server knows (cleanup between test modules)."""
        try:
            with httpx.Client(
                base_url=self.url, headers=self.headers, timeout=60, verify=not self.tls
            ) as c:
                for sb in c.get("/v1/sandboxes", params={"status": "running"}).json()["sandboxes"]:
                    c.delete(f"/v1/sandboxes/{sb['id']}")
        except httpx.HTTPError:
            pass


@contextlib.contextmanager
def own_server(prefix: str) -> Iterator[LiveServer]:
    """A server of the caller's own (a module that restarts or kills it, so that no other
    module sees it go away), with its own data directory; everything it made is removed
    afterwards, even when a test left it stopped or broken."""
    _require_runsc_host()
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    server = LiveServer(data_dir=tmp / "data", token="sk_test_" + secrets.token_hex(8))
    try:
        server.start()
        yield server
    finally:
        try:
            if server.proc is None or server.proc.poll() is not None:
                server.proc = None
                server.start()  # a test may have left it stopped, or killed it
            server.terminate_all()
        except RuntimeError:
            pass  # it cannot start: force_cleanup removes what it left
        finally:
            server.stop()
            force_cleanup(tmp, server.data_dir)


def _require_runsc_host() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests drive runsc and must run as root (use `make test`)")


@pytest.fixture(scope="session", autouse=True)
def dns_upstream() -> Iterator[str]:
    """Every server under test forwards its sandboxes' DNS to a resolver on loopback, and
    builds images from package sources on this machine, so no test query leaves it."""
    # Image builds fetch packages only from the stand-in sources of netlab.py.
    settings = {
        "STOCKADE_BUILD_ALLOW_DOMAINS": "pypi.test,deb.test",
        "STOCKADE_PIP_INDEX_URL": "http://pypi.test/simple",
    }
    with stand_in_dns() as address:
        settings["STOCKADE_DNS_UPSTREAM"] = address
        saved = {k: os.environ.get(k) for k in settings}
        os.environ.update(settings)
        try:
            yield address
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


SHARED_CACHE = Path(os.environ.get("STOCKADE_CACHE_DIR") or "/var/cache/stockade")


def private_cache(root: Path) -> Path:
    """A cache directory of a test server's own: the machine's base images, agent and
    runsc (read-only to the tests) and wheelhouses (downloaded once for all), but its own
    layer store, builds and pulled images, so that tests neither leave images behind on
    the machine nor see the machine's. A built-in image (code-interpreter) is thus built
    again by each test server, from the machine's wheels."""
    cache = root / "cache"
    cache.mkdir()
    # `make test` has downloaded the wheels; without it the first server to need them does.
    (SHARED_CACHE / "wheelhouse").mkdir(parents=True, exist_ok=True)
    for part in ("images", "agent", "bin", "debs", "wheelhouse"):
        (cache / part).symlink_to(SHARED_CACHE / part)
    return cache


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    _require_runsc_host()
    tmp = Path(tempfile.mkdtemp(prefix="stockade-test-"))
    live = LiveServer(data_dir=tmp / "data", token="sk_test_" + secrets.token_hex(8))
    live.extra_args = ["--cache-dir", str(private_cache(tmp))]
    live.start()
    # The SDK and CLI under test find the server through the environment, as users do.
    saved = {k: os.environ.get(k) for k in ("STOCKADE_URL", "STOCKADE_TOKEN")}
    os.environ["STOCKADE_URL"] = live.url
    os.environ["STOCKADE_TOKEN"] = live.token
    try:
        yield live
    finally:
        live.terminate_all()
        live.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        force_cleanup(tmp, live.data_dir)


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    """A plain HTTP client with the admin token: what a curl user would send."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def sb(server: LiveServer) -> Iterator[Sandbox]:
    """One debian sandbox shared by a test module (for tests that don't disturb it)."""
    sandbox = Sandbox.create(image="debian", timeout=900)
    try:
        yield sandbox
    finally:
        sandbox.terminate()
