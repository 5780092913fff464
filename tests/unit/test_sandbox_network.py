"""The SDK's network surface: policies, exposed ports and their URLs (sync and async)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import pytest

from stockade import (
    AsyncClient,
    AsyncSandbox,
    AuthenticationError,
    Client,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    ServerError,
    _base,
)
from stockade.models import NetworkInfo, PortInfo, SandboxInfo
from tests.unit.fakes import FakeApi, error_body, sandbox_record

NETWORK_KEYS = ("block_network", "outbound_cidr_allowlist", "outbound_domain_allowlist")


def network_out(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``network`` object the server answers for a policy given as in the API."""
    cidrs, domains = body.get("outbound_cidr_allowlist"), body.get("outbound_domain_allowlist")
    blocked = bool(body.get("block_network"))
    mode = "blocked" if blocked else "open" if cidrs is None and domains is None else "allowlist"
    return {"mode": mode, "block_network": blocked, "outbound_cidr_allowlist": cidrs,
            "outbound_domain_allowlist": domains, "ip": "10.213.0.10", "reason": None}  # fmt: skip


@dataclass
class NetApi(FakeApi):
    """FakeApi plus ``PUT .../network``, ``POST .../ports`` and ``DELETE .../ports/{port}``,
    answering like the server."""

    tunnel_domain: str = ""

    def port_out(self, sandbox_id: str, port: int, public: bool) -> dict[str, Any]:
        host = f"{port}-{sandbox_id}.{self.tunnel_domain}" if self.tunnel_domain else None
        return {"port": port, "public": public, "path": f"/proxy/{sandbox_id}/{port}/",
                "host": host}  # fmt: skip

    def _create(self, body: dict[str, Any]) -> httpx.Response:
        ports = body.pop("ports", [])
        network = {k: body.pop(k) for k in NETWORK_KEYS if k in body}
        sandbox_id = super()._create(body).json()["id"]
        record = self.sandboxes[sandbox_id]
        record["network"] = network_out(network)
        pairs = {p: False for p in ports if isinstance(p, int)}
        pairs.update({p["port"]: p.get("public", False) for p in ports if isinstance(p, dict)})
        record["ports"] = [self.port_out(sandbox_id, p, pub) for p, pub in sorted(pairs.items())]
        return httpx.Response(201, json=record)

    def _route(self, request: httpx.Request, path: str) -> httpx.Response:
        m = re.fullmatch(r"/v1/sandboxes/([^/]+)/ports/(\d+)", path)
        if m is not None and m.group(1) in self.sandboxes and request.method == "DELETE":
            record = self.sandboxes[m.group(1)]
            port = int(m.group(2))
            if all(p["port"] != port for p in record["ports"]):
                message = f"port {port} of sandbox {m.group(1)} is not exposed"
                return httpx.Response(404, json=error_body("not_found", message))
            record["ports"] = [p for p in record["ports"] if p["port"] != port]
            return httpx.Response(200, json=record)
        m = re.fullmatch(r"/v1/sandboxes/([^/]+)/(network|ports)", path)
        if m is None or m.group(1) not in self.sandboxes:
            return super()._route(request, path)
        sandbox_id, what = m.groups()
        record = self.sandboxes[sandbox_id]
        body = json.loads(request.content)
        if what == "network" and request.method == "PUT":
            assert set(body) <= set(NETWORK_KEYS), body
            record["network"] = network_out(body)
        elif what == "ports" and request.method == "POST":
            assert set(body) == {"port", "public"}, body
            ports = [p for p in record["ports"] if p["port"] != body["port"]]
            ports.append(self.port_out(sandbox_id, body["port"], body["public"]))
            record["ports"] = sorted(ports, key=lambda p: p["port"])
        else:
            return httpx.Response(405, json=error_body("bad_request", "method not allowed"))
        return httpx.Response(200, json=record)


@pytest.fixture
def api(isolated_env: Path) -> NetApi:
    """Replaces conftest's ``api``: the ``client``/``sb`` fixtures are built on this one."""
    return NetApi()


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


# -- create -------------------------------------------------------------------------------


