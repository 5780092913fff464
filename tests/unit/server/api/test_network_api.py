"""The network parts of the HTTP API: request models, port lists and the routes' checks.

The sandbox routes run in a small FastAPI app with the real router and error handlers,
over fake services (no runsc, no kernel objects): what reaches the service, and what the
client is answered, are both checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import ValidationError

from stockade.errors import InvalidArgumentError, NotFoundError, SandboxTerminatedError
from stockade.server.api import sandboxes
from stockade.server.api.deps import require_token
from stockade.server.api.errors import install_error_handlers
from stockade.server.api.limits import MAX_PORTS as _MAX_PORTS
from stockade.server.api.sandboxes import _ports
from stockade.server.api.schemas import CreateSandbox, NetworkIn, PortIn, SandboxOut
from stockade.server.config import ServerConfig
from stockade.server.network.policy import NetworkPolicy
from stockade.server.service.creation import Creator
from stockade.server.service.sandboxes import CreateRequest
from stockade.server.state.records import (
    ExposedPort,
    NetworkAttachment,
    SandboxRecord,
    SandboxStatus,
)
from tests.unit.fakes import operator_access

TOKEN = "admin-token"
SB = "sb-0123456789abcdef"

# -- the request models -------------------------------------------------------------------


def test_create_accepts_ports_as_numbers_and_objects() -> None:
    body = CreateSandbox.model_validate({"ports": [8080, {"port": 9000, "public": True}]})
    assert body.ports == [8080, PortIn(port=9000, public=True)]
    defaulted = CreateSandbox.model_validate({"ports": [{"port": 1}]})
    assert defaulted.ports == [PortIn(port=1, public=False)]
    assert CreateSandbox.model_validate({}).ports == []


def test_create_network_fields() -> None:
    body = CreateSandbox.model_validate(
        {"outbound_cidr_allowlist": ["203.0.113.0/24"], "outbound_domain_allowlist": []}
    )
    assert body.block_network is False
    assert body.outbound_cidr_allowlist == ["203.0.113.0/24"]
    assert body.outbound_domain_allowlist == []  # not None: an allowlist of nothing
    assert CreateSandbox.model_validate({}).outbound_domain_allowlist is None


@pytest.mark.parametrize(
    "ports",
    [
        [0],
        [70000],
        [65536],
        [-1],
        [{"port": 0}],
        [{"port": 70000}],
        [{"port": 8080, "public": False, "extra": 1}],
        [{"public": True}],
        [None],
        ["http"],
        [8080.5],
        8080,
    ],
)
def test_create_rejects_bad_ports(ports: Any) -> None:
    with pytest.raises(ValidationError):
        CreateSandbox.model_validate({"ports": ports})


def test_create_accepts_the_port_range_bounds() -> None:
    assert CreateSandbox.model_validate({"ports": [1, 65535]}).ports == [1, 65535]
    assert PortIn.model_validate({"port": 65535}).port == 65535


@pytest.mark.parametrize(
    "body",
    [
        {"outbound_cidr_allowlist": "10.0.0.0/8"},
        {"outbound_domain_allowlist": [1]},
        {"block_network": "maybe"},
        {"mode": "open"},
        {"ports": [8080]},
    ],
)
def test_network_in_rejects(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        NetworkIn.model_validate(body)


# -- _ports ------------------------------------------------------------------------------


def test_ports_are_deduplicated_and_sorted() -> None:
    ports: list[int | PortIn] = [9000, 8080, PortIn(port=3000, public=True), 8080]
    assert _ports(ports) == [(3000, True), (8080, False), (9000, False)]
    assert _ports([]) == []


def test_ports_last_mention_decides_public() -> None:
    assert _ports([PortIn(port=80, public=True), 80]) == [(80, False)]
    assert _ports([80, PortIn(port=80, public=True)]) == [(80, True)]


def test_ports_limit() -> None:
    assert _MAX_PORTS == 64
    fits: list[int | PortIn] = list(range(1000, 1000 + _MAX_PORTS))
    assert len(_ports(fits)) == 64
    assert len(_ports(fits + [1000] * 100)) == 64  # repeats do not count
    with pytest.raises(InvalidArgumentError, match="at most 64 exposed ports"):
        _ports([*fits, PortIn(port=2000, public=False)])


# -- the routes, over fake services ------------------------------------------------------


@dataclass
class FakeSandboxes:
    """The part of SandboxService the network routes use."""

    records: dict[str, SandboxRecord] = field(default_factory=dict)
    creates: list[CreateRequest] = field(default_factory=list)
    policies: list[tuple[str, NetworkPolicy]] = field(default_factory=list)
    exposed: list[tuple[str, int, bool]] = field(default_factory=list)

    def add(self, sandbox_id: str, **changes: Any) -> SandboxRecord:
        record = SandboxRecord(
            id=sandbox_id, image="python", cpu=1.0, memory=512, disk=1024, timeout=300.0,
            status=SandboxStatus.RUNNING, created_at=1764180000.0, started_at=1764180000.5,
            expires_at=1764180300.0, access_token="sat_x",
            network=NetworkAttachment(1, "10.213.0.6", NetworkPolicy().to_dict()),
            ports=[ExposedPort(8080, public=False)],
        )  # fmt: skip
        for key, value in changes.items():
            setattr(record, key, value)
        self.records[sandbox_id] = record
        return record

    async def get(self, sandbox_id: str) -> SandboxRecord:
        record = self.records.get(sandbox_id)
        if record is None:
            raise NotFoundError(f"sandbox {sandbox_id} does not exist")
        return record

    async def get_running(self, sandbox_id: str) -> SandboxRecord:
        record = await self.get(sandbox_id)
        if not record.alive:
            raise SandboxTerminatedError(f"sandbox {sandbox_id} is {record.status}")
        return record

    async def create(self, req: CreateRequest) -> SandboxRecord:
        self.creates.append(req)
        return self.add(
            SB,
            network=NetworkAttachment(1, "10.213.0.6", req.policy.to_dict()),
            ports=[ExposedPort(p, public) for p, public in req.ports],
        )  # fmt: skip

    async def set_network(self, sandbox_id: str, policy: NetworkPolicy) -> SandboxRecord:
        record = await self.get_running(sandbox_id)
        self.policies.append((sandbox_id, policy))
        assert record.network is not None
        record.network.policy = policy.to_dict()
        return record

    async def expose(self, sandbox_id: str, port: int, public: bool) -> SandboxRecord:
        record = await self.get_running(sandbox_id)
        self.exposed.append((sandbox_id, port, public))
        others = [p for p in record.ports if p.port != port]
        record.ports = sorted([*others, ExposedPort(port, public)], key=lambda p: p.port)
        return record


class FakeImages:
    def check(self, name: str, tenant: str = "default") -> None:
        if name != "python":
            raise NotFoundError(f"image {name!r} does not exist; the images are: python")


class FakePools:
    async def take(self, req: CreateRequest, *, picked: Any = None) -> SandboxRecord | None:
        return None

    async def make_room(self, memory: int) -> None:
        return None


class FakeCode:
    """The code interpreter's hook at create: these images have no kernel to start."""

    def __init__(self) -> None:
        self.prewarmed: list[tuple[str, str]] = []

    def prewarm(self, sandbox_id: str, image: str, tenant: str = "default") -> None:
        self.prewarmed.append((sandbox_id, image))


