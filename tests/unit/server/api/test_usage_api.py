"""``GET /v1/usage`` over a real store and meter (only the clock is fake), and the SDK and
CLI that read it: who may read whose usage, the window, and bad times."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from click.testing import CliRunner
from fastapi import Depends, FastAPI

from stockade import AsyncClient, Client, InvalidArgumentError, NotFoundError, UsageReport
from stockade.cli._common import CliState
from stockade.cli.main import cli
from stockade.server.api import usage as usage_routes
from stockade.server.api.deps import require_token
from stockade.server.api.errors import install_error_handlers
from stockade.server.service.access import AccessService
from stockade.server.service.usage import Meter
from stockade.server.state.records import SandboxRecord, SnapshotRecord
from stockade.server.state.store import SQLiteStore

TOKEN = "admin-token"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a minute's start


class Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "state.db")
    yield store
    await store.close()


@pytest.fixture
async def world(store: SQLiteStore) -> SimpleNamespace:
    """Tenants acme and beta, a readonly key of acme, and a minute of use by each."""
    access = AccessService(store, TOKEN)
    await access.start()
    for name in ("acme", "beta"):
        await access.create_tenant(name, {})
    _, key = await access.create_key("acme", "readonly", name=None, expires_in=None)
    clock = Clock()
    meter = Meter(store, cpu_seconds=lambda sid: None, clock=clock)
    for tenant, memory in (("acme", 1024), ("beta", 2048)):
        record = SandboxRecord(
            id=f"sb-{tenant}", image="python", cpu=1, memory=memory, disk=1024, timeout=300,
            tenant=tenant,
        )  # fmt: skip
        meter.begin(record, T0)
    await store.put_snapshot(SnapshotRecord("sn-1", "sb-acme", T0, size=1 << 30, tenant="acme"))
    meter.count_exec("acme")
    clock.now = T0 + 60
    return SimpleNamespace(access=access, meter=meter, key=key, clock=clock)


@pytest.fixture
def app(world: SimpleNamespace) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(usage_routes.router, dependencies=[Depends(require_token)])
    app.state.services = SimpleNamespace(access=world.access, usage=world.meter)
    return app


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://stockade") as client:
        yield client


def _as(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


WINDOW = {"since": "2027-01-15T08:00:00Z", "until": str(T0 + 60)}


async def test_the_operator_reads_every_tenant_or_the_one_named(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/usage", params=WINDOW, headers=_as(TOKEN))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["since"], body["until"]) == (
        "2027-01-15T08:00:00.000000Z", "2027-01-15T08:01:00.000000Z",
    )  # fmt: skip
    acme, beta = body["tenants"]
    assert acme == {
        "tenant": "acme", "sandbox_seconds": 60.0, "cpu_seconds": 0.0,
        "memory_gib_seconds": 60.0, "snapshot_gib_hours": pytest.approx(1 / 60),
        "volume_gib_hours": 0.0, "execs": 1,
    }  # fmt: skip
    assert (beta["tenant"], beta["memory_gib_seconds"], beta["execs"]) == ("beta", 120.0, 0)
    r = await api.get("/v1/usage", params={**WINDOW, "tenant": "beta"}, headers=_as(TOKEN))
    assert [t["tenant"] for t in r.json()["tenants"]] == ["beta"]
    # A tenant that used nothing (or no longer exists: its bill still does) reads zeros.
    r = await api.get("/v1/usage", params={**WINDOW, "tenant": "gone"}, headers=_as(TOKEN))
    assert r.json()["tenants"] == [
        {"tenant": "gone", "sandbox_seconds": 0.0, "cpu_seconds": 0.0,
         "memory_gib_seconds": 0.0, "snapshot_gib_hours": 0.0, "volume_gib_hours": 0.0,
         "execs": 0},
    ]  # fmt: skip


async def test_a_key_reads_only_its_own_tenant(
    api: httpx.AsyncClient, world: SimpleNamespace
) -> None:
    r = await api.get("/v1/usage", params=WINDOW, headers=_as(world.key))  # a readonly key
    assert r.status_code == 200, r.text
    assert [t["tenant"] for t in r.json()["tenants"]] == ["acme"]
    own = await api.get("/v1/usage", params={**WINDOW, "tenant": "acme"}, headers=_as(world.key))
    assert own.json()["tenants"] == r.json()["tenants"]
    # Another tenant answers as one that does not exist, whether it does or not.
    for other in ("beta", "nobody"):
        r = await api.get("/v1/usage", params={"tenant": other}, headers=_as(world.key))
        assert r.status_code == 404, r.text
        assert r.json()["error"] == {
            "code": "not_found", "message": f"tenant '{other}' does not exist",
        }  # fmt: skip
    assert (await api.get("/v1/usage")).status_code == 401


async def test_the_window_defaults_to_this_month_until_now(
    api: httpx.AsyncClient, world: SimpleNamespace
) -> None:
    body = (await api.get("/v1/usage", headers=_as(TOKEN))).json()
    assert body["since"] == "2027-01-01T00:00:00.000000Z"
    assert body["until"] == "2027-01-15T08:01:00.000000Z"
    assert [t["sandbox_seconds"] for t in body["tenants"]] == [60.0, 60.0]
    # A window before any use: nothing.
    early = {"since": "2027-01-14", "until": "2027-01-15T07:59:00"}
    assert (await api.get("/v1/usage", params=early, headers=_as(TOKEN))).json()["tenants"] == []


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"since": "yesterday"}, "since='yesterday' is not a time"),
        ({"until": "2027-13-01"}, "until='2027-13-01' is not a time"),
        ({"since": "-5"}, "is not a time in Unix seconds"),
        ({"since": "0001-01-01T00:00:00+01:00"}, "is out of range"),
        ({"until": "9999-12-31T23:59:59-14:00"}, "is out of range"),
        ({"since": "2027-01-15T09:00:00Z", "until": "2027-01-15T08:00:00Z"}, "is before since"),
    ],
)
async def test_bad_times_answer_422_saying_why(
    api: httpx.AsyncClient, params: dict[str, str], says: str
) -> None:
    r = await api.get("/v1/usage", params=params, headers=_as(TOKEN))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_argument" and says in error["message"]


async def test_the_async_sdk_reads_a_typed_report(app: FastAPI, world: SimpleNamespace) -> None:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with AsyncClient("http://stockade", TOKEN, transport=transport) as client:
        report = await client.usage(
            since=dt.datetime(2027, 1, 15, 8, 0),  # naive: UTC
            until=dt.datetime(2027, 1, 15, 9, 1, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        )
        assert isinstance(report, UsageReport)
        assert report.since == dt.datetime(2027, 1, 15, 8, 0, tzinfo=dt.UTC)
        assert report.until == dt.datetime(2027, 1, 15, 8, 1, tzinfo=dt.UTC)
        acme, beta = report.tenants
        assert (acme.tenant, acme.sandbox_seconds, acme.execs) == ("acme", 60.0, 1)
        assert beta.memory_gib_seconds == 120.0
        [only] = (await client.usage("beta", since=T0, until="2027-01-15T08:01:00Z")).tenants
        assert only.tenant == "beta"
        with pytest.raises(InvalidArgumentError, match="is before since"):
            await client.usage(since=T0 + 60, until=T0)
    async with AsyncClient("http://stockade", world.key, transport=transport) as client:
        with pytest.raises(NotFoundError, match="tenant 'beta' does not exist"):
            await client.usage("beta")


_ANSWER = {
    "since": "2026-12-01T00:00:00.000000Z",
    "until": "2026-12-07T12:00:00.000000Z",
    "tenants": [
        {"tenant": "acme", "sandbox_seconds": 7260.5, "cpu_seconds": 812.25,
         "memory_gib_seconds": 3630.25, "snapshot_gib_hours": 1.5, "volume_gib_hours": 24.0,
         "execs": 1234},
    ],
}  # fmt: skip


def test_the_sync_sdk_and_the_cli_send_the_window_and_print_it() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=_ANSWER)

    def factory(url: str | None, token: str | None) -> Client:
        return Client("http://stockade", TOKEN, transport=httpx.MockTransport(handler))

    with factory(None, None) as client:
        report = client.usage("acme", since=1_765_000_000)
    assert dict(seen[-1].url.params) == {"tenant": "acme", "since": "1765000000.0"}
    assert report.tenants[0].execs == 1234

    result = CliRunner().invoke(cli, ["usage", "--json"], obj=CliState(client_factory=factory))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == _ANSWER
    assert dict(seen[-1].url.params) == {}

    before = time.time()
    result = CliRunner().invoke(
        cli, ["usage", "--tenant", "acme", "--since", "7d", "--until", "2026-12-07"],
        obj=CliState(client_factory=factory),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    params = dict(seen[-1].url.params)
    assert params["tenant"] == "acme"
    assert before - 7 * 86400 - 1 <= float(params["since"]) <= time.time() - 7 * 86400
    assert float(params["until"]) == dt.datetime(2026, 12, 7, tzinfo=dt.UTC).timestamp()
    lines = result.output.splitlines()
    assert "2026-12-01 00:00 UTC to 2026-12-07 12:00 UTC" in lines[0]
    assert lines[1].split()[:2] == ["TENANT", "SANDBOX-S"]
    assert lines[2].split() == ["acme", "7,260.5", "812.2", "3,630.2", "1.500", "24.000", "1,234"]

    bad = CliRunner().invoke(
        cli, ["usage", "--since", "soon"], obj=CliState(client_factory=factory)
    )
    assert bad.exit_code == 2 and "is not a time" in bad.output
