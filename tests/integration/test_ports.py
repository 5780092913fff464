"""Exposed ports through the server's proxy, and `stockade port-forward`, against real
gVisor sandboxes serving on their own network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stockade import NotFoundError, Sandbox

from .conftest import LiveServer
from .helpers import wait_for

pytestmark = pytest.mark.runsc

_STREAM_SERVER = r"""
import http.server, time
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/stream"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(3):
                data = f"tick {i}\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.5)
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path.startswith("/big"):
            size = 8 * 1024 * 1024
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = bytes(range(256)) * 4096
            for _ in range(size // len(block)):
                self.wfile.write(block)
            return
        body = f"path={self.path} token={self.headers.get('X-Stockade-Access-Token')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers["Content-Length"])
        data = self.rfile.read(n)
        body = str(len(data)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
"""

_ECHO_SERVER = r"""
import socket, threading
def echo(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5432))
s.listen()
while True:
    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()
"""


# A WebSocket echo server with nothing but the standard library (the image has no
# websockets package): the handshake, then masked client frames echoed back unmasked.
_WS_SERVER = r"""
import base64, hashlib, socket, struct, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def read_exact(c, n):
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data
def serve(c):
    with c:
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.recv(4096)
        lines = head.decode().split("\r\n")
        pairs = [l.split(":", 1) for l in lines[1:] if ":" in l]
        headers = {k.lower(): v.strip() for k, v in pairs}
        key = headers["sec-websocket-key"] + GUID
        accept = base64.b64encode(hashlib.sha1(key.encode()).digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while True:
            b0, b1 = read_exact(c, 2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", read_exact(c, 2))[0]
            elif n == 127:
                n = struct.unpack("!Q", read_exact(c, 8))[0]
            mask = read_exact(c, 4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(read_exact(c, n)))
            if opcode == 8:
                c.sendall(b"\x88\x02" + data[:2])
                return
            if opcode in (1, 2):
                reply = (b"echo: " if opcode == 1 else b"") + data
                size = len(reply)
                head = struct.pack("!BB", 0x80 | opcode, size) if size < 126 else (
                    struct.pack("!BBH", 0x80 | opcode, 126, size) if size < 65536 else
                    struct.pack("!BBQ", 0x80 | opcode, 127, size))
                c.sendall(head + reply)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8765))
s.listen()
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


def _wait_listening(sb: Sandbox, port: int) -> None:
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    wait_for(
        lambda: True if sb.run(["python3", "-c", probe]).exit_code == 0 else None,
        timeout=20,
        interval=0.2,
        what=f"port {port} in {sb.id}",
    )


@pytest.fixture(scope="module")
def web(server: LiveServer) -> Iterator[Sandbox]:
    sb = Sandbox.create(
        image="python", timeout=900, ports=[8000, {"port": 5432, "public": True}, 9999, 8765]
    )
    try:
        sb.files.write("/srv/app.py", _STREAM_SERVER)
        sb.files.write("/srv/echo.py", _ECHO_SERVER)
        sb.files.write("/srv/ws.py", _WS_SERVER)
        for script in ("app", "echo", "ws"):
            sb.run(f"setsid nohup python3 /srv/{script}.py >/dev/null 2>&1 &")
        for port in (8000, 5432, 8765):
            _wait_listening(sb, port)
        yield sb
    finally:
        sb.terminate()


def test_tunnel_needs_the_access_token(web: Sandbox) -> None:
    url = web.tunnel(8000)
    assert url.endswith(f"/proxy/{web.id}/8000/")
    r = httpx.get(url + "hello?x=1", timeout=10)
    assert r.status_code == 401, r.text
    assert "X-Stockade-Access-Token" in r.json()["error"]["message"]
    r = httpx.get(url + "hello?x=1", headers={"X-Stockade-Access-Token": "wrong"}, timeout=10)
    assert r.status_code == 403, r.text
    ok = httpx.get(
        url + "hello?x=1", headers={"X-Stockade-Access-Token": web.access_token}, timeout=10
    )
    assert ok.status_code == 200
    # The token is the proxy's business: the sandbox's server never sees it.
    assert ok.text == "path=/hello?x=1 token=None"
    by_query = httpx.get(url + "q", params={"stockade_token": web.access_token}, timeout=10)
    assert by_query.text == "path=/q token=None"


def test_host_based_routing(server: LiveServer, web: Sandbox) -> None:
    r = httpx.get(
        f"{server.url}/hello",
        headers={
            "Host": f"8000-{web.id}.sandboxes.test",
            "X-Stockade-Access-Token": web.access_token,
        },
        timeout=10,
    )
    assert r.status_code == 200 and r.text == "path=/hello token=None"


def test_streaming_and_large_bodies(web: Sandbox) -> None:
    url, headers = web.tunnel(8000), {"X-Stockade-Access-Token": web.access_token}
    with httpx.stream("GET", url + "stream", headers=headers, timeout=10) as r:
        arrivals = []
        for line in r.iter_lines():
            arrivals.append((time.monotonic(), line))
    assert [line for _, line in arrivals] == ["tick 0", "tick 1", "tick 2"]
    # Chunks arrive as the server writes them, not all at the end.
    assert arrivals[-1][0] - arrivals[0][0] > 0.7
    big = httpx.get(url + "big", headers=headers, timeout=30)
    assert big.content == (bytes(range(256)) * 4096) * 8
    payload = os.urandom(5 * 1024 * 1024)
    up = httpx.post(url + "upload", content=payload, headers=headers, timeout=30)
    assert up.text == str(len(payload))


def test_websocket_through_the_proxy(web: Sandbox) -> None:
    from websockets.sync.client import connect

    url = web.tunnel(8765).replace("http://", "ws://")
    with connect(
        url, additional_headers={"X-Stockade-Access-Token": web.access_token}, open_timeout=10
    ) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "echo: hello"
        blob = os.urandom(200_000)
        ws.send(blob)
        assert ws.recv(timeout=10) == blob
    # Without the token the upgrade is refused.
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10)
    assert refused.value.response.status_code == 401


