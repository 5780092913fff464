"""Sandbox networking against real gVisor, nftables and namespaces.

Every destination is a stand-in host that :mod:`.netlab` builds on this machine; DNS goes
to the tests' own dnsmasq on loopback. No test sends traffic off the machine.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from stockade import ConflictError, InvalidArgumentError, Sandbox

from .conftest import LiveServer
from .helpers import wait_for, wait_spares
from .netlab import OTHER_PUBLIC_IP, PRIVATE_IP, PUBLIC_IP, netlab

pytestmark = pytest.mark.runsc

_FETCH = r"""
import json, sys, urllib.request
url, headers = sys.argv[1], json.loads(sys.argv[2])
try:
    r = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=8)
    print("OK", r.read().decode().strip())
except Exception as e:
    print("ERR", type(e).__name__, e)
"""

_CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=8).close()
    print("OK")
except Exception as e:
    print("ERR", type(e).__name__, e)
"""

_RESOLVE = r"""
import socket, sys
try:
    print("OK", socket.gethostbyname(sys.argv[1]))
except Exception as e:
    print("ERR", type(e).__name__, e)
"""

_TLS = r"""
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
try:
    with socket.create_connection((sys.argv[1], 443), timeout=8) as raw:
        with ctx.wrap_socket(raw, server_hostname=sys.argv[2]) as tls:
            head = "GET / HTTP/1.1\r\nHost: " + sys.argv[2] + "\r\nConnection: close\r\n\r\n"
            tls.sendall(head.encode())
            print("OK", tls.recv(4096).split(b"\r\n")[0].decode())
except Exception as e:
    print("ERR", type(e).__name__, e)
"""


@pytest.fixture(scope="module", autouse=True)
def lab() -> Iterator[None]:
    with netlab():
        yield


def fetch(sb: Sandbox, url: str, headers: dict[str, str] | None = None) -> str:
    return sb.run(
        ["python3", "-c", _FETCH, url, json.dumps(headers or {})], timeout=30
    ).stdout.strip()


def connect(sb: Sandbox, host: str, port: int) -> str:
    return sb.run(["python3", "-c", _CONNECT, host, str(port)], timeout=30).stdout.strip()


def resolve(sb: Sandbox, name: str) -> str:
    return sb.run(["python3", "-c", _RESOLVE, name], timeout=30).stdout.strip()


def tls(sb: Sandbox, ip: str, sni: str) -> str:
    return sb.run(["python3", "-c", _TLS, ip, sni], timeout=30).stdout.strip()


def serve_http(sb: Sandbox, port: int) -> None:
    """Start a web server inside the sandbox and wait until it answers there."""
    sb.run(f"setsid nohup python3 -m http.server {port} >/dev/null 2>&1 &")
    wait_for(
        lambda: connect(sb, "127.0.0.1", port) == "OK" or None, timeout=20, interval=0.2,
        what=f"the web server in {sb.id} to answer on port {port}",
    )  # fmt: skip


