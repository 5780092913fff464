"""The port proxy authenticates before it does any work, against real gVisor sandboxes.

A request without the sandbox's access token (or with a wrong one) neither resumes a paused
``auto_resume`` sandbox, nor wakes a dozing one, nor counts as activity for
``idle_timeout``; its answer is the same whether the sandbox exists, is paused, or exposes
the port. The app in the sandbox never sees the access token (header or query) nor the
server's admin token, and WebSockets count against the proxy's connection cap.

The module runs its own server: sandboxes doze after 1 s, and the proxy's connection cap is
small enough to reach.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from stockade import Sandbox, SandboxInfo

from .conftest import LiveServer, own_server
from .helpers import wait_for

pytestmark = pytest.mark.runsc

CAP = 3  # the proxy's connection cap on this module's server
PORT, WS_PORT, UNEXPOSED = 8000, 8000, 7777
NO_SUCH_SANDBOX = "sb-0000000000000000"
TOKEN_HEADER = "X-Stockade-Access-Token"
DOZE_NS, AWAKE_NS = 50_000_000, 50_000

# One server for HTTP and WebSocket with nothing but the standard library (the image has
# no websockets package). Both answer with what the app was sent: the request target and
# the headers (a WebSocket as its first message); after that a WebSocket echoes frames.
_APP = r"""
import base64, hashlib, json, socket, struct, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def read_exact(c, n):
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data
def frame(opcode, data):
    size = len(data)
    if size < 126:
        return struct.pack("!BB", 0x80 | opcode, size) + data
    if size < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, size) + data
    return struct.pack("!BBQ", 0x80 | opcode, 127, size) + data
def serve(c):
    with c:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(4096)
            if not chunk:
                return
            head += chunk
        lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        pairs = [[p.strip() for p in l.split(":", 1)] for l in lines[1:] if ":" in l]
        seen = json.dumps({"target": target, "headers": pairs}).encode()
        headers = {k.lower(): v for k, v in pairs}
        if headers.get("upgrade", "").lower() != "websocket":
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close"
                      b"\r\nContent-Length: %d\r\n\r\n%s" % (len(seen), seen))
            return
        key = (headers["sec-websocket-key"] + GUID).encode()
        accept = base64.b64encode(hashlib.sha1(key).digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        c.sendall(frame(1, seen))
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
                c.sendall(frame(8, data[:2]))
                return
            if opcode in (1, 2):
                c.sendall(frame(opcode, data))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000))
s.listen(64)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with pytest.MonkeyPatch.context() as env:
        # Read by the server at start (api/ingress.py): the cap is reached in a test.
        env.setenv("STOCKADE_PROXY_MAX_CONNECTIONS", str(CAP))
        with own_server("stockade-proxy-auth-") as server:
            server.stop()
            server.extra_args = ["--doze-after", "1"]
            server.start()
            yield server


def serving(live: LiveServer, **create: Any) -> Sandbox:
    """A python sandbox exposing PORT privately, with the echo app listening on it."""
    sb = Sandbox.create(
        image="python", timeout=600, ports=[PORT], url=live.url, token=live.token, **create
    )
    sb.files.write("/srv/app.py", _APP)
    sb.run("setsid nohup python3 /srv/app.py >/dev/null 2>&1 &")
    probe = f"import socket; socket.create_connection(('127.0.0.1', {PORT}), timeout=2)"
    wait_for(
        lambda: True if sb.run(["python3", "-c", probe]).exit_code == 0 else None,
        timeout=20, interval=0.2, what=f"port {PORT} in {sb.id}",
    )  # fmt: skip
    return sb


@pytest.fixture(scope="module")
def web(live: LiveServer) -> Iterator[Sandbox]:
    sb = serving(live)
    try:
        yield sb
    finally:
        sb.terminate()


def proxy_url(live: LiveServer, sandbox_id: str, port: int, rest: str = "echo") -> str:
    return f"{live.url}/proxy/{sandbox_id}/{port}/{rest}"


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://", 1)


Answer = tuple[int, str, bytes]


def http_answer(url: str, headers: dict[str, str] | None = None) -> Answer:
    r = httpx.get(url, headers=headers, timeout=30)
    return r.status_code, r.headers.get("content-type", ""), r.content


def ws_answer(url: str, headers: dict[str, str] | None = None) -> Answer:
    """How the proxy refuses a WebSocket handshake (it must refuse)."""
    with (
        pytest.raises(InvalidStatus) as refused,
        connect(ws_url(url), additional_headers=headers, open_timeout=30),
    ):
        pass
    response = refused.value.response
    return response.status_code, response.headers.get("content-type", ""), bytes(response.body)


