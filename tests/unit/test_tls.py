"""The SDK against an https server with a private CA: trusted through STOCKADE_CA_BUNDLE or
``verify=`` for requests and WebSockets alike, refused with the fix named otherwise."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
import websockets.sync.server
from websockets.http11 import Request, Response

from stockade import AsyncClient, Client, InvalidArgumentError, StockadeConnectionError
from stockade._base import client_ssl_context, ssl_context

TOKEN = "sk_test"


_ANSWERS = {"/healthz": '{"status": "ok", "version": "test"}', "/v1/images": '{"images": []}'}


class TlsServer:
    """``GET /healthz``, ``GET /v1/images`` (none) and an echoing WebSocket at any other
    path, over TLS on loopback."""

    def __init__(self, ca: trustme.CA) -> None:
        self.ca = ca
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("localhost").configure_cert(context)  # localhost only: not 127.0.0.1
        self._server = websockets.sync.server.serve(
            self._echo, "127.0.0.1", 0, ssl=context, process_request=self._health
        )
        self.port: int = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)

    @staticmethod
    def _health(
        connection: websockets.sync.server.ServerConnection, request: Request
    ) -> Response | None:
        answer = _ANSWERS.get(request.path)
        if answer is None:
            return None
        response = connection.respond(200, answer)
        response.headers["Content-Type"] = "application/json"
        return response

    @staticmethod
    def _echo(ws: websockets.sync.server.ServerConnection) -> None:
        for message in ws:
            ws.send(message)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[TlsServer]:
    live = TlsServer(ca)
    yield live
    live.close()


def _round_trip(client: Client) -> None:
    assert client.health()["status"] == "ok"
    ws = client.connect_ws("/echo")
    try:
        assert ws.send("hi")
        assert ws.recv() == "hi"
    finally:
        ws.close()


def test_the_bundle_from_the_environment_is_trusted(
    server: TlsServer, ca_file: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKADE_CA_BUNDLE", str(ca_file))
    with Client(server.url(), TOKEN) as client:
        _round_trip(client)


def test_verify_names_a_bundle_or_turns_checks_off(
    server: TlsServer, ca_file: Path, isolated_env: Path
) -> None:
    with Client(server.url(), TOKEN, verify=str(ca_file)) as client:
        _round_trip(client)
    with Client(server.url(), TOKEN, verify=ca_file.parent / "ca.pem") as client:
        _round_trip(client)
    with Client(server.url("127.0.0.1"), TOKEN, verify=False) as client:
        _round_trip(client)


async def test_the_async_client_trusts_the_same_way(
    server: TlsServer, ca_file: Path, isolated_env: Path
) -> None:
    async with AsyncClient(server.url(), TOKEN, verify=str(ca_file)) as client:
        assert (await client.health())["status"] == "ok"
        ws = await client.connect_ws("/echo")
        try:
            assert await ws.send("hi")
            assert await ws.recv() == "hi"
        finally:
            await ws.close()
    async with AsyncClient(server.url(), TOKEN) as client:
        with pytest.raises(StockadeConnectionError, match="STOCKADE_CA_BUNDLE"):
            await client.connect_ws("/echo")


def test_an_untrusted_certificate_names_the_fix(server: TlsServer, isolated_env: Path) -> None:
    with Client(server.url(), TOKEN) as client:
        with pytest.raises(StockadeConnectionError) as refused:
            client.health()
        message = str(refused.value)
        assert message.startswith(
            f"GET /healthz: the certificate of the Stockade server at {server.url()} is not trusted"
        )
        assert "STOCKADE_CA_BUNDLE" in message and "verify=" in message
        assert isinstance(refused.value.__cause__, Exception)  # the ssl error stays reachable
        with pytest.raises(StockadeConnectionError, match=r"not trusted.*STOCKADE_CA_BUNDLE"):
            client.connect_ws("/echo")


def test_a_name_the_certificate_does_not_cover_is_told_apart(
    server: TlsServer, ca_file: Path, isolated_env: Path
) -> None:
    with (
        Client(server.url("127.0.0.1"), TOKEN, verify=str(ca_file)) as client,
        pytest.raises(StockadeConnectionError, match="not valid for this name"),
    ):
        client.health()


def test_plain_http_to_a_tls_server_suggests_https(server: TlsServer, isolated_env: Path) -> None:
    with (
        Client(f"http://localhost:{server.port}", TOKEN) as client,
        pytest.raises(StockadeConnectionError, match="use an https:// URL"),
    ):
        client.health()


def test_a_bundle_that_holds_no_certificate_is_refused(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(InvalidArgumentError, match=r"verify='.*junk\.pem' holds no usable PEM"):
        Client("https://localhost:1", TOKEN, verify=str(junk))
    monkeypatch.setenv("STOCKADE_CA_BUNDLE", str(junk))
    with pytest.raises(InvalidArgumentError, match=r"STOCKADE_CA_BUNDLE=.*junk\.pem holds no"):
        Client("https://localhost:1", TOKEN)


def test_contexts_are_shared_per_bundle_and_keep_the_system_cas(
    ca: trustme.CA, ca_file: Path, isolated_env: Path
) -> None:
    assert client_ssl_context() is ssl_context()
    with_ca = client_ssl_context(str(ca_file))
    assert with_ca is client_ssl_context(str(ca_file)) and with_ca is not ssl_context()
    # The bundle is added to the system's CAs, not put in their place.
    assert with_ca.cert_store_stats()["x509_ca"] == ssl_context().cert_store_stats()["x509_ca"] + 1
    unchecked = client_ssl_context(False)
    assert unchecked.verify_mode == ssl.CERT_NONE and not unchecked.check_hostname
    own = ssl.create_default_context()
    assert client_ssl_context(own) is own