def host_address() -> str:
    """An address of this host outside the sandbox networks (its main interface)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "scope", "global"], capture_output=True, check=True
    ).stdout
    for link in json.loads(out):
        if link["ifname"].startswith(("sk", "stockade", "stt-")):
            continue
        for a in link.get("addr_info", []):
            return str(a["local"])
    raise AssertionError("this host has no global IPv4 address")


# ----------------------------------------------------------------------- default policy


@pytest.fixture(scope="module")
def open_sb(server: LiveServer) -> Iterator[Sandbox]:
    sb = Sandbox.create(image="python", timeout=900)
    try:
        yield sb
    finally:
        sb.terminate()


def test_default_policy_reaches_public_hosts_and_resolves_names(open_sb: Sandbox) -> None:
    info = open_sb.info()
    assert info.network is not None and info.network.mode == "open" and info.network.ip
    assert fetch(open_sb, f"http://{PUBLIC_IP}/") == f"OK {PUBLIC_IP} {PUBLIC_IP}"
    assert resolve(open_sb, "public.test") == f"OK {PUBLIC_IP}"
    assert fetch(open_sb, "http://public.test/") == f"OK {PUBLIC_IP} public.test"


def test_default_policy_refuses_private_ranges_at_once(open_sb: Sandbox) -> None:
    # The private stand-in is reachable from the host: only the policy stops the sandbox.
    assert httpx.get(f"http://{PRIVATE_IP}/", timeout=5).status_code == 200
    started = time.monotonic()
    assert connect(open_sb, PRIVATE_IP, 80).startswith("ERR ConnectionRefusedError")
    assert time.monotonic() - started < 5, "a refused connect must fail at once, not hang"
    for target in ("169.254.169.254", "10.0.0.1", "192.168.1.1", "172.16.0.1"):
        assert connect(open_sb, target, 80).startswith("ERR"), target


def test_default_policy_refuses_the_host_itself(open_sb: Sandbox) -> None:
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        ip = ipaddress.IPv4Address(open_sb.info().network.ip)  # type: ignore[union-attr]
        gateway = str(ip - 1)  # the host's end of the sandbox's /30
        for address in (host_address(), gateway):
            with socket.create_connection((address, port), timeout=5):
                pass  # reachable from the host...
            assert connect(open_sb, address, port).startswith("ERR"), address  # ...not inside


def test_sandboxes_cannot_reach_each_other(server: LiveServer, open_sb: Sandbox) -> None:
    with Sandbox.create(image="python", timeout=300) as other:
        serve_http(other, 8000)
        ip = other.info().network.ip  # type: ignore[union-attr]
        assert ip is not None
        # The host reaches it; the other sandbox does not.
        assert httpx.get(f"http://{ip}:8000/", timeout=5).status_code == 200
        assert connect(open_sb, ip, 8000).startswith("ERR")


# -------------------------------------------------------------------------- other modes


def test_block_network_leaves_loopback_only(server: LiveServer) -> None:
    with Sandbox.create(image="python", block_network=True, timeout=300) as sb:
        assert sb.last_info.network is not None and sb.last_info.network.mode == "blocked"
        assert connect(sb, PUBLIC_IP, 80).startswith("ERR")
        assert resolve(sb, "public.test").startswith("ERR")
        serve_http(sb, 8001)  # loopback works: serve_http checks it from inside


def test_cidr_allowlist(server: LiveServer) -> None:
    with Sandbox.create(
        image="python", outbound_cidr_allowlist=[f"{PUBLIC_IP}/32", PRIVATE_IP], timeout=300
    ) as sb:
        assert sb.last_info.network is not None
        assert sb.last_info.network.outbound_cidr_allowlist == [
            f"{PUBLIC_IP}/32",
            f"{PRIVATE_IP}/32",
        ]
        assert fetch(sb, f"http://{PUBLIC_IP}/").startswith("OK")
        # An explicit allowlist may open a private range.
        assert fetch(sb, f"http://{PRIVATE_IP}/").startswith("OK")
        assert connect(sb, OTHER_PUBLIC_IP, 80).startswith("ERR")


def test_domain_allowlist_cannot_be_sidestepped(server: LiveServer) -> None:
    with Sandbox.create(
        image="python", outbound_domain_allowlist=["public.test"], timeout=300
    ) as sb:
        assert fetch(sb, "http://public.test/") == f"OK {PUBLIC_IP} public.test"
        assert tls(sb, PUBLIC_IP, "public.test") == "OK HTTP/1.0 200 OK"
        # Names outside the list do not resolve.
        assert resolve(sb, "other.test").startswith("ERR")
        # Resolving elsewhere and dialling the address: refused, whatever Host it claims.
        assert not fetch(sb, f"http://{OTHER_PUBLIC_IP}/", {"Host": "public.test"}).startswith("OK")
        assert not fetch(sb, f"http://{OTHER_PUBLIC_IP}/").startswith("OK")
        # An allowed address with a name that is not allowed: refused, in Host and in SNI.
        assert not fetch(sb, f"http://{PUBLIC_IP}/", {"Host": "other.test"}).startswith("OK")
        assert tls(sb, PUBLIC_IP, "other.test").startswith("ERR")
        assert tls(sb, OTHER_PUBLIC_IP, "public.test").startswith("ERR")


def test_set_network_on_a_running_sandbox(open_sb: Sandbox) -> None:
    try:
        info = open_sb.set_network(block_network=True)
        assert info.network is not None and info.network.mode == "blocked"
        assert connect(open_sb, PUBLIC_IP, 80).startswith("ERR")
        open_sb.set_network(outbound_cidr_allowlist=[f"{OTHER_PUBLIC_IP}/32"])
        assert connect(open_sb, PUBLIC_IP, 80).startswith("ERR")
        assert connect(open_sb, OTHER_PUBLIC_IP, 80) == "OK"
    finally:
        info = open_sb.set_network()
    assert info.network is not None and info.network.mode == "open"
    assert fetch(open_sb, f"http://{PUBLIC_IP}/").startswith("OK")


def test_set_network_cuts_open_connections(open_sb: Sandbox) -> None:
    script = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=5)
print("connected", flush=True)
sys.stdin.readline()
try:
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(5)
    print("reply" if s.recv(100) else "closed", flush=True)
except OSError as e:
    print("cut", type(e).__name__, flush=True)
"""
    proc = open_sb.exec("python3", "-c", script, PUBLIC_IP, timeout=60)
    assert proc.stdout.readline().strip() == "connected"
    try:
        open_sb.set_network(block_network=True)
        proc.stdin.write("go\n")
        assert proc.stdout.readline().strip().split()[0] in ("cut", "closed")
    finally:
        open_sb.set_network()
        proc.wait()


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"outbound_cidr_allowlist": ["10.0.0.300/8"]}, "invalid CIDR"),
        ({"outbound_cidr_allowlist": ["::1/128"]}, "IPv4"),
        ({"outbound_domain_allowlist": ["exa mple.com"]}, "invalid domain"),
        ({"outbound_domain_allowlist": ["*"]}, "invalid domain"),
        ({"outbound_domain_allowlist": ["a.*.com"]}, "invalid domain"),
        ({"block_network": True, "outbound_cidr_allowlist": ["1.2.3.0/24"]}, "block_network"),
        ({"ports": [70000]}, "ports"),
        ({"ports": [{"port": 0}]}, "port"),
    ],
)
def test_bad_network_input_is_422(http: httpx.Client, body: dict[str, object], needle: str) -> None:
    r = http.post("/v1/sandboxes", json={"image": "python", **body})
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]["message"]