CREDENTIALS = [None, {TOKEN_HEADER: "wrong"}]


def refusals(urls: list[str], headers: dict[str, str] | None) -> set[Answer]:
    """Every distinct answer to ``urls`` without the right token, over HTTP and WebSocket."""
    answers = {http_answer(url, headers) for url in urls}
    answers |= {ws_answer(url, headers) for url in urls}
    return answers


def assert_uniform(answers: set[Answer], headers: dict[str, str] | None) -> None:
    assert len(answers) == 1, answers
    status, content_type, body = answers.pop()
    assert (status, content_type) == (401 if headers is None else 403, "application/json")
    error = json.loads(body)["error"]
    assert error["code"] == ("unauthorized" if headers is None else "forbidden")
    # Helpful still: it says how to send the token.
    assert TOKEN_HEADER in error["message"] and "stockade_token" in error["message"]


def slacks(sandbox_id: str) -> set[int]:
    """The timer slack of every host thread in the sandbox's cgroup (see test_doze.py)."""
    tasks = Path(f"/sys/fs/cgroup/cpu/stockade/{sandbox_id}/tasks").read_text().split()
    assert tasks, "the sandbox has no threads in its cgroup"
    found = set()
    for tid in tasks:
        try:
            found.add(int(Path(f"/proc/{tid}/timerslack_ns").read_text()))
        except OSError:
            continue  # a thread that just ended
    return found


# -- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", CREDENTIALS, ids=["no-token", "wrong-token"])
def test_refusals_are_the_same_for_every_sandbox_and_port(
    live: LiveServer, web: Sandbox, headers: dict[str, str] | None
) -> None:
    urls = [
        proxy_url(live, web.id, PORT),  # exposed, private, something listening
        proxy_url(live, web.id, UNEXPOSED),  # not exposed
        proxy_url(live, NO_SUCH_SANDBOX, PORT),  # no such sandbox
    ]
    answers = refusals(urls, headers)
    # Host routing answers the same.
    for sandbox_id, port in ((web.id, PORT), (web.id, UNEXPOSED), (NO_SUCH_SANDBOX, PORT)):
        host = {"Host": f"{port}-{sandbox_id}.sandboxes.test"}
        answers.add(http_answer(f"{live.url}/echo", {**host, **(headers or {})}))
    assert_uniform(answers, headers)
    # The right token gets through, and then the caller hears what is wrong.
    token = {TOKEN_HEADER: web.access_token}
    assert httpx.get(urls[0], headers=token, timeout=30).status_code == 200
    r = httpx.get(urls[1], headers=token, timeout=30)
    assert r.status_code == 404 and "not exposed" in r.json()["error"]["message"]


def test_a_paused_auto_resume_sandbox_stays_paused(live: LiveServer, web: Sandbox) -> None:
    sb = serving(live, auto_resume=True)
    try:
        sb.pause()
        assert sb.info().status == "paused"
        paused = proxy_url(live, sb.id, PORT)
        for headers in CREDENTIALS:
            answers = refusals([paused], headers)
            assert sb.info().status == "paused"
            # ... and they read as those for a running sandbox, or none at all.
            answers |= refusals([proxy_url(live, NO_SUCH_SANDBOX, PORT)], headers)
            answers |= refusals([proxy_url(live, web.id, PORT)], headers)
            assert_uniform(answers, headers)
        # With the token, the same request wakes it (so the checks above could fail).
        r = httpx.get(paused, headers={TOKEN_HEADER: sb.access_token}, timeout=60)
        assert r.status_code == 200, r.text
        assert sb.info().status == "running"
    finally:
        sb.terminate()


def test_refused_requests_do_not_keep_a_sandbox_alive(live: LiveServer) -> None:
    idle = 3.0
    sb = serving(live, idle_timeout=idle)
    try:
        last = time.time()  # the last exec of serving() ended just before
        url = proxy_url(live, sb.id, PORT)

        def idled_out() -> SandboxInfo | None:
            # Refused requests all along, until the sandbox ends.
            for headers in CREDENTIALS:
                refused = 401 if headers is None else 403
                assert http_answer(url, headers)[0] == refused
                assert ws_answer(url, headers)[0] == refused
            info = sb.info()
            return info if info.status != "running" else None

        info = wait_for(
            idled_out, timeout=idle + 5, interval=0.2,
            what="the idle timeout: refused requests kept the sandbox alive",
        )  # fmt: skip
        assert (info.status, info.reason) == ("terminated", "idle")
        assert time.time() - last >= idle - 0.1  # it was not ended early either
    finally:
        sb.terminate()


