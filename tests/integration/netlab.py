"""A stand-in internet on this machine: namespaces that play a "public" and a "private"
host, and a DNS server, so that the network tests never send a packet off the machine.

Topology (each host is a namespace joined to the host by a veth transit link)::

    host ── stt-pub  10.77.255.1/30 ── 10.77.255.2  [stktest-pub]  198.51.100.10, .20 on lo
    host ── stt-priv 10.77.254.1/30 ── 10.77.254.2  [stktest-priv] 10.77.1.10 on lo

The public addresses are reached through a route, not a connected subnet, so the server
does not mistake them for its LAN. The namespaces have no default route: nothing in them
can send a packet off this machine. Each host serves HTTP on port 80 (the reply names the
address that was hit and the Host header) and the public one HTTPS on 443 with a
self-signed certificate for ``public.test``; with ``files``, FILES_IP serves a directory.

dnsmasq answers ``public.test`` → 198.51.100.10, ``other.test`` → 198.51.100.20,
``private.test`` → 10.77.1.10, and nothing else (it has no upstream).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .helpers import wait_for

PUBLIC_IP = "198.51.100.10"
OTHER_PUBLIC_IP = "198.51.100.20"
# Serves a directory of files (a package index): pypi.test and deb.test.
FILES_IP = "198.51.100.30"
PRIVATE_IP = "10.77.1.10"

_SERVER = r"""
import http.server, socketserver, ssl, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{self.connection.getsockname()[0]} {self.headers.get('Host', '')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    def server_bind(self):  # HTTPServer's would look the address up in DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
servers = [S((a, 80), H) for a in sys.argv[1].split(",")]
if len(sys.argv) > 3:
    for a in sys.argv[1].split(","):
        tls = S((a, 443), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
        servers.append(tls)
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class _Host:
    ns: str
    link: str
    transit: str  # host side address of the /30; the namespace has .2
    addresses: tuple[str, ...]
    route: str


_HOSTS = (
    _Host(
        "stktest-pub",
        "stt-pub",
        "10.77.255",
        (PUBLIC_IP, OTHER_PUBLIC_IP, FILES_IP),
        "198.51.100.0/24",
    ),
    _Host("stktest-priv", "stt-priv", "10.77.254", (PRIVATE_IP,), "10.77.1.0/24"),
)


def _teardown() -> None:
    for h in _HOSTS:
        subprocess.run(["ip", "link", "del", h.link], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", h.ns], capture_output=True, timeout=30)


@contextlib.contextmanager
def netlab(files: Path | None = None) -> Iterator[Path]:
    """Build the stand-in hosts and their servers; yields the directory of the TLS cert.

    With ``files``, the public host also serves that directory at FILES_IP port 80.
    """
    _teardown()
    tmp = Path(tempfile.mkdtemp(prefix="stockade-netlab-"))
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=public.test", "-addext", "subjectAltName=DNS:public.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    servers: list[subprocess.Popen[bytes]] = []
    try:
        for h in _HOSTS:
            _ip("netns", "add", h.ns)
            _ip("link", "add", h.link, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
            _ip("addr", "add", f"{h.transit}.1/30", "dev", h.link)
            _ip("link", "set", h.link, "up")
            _ip("-n", h.ns, "addr", "add", f"{h.transit}.2/30", "dev", "eth0")
            _ip("-n", h.ns, "link", "set", "eth0", "up")
            _ip("-n", h.ns, "link", "set", "lo", "up")
            for a in h.addresses:
                _ip("-n", h.ns, "addr", "add", f"{a}/32", "dev", "lo")
            _ip("route", "add", h.route, "via", f"{h.transit}.2")
            extra = [str(cert), str(key)] if h.ns == "stktest-pub" else []
            # Each address on its own: FILES_IP's port 80 belongs to the file server.
            served = ",".join(a for a in h.addresses if a != FILES_IP)
            p = subprocess.Popen(
                ["ip", "netns", "exec", h.ns, "python3", "-c", _SERVER, served, *extra],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            servers.append(p)
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"the stand-in server in {h.ns} did not start")
        if files is not None:
            servers.append(_serve_files(files))
        yield tmp
    finally:
        for p in servers:
            p.kill()
            p.wait(10)
            if p.stdout is not None:
                p.stdout.close()
        _teardown()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


_FILE_SERVER = r"""
import functools, http.server, socketserver, sys
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    def server_bind(self):  # HTTPServer's would look the address up in DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass
S((sys.argv[1], 80), functools.partial(H, directory=sys.argv[2])).serve_forever()
"""


def _serve_files(directory: Path) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(
        ["ip", "netns", "exec", "stktest-pub", "python3", "-c", _FILE_SERVER, FILES_IP,
         str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool | None:
        probe = subprocess.run(
            ["ip", "netns", "exec", "stktest-pub", "python3", "-c",
             f"import socket; socket.create_connection(('{FILES_IP}', 80), timeout=1)"],
            capture_output=True, check=False,
        )  # fmt: skip
        return probe.returncode == 0 or None

    try:
        wait_for(answers, timeout=10, what="the stand-in file server to answer")
    except AssertionError:
        p.kill()
        raise
    return p


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def stand_in_dns() -> Iterator[str]:
    """dnsmasq on loopback with the stand-in names; yields ``127.0.0.1:PORT``."""
    port = _free_udp_port()
    p = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
         "--listen-address=127.0.0.1", f"--port={port}", "--user=root", "--pid-file",
         f"--address=/public.test/{PUBLIC_IP}", f"--address=/other.test/{OTHER_PUBLIC_IP}",
         f"--address=/private.test/{PRIVATE_IP}", f"--address=/pypi.test/{FILES_IP}",
         f"--address=/deb.test/{FILES_IP}", "--log-facility=/dev/null"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def answers() -> bool | None:
        if p.poll() is not None:
            raise RuntimeError(f"dnsmasq exited {p.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0 or None  # dnsmasq also serves TCP

    try:
        wait_for(answers, timeout=10, interval=0.05, what="the stand-in dnsmasq to listen")
        yield f"127.0.0.1:{port}"
    finally:
        p.kill()
        p.wait(10)