@pytest.fixture
def fake() -> FakeSandboxes:
    return FakeSandboxes()


@pytest.fixture
def config(tmp_path: Path) -> ServerConfig:
    return ServerConfig(data_dir=tmp_path, cache_dir=tmp_path, token=TOKEN)


@pytest.fixture
async def api(fake: FakeSandboxes, config: ServerConfig) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(sandboxes.router, dependencies=[Depends(require_token)])
    # No snapshots here: no create restores one.
    pools, code = cast(Any, FakePools()), cast(Any, FakeCode())
    creator = Creator(cast(Any, fake), pools, cast(Any, None), code)
    app.state.services = SimpleNamespace(
        config=config, images=FakeImages(), sandboxes=fake, creator=creator,
        access=operator_access(TOKEN),
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as c:
        yield c


def error_of(resp: httpx.Response) -> tuple[int, str, str]:
    err = resp.json()["error"]
    return resp.status_code, err["code"], err["message"]


async def test_create_with_policy_and_ports(api: httpx.AsyncClient, fake: FakeSandboxes) -> None:
    resp = await api.post(
        "/v1/sandboxes",
        json={
            "outbound_cidr_allowlist": ["203.0.113.9/24"],
            "outbound_domain_allowlist": ["Example.COM.", "*.example.org"],
            "ports": [9000, {"port": 8080, "public": True}, 9000],
        },
    )
    assert resp.status_code == 201, resp.text
    [req] = fake.creates
    assert req.policy == NetworkPolicy(
        cidr_allowlist=("203.0.113.0/24",), domain_allowlist=("example.com", "*.example.org")
    )
    assert list(req.ports) == [(8080, True), (9000, False)]
    out = resp.json()
    assert out["network"] == {
        "mode": "allowlist",
        "block_network": False,
        "outbound_cidr_allowlist": ["203.0.113.0/24"],
        "outbound_domain_allowlist": ["example.com", "*.example.org"],
        "ip": "10.213.0.6",
        "reason": None,
    }
    assert out["ports"] == [
        {"port": 8080, "public": True, "path": f"/proxy/{SB}/8080/", "host": None},
        {"port": 9000, "public": False, "path": f"/proxy/{SB}/9000/", "host": None},
    ]
    assert out["access_token"] == "sat_x"


async def test_create_blocked(api: httpx.AsyncClient, fake: FakeSandboxes) -> None:
    resp = await api.post("/v1/sandboxes", json={"block_network": True})
    assert resp.status_code == 201, resp.text
    assert fake.creates[0].policy.mode == "blocked"
    assert resp.json()["network"]["mode"] == "blocked"


async def test_tunnel_domain_gives_hosts(
    api: httpx.AsyncClient, fake: FakeSandboxes, config: ServerConfig
) -> None:
    config.tunnel_domain = "sbx.example.com"
    fake.add(SB)
    resp = await api.get(f"/v1/sandboxes/{SB}")
    assert resp.json()["ports"] == [
        {"port": 8080, "public": False, "path": f"/proxy/{SB}/8080/",
         "host": f"8080-{SB}.sbx.example.com"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        ({"ports": [0]}, 422, "invalid_argument", "ports.0"),
        ({"ports": [70000]}, 422, "invalid_argument", "65535"),
        ({"ports": [{"port": 80, "extra": True}]}, 422, "invalid_argument", "unknown field"),
        ({"ports": list(range(1, 66))}, 422, "invalid_argument", "at most 64 exposed ports"),
        (
            {"block_network": True, "outbound_domain_allowlist": ["example.com"]},
            422,
            "invalid_argument",
            "cannot be combined",
        ),
        ({"outbound_cidr_allowlist": ["nope"]}, 422, "invalid_argument", "invalid CIDR 'nope'"),
        ({"outbound_cidr_allowlist": ["::/0"]}, 422, "invalid_argument", "IPv4"),
        (
            {"outbound_domain_allowlist": ["a.*.example.com"]},
            422,
            "invalid_argument",
            "invalid domain pattern",
        ),
        (
            {"outbound_domain_allowlist": [f"h{i}.example.com" for i in range(257)]},
            422,
            "invalid_argument",
            "at most 256",
        ),
        ({"outbound_cidr_allowlist": "10.0.0.0/8"}, 422, "invalid_argument", "outbound_cidr"),
        ({"network": "open"}, 422, "invalid_argument", "network: unknown field"),
        ({"image": "nope", "block_network": True}, 404, "not_found", "'nope'"),
    ],
)
async def test_create_refuses(
    api: httpx.AsyncClient,
    fake: FakeSandboxes,
    body: dict[str, Any],
    status: int,
    code: str,
    words: str,
) -> None:
    resp = await api.post("/v1/sandboxes", json=body)
    got_status, got_code, message = error_of(resp)
    assert (got_status, got_code) == (status, code), message
    assert words in message
    assert fake.creates == []  # refused before any work


async def test_create_needs_the_token(api: httpx.AsyncClient, fake: FakeSandboxes) -> None:
    resp = await api.post("/v1/sandboxes", json={}, headers={"Authorization": "Bearer wrong"})
    assert error_of(resp)[:2] == (401, "unauthorized")
    assert fake.creates == []


async def test_set_network(api: httpx.AsyncClient, fake: FakeSandboxes) -> None:
    fake.add(SB)
    resp = await api.put(
        f"/v1/sandboxes/{SB}/network",
        json={"outbound_domain_allowlist": ["API.Example.com"], "outbound_cidr_allowlist": []},
    )
    assert resp.status_code == 200, resp.text
    policy = NetworkPolicy(cidr_allowlist=(), domain_allowlist=("api.example.com",))
    assert fake.policies == [(SB, policy)]
    assert resp.json()["network"]["mode"] == "allowlist"
    assert resp.json()["network"]["outbound_cidr_allowlist"] == []

    resp = await api.put(f"/v1/sandboxes/{SB}/network", json={})
    assert resp.status_code == 200, resp.text
    assert fake.policies[-1] == (SB, NetworkPolicy())
    assert resp.json()["network"]["mode"] == "open"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"block_network": True, "outbound_cidr_allowlist": []}, "cannot be combined"),
        ({"outbound_cidr_allowlist": ["10.0.0.0/33"]}, "invalid CIDR"),
        ({"outbound_domain_allowlist": ["localhost"]}, "invalid domain pattern"),
        ({"ports": [8080]}, "ports: unknown field"),
        ({"outbound_domain_allowlist": "example.com"}, "outbound_domain_allowlist"),
    ],
)
async def test_set_network_refuses(
    api: httpx.AsyncClient, fake: FakeSandboxes, body: dict[str, Any], words: str
) -> None:
    fake.add(SB)
    resp = await api.put(f"/v1/sandboxes/{SB}/network", json=body)
    status, code, message = error_of(resp)
    assert (status, code) == (422, "invalid_argument"), message
    assert words in message
    assert fake.policies == []