def test_refused_requests_do_not_wake_a_dozing_sandbox(live: LiveServer, web: Sandbox) -> None:
    wait_for(lambda: slacks(web.id) == {DOZE_NS} or None, timeout=15, what="the sandbox to doze")
    url = proxy_url(live, web.id, PORT)
    for headers in CREDENTIALS:
        http_answer(url, headers)
        assert slacks(web.id) == {DOZE_NS}
        ws_answer(url, headers)
        assert slacks(web.id) == {DOZE_NS}
    # The same request with the token wakes it before it is forwarded.
    assert httpx.get(url, headers={TOKEN_HEADER: web.access_token}, timeout=30).status_code == 200
    assert slacks(web.id) == {AWAKE_NS}


# -- what the app sees --------------------------------------------------------------------


def seen_over_http(url: str, headers: dict[str, str]) -> dict[str, Any]:
    r = httpx.get(url, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    seen: dict[str, Any] = r.json()
    return seen


def seen_over_ws(url: str, headers: dict[str, str]) -> dict[str, Any]:
    headers = dict(headers)
    host = headers.pop("Host", None)
    sock = None
    if host is not None:
        # The client writes Host from the URL: name the sandbox's host there, and reach the
        # server over a socket of our own.
        server = httpx.URL(url)
        sock = socket.create_connection((server.host, server.port or 80), timeout=30)
        url = str(server.copy_with(host=host))
    with connect(ws_url(url), additional_headers=headers, open_timeout=30, sock=sock) as ws:
        seen: dict[str, Any] = json.loads(ws.recv(timeout=30))
        ws.send("still open")
        assert ws.recv(timeout=30) == "still open"
    return seen


def test_the_app_never_sees_the_servers_credentials(live: LiveServer, web: Sandbox) -> None:
    admin = f"Bearer {live.token}"
    access = web.access_token
    base = proxy_url(live, web.id, PORT, "echo")
    host = {"Host": f"{PORT}-{web.id}.sandboxes.test"}
    cases = [
        (f"{base}?a=1", {TOKEN_HEADER: access, "Authorization": admin}),
        (f"{base}?a=1&stockade_token={access}", {"Authorization": admin}),
        (f"{base}?stockade_token={access}&a=1", {TOKEN_HEADER: access}),
        (f"{live.url}/echo?a=1&stockade_token={access}", {**host, "Authorization": admin}),
    ]
    for url, headers in cases:
        for seen in (seen_over_http(url, headers), seen_over_ws(url, headers)):
            assert seen["target"] == "/echo?a=1", (url, seen)
            names = {name.lower() for name, _ in seen["headers"]}
            assert "authorization" not in names, (url, seen)
            assert TOKEN_HEADER.lower() not in names, (url, seen)
            text = json.dumps(seen)
            assert access not in text and live.token not in text, (url, seen)
    # An Authorization of the app's own is the app's business: it goes through.
    own = {TOKEN_HEADER: access, "Authorization": "Bearer the-apps-own-token"}
    for seen in (seen_over_http(base, own), seen_over_ws(base, own)):
        pairs = [(name.lower(), value) for name, value in seen["headers"]]
        assert ("authorization", "Bearer the-apps-own-token") in pairs, seen


# -- the connection cap -------------------------------------------------------------------


def test_websockets_count_against_the_connection_cap(live: LiveServer, web: Sandbox) -> None:
    url = proxy_url(live, web.id, WS_PORT, "ws")
    token = {TOKEN_HEADER: web.access_token}
    with contextlib.ExitStack() as stack:
        held: list[ClientConnection] = []
        for _ in range(CAP):
            held.append(
                stack.enter_context(connect(ws_url(url), additional_headers=token, open_timeout=30))
            )
            json.loads(held[-1].recv(timeout=30))
        # Every slot is held by a WebSocket: another WebSocket, and a plain request, wait
        # for one (10 s, side by side), then get a 503.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            waiting_ws = pool.submit(ws_answer, url, token)
            waiting_http = pool.submit(http_answer, url, token)
            for answer in (waiting_ws.result(60), waiting_http.result(60)):
                assert answer[0] == 503, answer
                assert json.loads(answer[2])["error"]["code"] == "unavailable"
        # A WebSocket that ends gives its slot back (as soon as the server has seen it go).
        held.pop().close()
        wait_for(lambda: http_answer(url, token)[0] == 200 or None, timeout=15, what="a slot")
        with connect(ws_url(url), additional_headers=token, open_timeout=30) as ws:
            json.loads(ws.recv(timeout=30))