def test_create_sends_policy_and_ports(client: Client, api: NetApi) -> None:
    sb = Sandbox.create(
        outbound_cidr_allowlist=("203.0.113.0/24",),  # any sequence: sent as a list
        outbound_domain_allowlist=["example.com", "*.example.org"],
        ports=[8080, MappingProxyType({"port": 9000, "public": True})],
        client=client,
    )
    request = api.last("POST")
    assert request.url.path == "/v1/sandboxes"
    assert body_of(request) == {
        "image": "python",
        "outbound_cidr_allowlist": ["203.0.113.0/24"],
        "outbound_domain_allowlist": ["example.com", "*.example.org"],
        "ports": [8080, {"port": 9000, "public": True}],
    }
    network = sb.last_info.network
    assert network is not None and network.mode == "allowlist"
    assert network.outbound_domain_allowlist == ["example.com", "*.example.org"]
    assert [(p.port, p.public) for p in sb.last_info.ports] == [(8080, False), (9000, True)]


def test_create_blocked(client: Client, api: NetApi) -> None:
    sb = Sandbox.create(block_network=True, client=client)
    assert body_of(api.last("POST")) == {"image": "python", "block_network": True}
    assert sb.last_info.network is not None and sb.last_info.network.mode == "blocked"
    assert sb.last_info.ports == []


def test_create_sends_an_empty_allowlist(client: Client, api: NetApi) -> None:
    """``[]`` means "nothing": it must not be dropped like None, which means "open"."""
    Sandbox.create(outbound_domain_allowlist=[], ports=[], client=client)
    assert body_of(api.last("POST")) == {"image": "python", "outbound_domain_allowlist": []}


@pytest.mark.parametrize("key", ["outbound_cidr_allowlist", "outbound_domain_allowlist"])
def test_create_refuses_a_string_allowlist_before_any_request(
    client: Client, api: NetApi, key: str
) -> None:
    before = len(api.requests)
    with pytest.raises(InvalidArgumentError, match=rf"{key} must be a list.*\['example\.com'\]"):
        kwargs: dict[str, Any] = {key: "example.com"}  # a str is a Sequence[str] too
        Sandbox.create(client=client, **kwargs)
    assert len(api.requests) == before


async def test_async_create_sends_policy_and_ports(aclient: AsyncClient, api: NetApi) -> None:
    sb = await AsyncSandbox.create(block_network=True, ports=[{"port": 3000}, 8080], client=aclient)
    assert body_of(api.last("POST")) == {
        "image": "python",
        "block_network": True,
        "ports": [{"port": 3000}, 8080],
    }
    assert [p.port for p in sb.last_info.ports] == [3000, 8080]
    before = len(api.requests)
    with pytest.raises(InvalidArgumentError, match="must be a list of strings"):
        await AsyncSandbox.create(outbound_cidr_allowlist="10.0.0.0/8", client=aclient)
    assert len(api.requests) == before


# -- set_network --------------------------------------------------------------------------


def test_set_network(sb: Sandbox, api: NetApi) -> None:
    assert sb.last_info.network is not None and sb.last_info.network.mode == "open"
    info = sb.set_network(outbound_domain_allowlist=["*.example.org"])
    request = api.last()
    assert (request.method, request.url.path) == ("PUT", "/v1/sandboxes/sb-1/network")
    assert body_of(request) == {"outbound_domain_allowlist": ["*.example.org"]}
    assert info is sb.last_info
    assert info.network is not None
    assert (info.network.mode, info.network.outbound_domain_allowlist) == (
        "allowlist",
        ["*.example.org"],
    )

    sb.set_network(block_network=True)
    assert body_of(api.last()) == {"block_network": True}
    assert sb.last_info.network is not None and sb.last_info.network.mode == "blocked"

    sb.set_network()  # back to the default
    assert body_of(api.last("PUT")) == {}
    assert sb.last_info.network is not None and sb.last_info.network.mode == "open"