async def test_set_network_of_an_unknown_sandbox(api: httpx.AsyncClient) -> None:
    resp = await api.put("/v1/sandboxes/sb-nope/network", json={})
    assert error_of(resp)[:2] == (404, "not_found")


async def test_expose_port(api: httpx.AsyncClient, fake: FakeSandboxes) -> None:
    fake.add(SB)
    resp = await api.post(f"/v1/sandboxes/{SB}/ports", json={"port": 9000, "public": True})
    assert resp.status_code == 200, resp.text
    assert fake.exposed == [(SB, 9000, True)]
    assert [p["port"] for p in resp.json()["ports"]] == [8080, 9000]
    resp = await api.post(f"/v1/sandboxes/{SB}/ports", json={"port": 9001})
    assert resp.status_code == 200, resp.text
    assert fake.exposed[-1] == (SB, 9001, False)


@pytest.mark.parametrize(
    "body", [{"port": 0}, {"port": 65536}, {"port": 80, "extra": 1}, {}, {"port": "x"}]
)
async def test_expose_refuses(
    api: httpx.AsyncClient, fake: FakeSandboxes, body: dict[str, Any]
) -> None:
    fake.add(SB)
    resp = await api.post(f"/v1/sandboxes/{SB}/ports", json=body)
    assert error_of(resp)[0] in (400, 422)
    assert fake.exposed == []


