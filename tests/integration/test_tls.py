"""``stockade serve --tls-self-signed`` against real runsc: the SDK trusts the server's own
certificate through STOCKADE_CA_BUNDLE for requests, the exec WebSocket (WSS) and the port
proxy, and without it gets an error that names the fix."""

from __future__ import annotations

import secrets
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stockade import Client, Sandbox, StockadeConnectionError

from .conftest import LiveServer
from .helpers import force_cleanup, wait_for

pytestmark = pytest.mark.runsc


@pytest.fixture(scope="module")
def tls_server() -> Iterator[LiveServer]:
    tmp = Path(tempfile.mkdtemp(prefix="stockade-tls-"))
    live = LiveServer(
        data_dir=tmp / "data",
        token="sk_test_" + secrets.token_hex(8),
        extra_args=["--host", "127.0.0.1", "--tls-self-signed"],
    )
    live.start()
    try:
        yield live
    finally:
        live.terminate_all()
        live.stop()
        force_cleanup(tmp, live.data_dir)


def test_https_and_wss_with_a_self_signed_certificate(
    tls_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = tls_server.data_dir / "tls" / "cert.pem"
    url = tls_server.url
    assert url.startswith("https://")
    log = tls_server.log()
    assert f"connect: export STOCKADE_URL={url} STOCKADE_CA_BUNDLE={cert}" in log
    assert "SHA-256 fingerprint" in log

    monkeypatch.delenv("STOCKADE_CA_BUNDLE", raising=False)
    with (
        Client(url, tls_server.token) as untrusting,
        pytest.raises(StockadeConnectionError, match=r"not trusted.*STOCKADE_CA_BUNDLE"),
    ):
        untrusting.health()

    monkeypatch.setenv("STOCKADE_CA_BUNDLE", str(cert))
    with Client(url, tls_server.token) as client:
        sb = Sandbox.create(image="python", timeout=300, ports=[8000], client=client)
        try:
            process = sb.exec("echo", "hi")  # the exec WebSocket: WSS
            assert (process.stdout.read(), process.wait()) == ("hi\n", 0)
            # An exposed port, through the proxy in the same HTTPS listener.
            sb.files.write("/srv/hello.txt", "hello over tls\n")
            sb.run("setsid nohup python3 -m http.server 8000 -d /srv >/dev/null 2>&1 &")
            trusted = ssl.create_default_context(cafile=str(cert))
            headers = {"X-Stockade-Access-Token": sb.access_token}

            def fetched() -> str | None:
                r = httpx.get(sb.tunnel(8000) + "hello.txt", headers=headers, verify=trusted)
                return r.text if r.status_code == 200 else None

            assert wait_for(fetched, timeout=30, what="the port over https") == "hello over tls\n"
            refused = httpx.get(sb.tunnel(8000), verify=trusted)  # no access token
            assert refused.status_code == 401 and refused.json()["error"]["code"]
        finally:
            sb.terminate()