def test_set_network_refuses_a_string(sb: Sandbox, api: NetApi) -> None:
    before = len(api.requests)
    with pytest.raises(InvalidArgumentError, match="outbound_cidr_allowlist must be a list"):
        sb.set_network(outbound_cidr_allowlist="10.0.0.0/8")
    assert len(api.requests) == before
    assert sb.last_info.network is not None and sb.last_info.network.mode == "open"


def test_set_network_escapes_the_id(client: Client, api: NetApi) -> None:
    api.sandboxes["sb/x"] = sandbox_record("sb/x")
    sb = Sandbox(SandboxInfo.from_json(api.sandboxes["sb/x"]), client)
    with pytest.raises(NotFoundError):
        sb.set_network()  # the fake has no route for the escaped id; the path shows it
    assert api.last().url.raw_path == b"/v1/sandboxes/sb%2Fx/network"


async def test_async_set_network(asb: AsyncSandbox, api: NetApi) -> None:
    info = await asb.set_network(
        outbound_cidr_allowlist=["203.0.113.0/24"], outbound_domain_allowlist=["example.com"]
    )
    request = api.last()
    assert (request.method, request.url.path) == ("PUT", "/v1/sandboxes/sb-1/network")
    assert body_of(request) == {
        "outbound_cidr_allowlist": ["203.0.113.0/24"],
        "outbound_domain_allowlist": ["example.com"],
    }
    assert asb.last_info is info
    assert info.network is not None and info.network.outbound_cidr_allowlist == ["203.0.113.0/24"]


# -- expose, unexpose, tunnel, tunnels ----------------------------------------------------


def test_expose(sb: Sandbox, client: Client, api: NetApi) -> None:
    url = sb.expose(9000, public=True)
    request = api.last()
    assert (request.method, request.url.path) == ("POST", "/v1/sandboxes/sb-1/ports")
    assert body_of(request) == {"port": 9000, "public": True}
    assert url == f"{client.url}/proxy/sb-1/9000/"
    assert [(p.port, p.public) for p in sb.last_info.ports] == [(8080, False), (9000, True)]
    sb.expose(9001)
    assert body_of(api.last()) == {"port": 9001, "public": False}


def test_expose_with_a_tunnel_domain(sb: Sandbox, api: NetApi) -> None:
    api.tunnel_domain = "sbx.example.com"
    assert sb.expose(9000) == "http://9000-sb-1.sbx.example.com/"
    assert sb.tunnel(9000) == "http://9000-sb-1.sbx.example.com/"


def test_tunnel_of_a_known_port_asks_nothing(sb: Sandbox, client: Client, api: NetApi) -> None:
    before = len(api.requests)
    assert sb.tunnel(8080) == f"{client.url}/proxy/sb-1/8080/"
    assert client.url.startswith("http://127.0.0.1:") and not client.url.endswith("/")
    assert len(api.requests) == before


def test_tunnel_fetches_info_once_for_an_unknown_port(
    sb: Sandbox, client: Client, api: NetApi
) -> None:
    # Exposed by someone else since this handle last looked.
    api.sandboxes["sb-1"]["ports"].append(api.port_out("sb-1", 9000, False))
    before = len(api.requests)
    assert sb.tunnel(9000) == f"{client.url}/proxy/sb-1/9000/"
    assert [(r.method, r.url.path) for r in api.requests[before:]] == [
        ("GET", "/v1/sandboxes/sb-1")
    ]
    assert [p.port for p in sb.last_info.ports] == [8080, 9000]


def test_tunnel_of_an_unexposed_port(sb: Sandbox, api: NetApi) -> None:
    before = len(api.requests)
    with pytest.raises(NotFoundError, match=r"port 7777 of sandbox sb-1 is not exposed") as info:
        sb.tunnel(7777)
    message = str(info.value)
    assert "(exposed: 8080)" in message
    assert "expose" in message  # names the fix
    assert len(api.requests) == before + 1  # one re-fetch, no more

    api.sandboxes["sb-1"]["ports"] = []
    with pytest.raises(NotFoundError, match=r"exposed: none"):
        sb.tunnel(7777)