async def test_expose_limit(api: httpx.AsyncClient, fake: FakeSandboxes) -> None:
    fake.add(SB, ports=[ExposedPort(p, public=False) for p in range(1000, 1064)])
    resp = await api.post(f"/v1/sandboxes/{SB}/ports", json={"port": 2000})
    status, code, message = error_of(resp)
    assert (status, code) == (422, "invalid_argument")
    assert "at most 64 exposed ports" in message
    assert fake.exposed == []
    # Re-exposing one of them (to change `public`) is fine.
    resp = await api.post(f"/v1/sandboxes/{SB}/ports", json={"port": 1000, "public": True})
    assert resp.status_code == 200, resp.text
    assert fake.exposed == [(SB, 1000, True)]


async def test_expose_on_an_ended_sandbox(api: httpx.AsyncClient, fake: FakeSandboxes) -> None:
    fake.add(SB, status="terminated", reason="timeout")
    resp = await api.post(f"/v1/sandboxes/{SB}/ports", json={"port": 9000})
    assert error_of(resp)[:2] == (409, "sandbox_terminated")
    assert fake.exposed == []


# -- the response model ------------------------------------------------------------------


def test_sandbox_out_network() -> None:
    record = SandboxRecord(
        id=SB, image="python", cpu=1.0, memory=512, disk=1024, timeout=300.0,
        status=SandboxStatus.RUNNING,
        network=NetworkAttachment(None, None, NetworkPolicy(block_network=True).to_dict(),
                                  reason="networking is off"),
        ports=[ExposedPort(81, public=True)], access_token="sat_y",
    )  # fmt: skip
    out = SandboxOut.of(record, "t.example").model_dump()
    assert out["network"] == {
        "mode": "blocked", "block_network": True, "outbound_cidr_allowlist": None,
        "outbound_domain_allowlist": None, "ip": None, "reason": "networking is off",
    }  # fmt: skip
    assert out["ports"] == [
        {"port": 81, "public": True, "path": f"/proxy/{SB}/81/", "host": f"81-{SB}.t.example"}
    ]
    assert out["access_token"] == "sat_y"
    record.status = SandboxStatus.TERMINATED
    assert SandboxOut.of(record).access_token is None  # an ended sandbox's token is gone
    record.network = None
    assert SandboxOut.of(record).network is None


@pytest.mark.parametrize("ports", [[True], ["80"], [{"port": True}], [{"port": "8080"}]])
def test_ports_must_be_json_integers(ports: list[object]) -> None:
    with pytest.raises(ValidationError):
        CreateSandbox.model_validate({"ports": ports})