def test_bad_input_through_the_sdk(open_sb: Sandbox) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid CIDR"):
        open_sb.set_network(outbound_cidr_allowlist=["nonsense"])
    with pytest.raises(InvalidArgumentError, match="list of strings"):
        open_sb.set_network(outbound_domain_allowlist="example.com")


# ------------------------------------------------------------- host without networking


def test_a_server_without_networking_says_why(tmp_path_factory: pytest.TempPathFactory) -> None:
    import secrets

    from .helpers import force_cleanup

    tmp = tmp_path_factory.mktemp("nonet")
    live = LiveServer(data_dir=tmp / "data", token="sk_test_" + secrets.token_hex(8))
    live.extra_args = ["--no-network"]
    live.start()
    try:
        with Sandbox.create(image="python", url=live.url, token=live.token, timeout=120) as sb:
            net = sb.last_info.network
            assert net is not None and net.mode == "blocked" and net.ip is None
            assert net.reason and "--no-network" in net.reason
            with pytest.raises(ConflictError, match="no network"):
                sb.set_network()
            assert sb.run("echo still works").stdout == "still works\n"
    finally:
        live.terminate_all()
        live.stop()
        force_cleanup(tmp, live.data_dir)


# -------------------------------------------------------------------------- teardown


def _kernel_objects(server: LiveServer) -> tuple[int, int, int]:
    """The server's namespaces, links and nft rules (only its own block's: other servers on
    this host come and go on their own)."""
    block = json.loads((server.data_dir / "network.json").read_text())["block"]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    spaces = [line for line in netns.stdout.splitlines() if line.startswith(f"stockade-{block}-")]
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, check=True).stdout)
    ours = [link for link in links if str(link.get("ifname", "")).startswith(f"sk{block}-")]
    rules = subprocess.run(
        ["nft", "-a", "list", "table", "inet", f"stockade_{block}"], capture_output=True, check=True
    ).stdout
    return len(spaces), len(ours), rules.count(b"# handle")


def test_teardown_leaves_nothing_behind(server: LiveServer) -> None:
    wait_spares(server.url, server.token)
    before = _kernel_objects(server)
    errors: list[BaseException] = []

    def churn(n: int) -> None:
        try:
            for _ in range(n):
                sb = Sandbox.create(image="debian", timeout=120, ports=[8080])
                assert sb.last_info.network is not None and sb.last_info.network.ip
                sb.terminate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(10,)) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    wait_spares(server.url, server.token)
    assert _kernel_objects(server) == before


# --------------------------------------------------------------------------- restarts


def test_network_and_policy_survive_a_server_crash(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import secrets
    import signal

    from .helpers import force_cleanup, runsc_binary

    tmp = tmp_path_factory.mktemp("netrestart")
    live = LiveServer(data_dir=tmp / "data", token="sk_test_" + secrets.token_hex(8))
    live.start()
    try:
        kw: dict[str, Any] = {"url": live.url, "token": live.token}
        allow = Sandbox.create(
            image="python", outbound_cidr_allowlist=[f"{PUBLIC_IP}/32"], timeout=300, **kw
        )
        plain = Sandbox.create(image="python", timeout=300, **kw)
        gone = Sandbox.create(image="python", timeout=300, **kw)
        gone_ip = gone.last_info.network.ip if gone.last_info.network else None
        assert gone_ip is not None
        live.stop(signal.SIGKILL)
        # This one vanishes while no server runs: the next one must remove its network.
        subprocess.run(
            [runsc_binary(), f"--root={live.data_dir / 'runsc'}", "delete", "--force", gone.id],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        live.start()
        allow = Sandbox.from_id(allow.id, **kw)
        assert fetch(allow, f"http://{PUBLIC_IP}/").startswith("OK")
        assert connect(allow, OTHER_PUBLIC_IP, 80).startswith("ERR")
        # The new server serves DNS again.
        assert resolve(Sandbox.from_id(plain.id, **kw), "public.test") == f"OK {PUBLIC_IP}"
        prefix, last = gone_ip.rsplit(".", 1)
        host_end = f"{prefix}.{int(last) - 1}/30"
        addresses = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
        assert host_end not in addresses, addresses
        assert Sandbox.from_id(gone.id, **kw).last_info.status == "failed"
    finally:
        live.terminate_all()
        live.stop()
        force_cleanup(tmp, live.data_dir)