def test_tunnels(sb: Sandbox, client: Client, api: NetApi) -> None:
    api.sandboxes["sb-1"]["ports"].append(api.port_out("sb-1", 9000, True))
    assert sb.tunnels() == {
        8080: f"{client.url}/proxy/sb-1/8080/",
        9000: f"{client.url}/proxy/sb-1/9000/",
    }
    assert api.last().method == "GET"
    api.sandboxes["sb-1"]["ports"] = []
    assert sb.tunnels() == {}


def test_port_url_uses_the_scheme_of_the_server() -> None:
    info = SandboxInfo.from_json(
        sandbox_record(
            "sb-1",
            ports=[
                {"port": 80, "public": True, "path": "/proxy/sb-1/80/", "host": "80-sb-1.x.dev"},
                {"port": 81, "public": False, "path": "/proxy/sb-1/81/", "host": None},
            ],
        )
    )
    assert _base.port_url("https://stockade.x.dev", info, 80) == "https://80-sb-1.x.dev/"
    assert _base.port_url("http://10.0.0.1:7423", info, 80) == "http://80-sb-1.x.dev/"
    assert _base.port_url("https://x.dev/", info, 81) == "https://x.dev/proxy/sb-1/81/"
    with pytest.raises(NotFoundError, match=r"exposed: 80, 81"):
        _base.port_url("https://x.dev", info, 82)


async def test_async_expose_tunnel_tunnels(
    asb: AsyncSandbox, aclient: AsyncClient, api: NetApi
) -> None:
    url = await asb.expose(9000, public=True)
    assert body_of(api.last("POST")) == {"port": 9000, "public": True}
    assert url == f"{aclient.url}/proxy/sb-1/9000/"
    assert await asb.tunnel(9000) == url

    api.sandboxes["sb-1"]["ports"].append(api.port_out("sb-1", 9100, False))
    before = len(api.requests)
    assert await asb.tunnel(9100) == f"{aclient.url}/proxy/sb-1/9100/"
    assert len(api.requests) == before + 1
    with pytest.raises(NotFoundError, match=r"exposed: 8080, 9000, 9100"):
        await asb.tunnel(1)
    assert set(await asb.tunnels()) == {8080, 9000, 9100}


def test_unexpose(sb: Sandbox, api: NetApi) -> None:
    sb.expose(9000)
    info = sb.unexpose(9000)
    request = api.last("DELETE")
    assert (request.url.path, request.content) == ("/v1/sandboxes/sb-1/ports/9000", b"")
    assert request.headers["authorization"] == "Bearer test-token"
    assert info is sb.last_info
    assert [p.port for p in info.ports] == [8080]
    assert sb.tunnels() == {8080: f"{sb.client.url}/proxy/sb-1/8080/"}
    with pytest.raises(NotFoundError, match=r"port 9000 of sandbox sb-1 is not exposed"):
        sb.tunnel(9000)


def test_unexpose_an_unexposed_port(sb: Sandbox, api: NetApi) -> None:
    with pytest.raises(NotFoundError, match=r"port 7777 of sandbox sb-1 is not exposed"):
        sb.unexpose(7777)
    assert [p.port for p in sb.last_info.ports] == [8080]  # unchanged


def test_unexpose_escapes_the_id(client: Client, api: NetApi) -> None:
    sb = Sandbox(SandboxInfo.from_json(sandbox_record("sb/../x")), client)
    with pytest.raises(NotFoundError):
        sb.unexpose(80)
    assert api.last("DELETE").url.raw_path == b"/v1/sandboxes/sb%2F..%2Fx/ports/80"


async def test_async_unexpose(asb: AsyncSandbox, aclient: AsyncClient, api: NetApi) -> None:
    await asb.expose(9000, public=True)
    info = await asb.unexpose(8080)
    assert api.last("DELETE").url.path == "/v1/sandboxes/sb-1/ports/8080"
    assert [(p.port, p.public) for p in info.ports] == [(9000, True)]
    assert await asb.tunnels() == {9000: f"{aclient.url}/proxy/sb-1/9000/"}
    with pytest.raises(NotFoundError, match="not exposed"):
        await asb.unexpose(8080)