def test_public_port_needs_no_token_and_unexposed_ports_are_404(web: Sandbox) -> None:
    # 5432 is public but speaks raw TCP: the proxy reaches it (no 401), the reply is junk.
    r = httpx.get(web.tunnel(5432), timeout=10)
    assert r.status_code != 401
    with pytest.raises(NotFoundError, match="not exposed"):
        web.tunnel(7777)
    # With the token the caller hears that the port is not exposed; without it, only that
    # the token is missing (test_proxy_auth.py), as for a sandbox that does not exist.
    token = {"X-Stockade-Access-Token": web.access_token}
    r = httpx.get(f"{web.client.url}/proxy/{web.id}/7777/", headers=token, timeout=10)
    assert r.status_code == 404 and "not exposed" in r.json()["error"]["message"]
    r = httpx.get(f"{web.client.url}/proxy/sb-0000000000000000/8000/", timeout=10)
    assert r.status_code == 401


def test_nothing_listening_is_a_fast_502(web: Sandbox) -> None:
    started = time.monotonic()
    r = httpx.get(
        web.tunnel(9999), headers={"X-Stockade-Access-Token": web.access_token}, timeout=20
    )
    assert r.status_code == 502
    assert "9999" in r.json()["error"]["message"]
    assert time.monotonic() - started < 5


def test_a_blocked_sandbox_serves_nothing(web: Sandbox) -> None:
    url, headers = web.tunnel(8000), {"X-Stockade-Access-Token": web.access_token}
    web.set_network(block_network=True)
    try:
        r = httpx.get(url, headers=headers, timeout=10)
        assert r.status_code == 409 and "block_network" in r.json()["error"]["message"]
        # Not even the host gets through: the sandbox sends nothing back.
        ip = web.last_info.network.ip  # type: ignore[union-attr]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{ip}:8000/", timeout=3)
    finally:
        web.set_network()
    assert httpx.get(url, headers=headers, timeout=10).status_code == 200


def test_expose_at_runtime(web: Sandbox) -> None:
    url = web.expose(8000, public=True)
    try:
        assert httpx.get(url + "x", timeout=10).status_code == 200
    finally:
        web.expose(8000)
    assert httpx.get(url + "x", timeout=10).status_code == 401


def test_unexpose(web: Sandbox) -> None:
    url, headers = web.tunnel(8000), {"X-Stockade-Access-Token": web.access_token}
    cli = str(Path(sys.executable).parent / "stockade")
    try:
        info = web.unexpose(8000)
        assert 8000 not in [p.port for p in info.ports] and 8000 not in web.tunnels()
        # The proxy stops serving it at once, while the server inside keeps running.
        r = httpx.get(url + "x", headers=headers, timeout=10)
        assert r.status_code == 404 and "not exposed" in r.json()["error"]["message"]
        with pytest.raises(NotFoundError, match=r"port 8000 .* is not exposed"):
            web.unexpose(8000)
        exposed = subprocess.run(
            [cli, "expose", web.id, "8000"], capture_output=True, text=True, timeout=30
        )
        assert exposed.returncode == 0, exposed.stderr
        assert exposed.stdout.strip() == url
        assert httpx.get(url + "x", headers=headers, timeout=10).status_code == 200
        for code in (0, 1):  # the second time it is not exposed any more
            done = subprocess.run(
                [cli, "unexpose", web.id, "8000"], capture_output=True, text=True, timeout=30
            )
            assert done.returncode == code, done.stderr
        assert "is not exposed" in done.stderr
        assert httpx.get(url + "x", headers=headers, timeout=10).status_code == 404
    finally:
        web.expose(8000)
    assert httpx.get(url + "x", headers=headers, timeout=10).status_code == 200


def test_port_forward_cli(server: LiveServer, web: Sandbox) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    cli = str(Path(sys.executable).parent / "stockade")
    p = subprocess.Popen(
        [cli, "port-forward", web.id, "5432", "--local", str(local)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def connected() -> socket.socket | None:
            try:
                return socket.create_connection(("127.0.0.1", local), timeout=2)
            except OSError:
                return None

        conn = wait_for(connected, timeout=15, what="the port-forward listener")
        with conn:
            payload = os.urandom(256 * 1024)
            conn.sendall(payload)
            received = b""
            conn.settimeout(10)
            while len(received) < len(payload):
                chunk = conn.recv(65536)
                assert chunk, "the forwarded connection closed early"
                received += chunk
            assert received == payload
    finally:
        p.terminate()
        p.wait(10)
        if p.stdout is not None:
            p.stdout.close()


def test_port_forward_to_an_unknown_sandbox_fails_clearly(server: LiveServer) -> None:
    cli = str(Path(sys.executable).parent / "stockade")
    done = subprocess.run(
        [cli, "port-forward", "sb-0000000000000000", "5432"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert "does not exist" in done.stderr