# -- access token and errors --------------------------------------------------------------


def test_access_token(sb: Sandbox, api: NetApi) -> None:
    assert sb.access_token == "sat_test"
    api.sandboxes["sb-1"]["access_token"] = None  # an ended sandbox has none
    sb.info()
    assert sb.access_token == ""


async def test_async_access_token(asb: AsyncSandbox, api: NetApi) -> None:
    assert asb.access_token == "sat_test"
    api.sandboxes["sb-1"]["access_token"] = "sat_other"
    await asb.info()
    assert asb.access_token == "sat_other"


def test_forbidden_is_an_authentication_error(sb: Sandbox, api: NetApi) -> None:
    api.errors[("POST", "/v1/sandboxes/sb-1/ports")] = (
        403,
        error_body("forbidden", "this token may not expose ports"),
    )
    with pytest.raises(AuthenticationError, match="may not expose ports") as info:
        sb.expose(9000)
    assert (info.value.status, info.value.code) == (403, "forbidden")
    assert [p.port for p in sb.last_info.ports] == [8080]  # unchanged
    api.errors[("PUT", "/v1/sandboxes/sb-1/network")] = (403, b"")
    with pytest.raises(AuthenticationError, match="HTTP 403"):
        sb.set_network(block_network=True)


def test_invalid_argument_from_the_server(sb: Sandbox, api: NetApi) -> None:
    message = "invalid CIDR 'nope': expected an IPv4 network such as 203.0.113.0/24"
    api.errors[("PUT", "/v1/sandboxes/sb-1/network")] = (
        422,
        error_body("invalid_argument", message),
    )
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        sb.set_network(outbound_cidr_allowlist=["nope"])


# -- parsing ------------------------------------------------------------------------------


def test_sandbox_info_parses_network_and_ports() -> None:
    record = sandbox_record(
        "sb-9",
        network={"mode": "allowlist", "block_network": False,
                 "outbound_cidr_allowlist": ["203.0.113.0/24"],
                 "outbound_domain_allowlist": ["*.example.org"], "ip": "10.213.0.38",
                 "reason": None},
        ports=[{"port": 8080, "public": True, "path": "/proxy/sb-9/8080/",
                "host": "8080-sb-9.sbx.example.com"}],
        access_token="sat_9",
    )  # fmt: skip
    info = SandboxInfo.from_json(record)
    assert info.network == NetworkInfo(
        mode="allowlist",
        block_network=False,
        outbound_cidr_allowlist=["203.0.113.0/24"],
        outbound_domain_allowlist=["*.example.org"],
        ip="10.213.0.38",
        reason=None,
    )
    assert info.ports == [
        PortInfo(port=8080, public=True, path="/proxy/sb-9/8080/", host="8080-sb-9.sbx.example.com")
    ]
    assert info.access_token == "sat_9"
    assert SandboxInfo.from_json(info.to_json()) == info


def test_sandbox_info_without_network_or_ports() -> None:
    record = sandbox_record("sb-9", network=None, access_token=None)
    del record["ports"]
    info = SandboxInfo.from_json(record)
    assert info.network is None and info.ports == [] and info.access_token is None
    no_network = NetworkInfo.from_json({"mode": "blocked", "reason": "networking is off"})
    assert no_network == NetworkInfo(mode="blocked", reason="networking is off")


@pytest.mark.parametrize(
    "change",
    [
        {"ports": {"port": 8080}},
        {"ports": [{"port": 8080, "public": False}]},  # no path
        {"network": {"block_network": False}},  # no mode
        {"network": {"mode": "allowlist", "outbound_cidr_allowlist": "10.0.0.0/8"}},
        {"network": {"mode": "allowlist", "outbound_domain_allowlist": [1]}},
        {"network": {"mode": "open", "ip": 7}},
        {"access_token": 5},
    ],
)
def test_malformed_network_fields_are_server_errors(change: dict[str, Any]) -> None:
    record = sandbox_record("sb-9", **change)
    with pytest.raises(ServerError, match="malformed sandbox"):
        _base.parse(SandboxInfo.from_json, record, "sandbox")
