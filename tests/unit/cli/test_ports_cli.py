"""``stockade expose`` and ``stockade unexpose`` through click's CliRunner, on the fake API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from stockade import Client
from stockade.cli._common import CliState
from stockade.cli.main import cli
from tests.unit.fakes import TOKEN
from tests.unit.test_sandbox_network import NetApi

Invoke = Callable[..., Result]


@pytest.fixture
def api(isolated_env: Path) -> NetApi:
    return NetApi()


@pytest.fixture
def invoke(api: NetApi) -> Invoke:
    def factory(url: str | None, token: str | None) -> Client:
        return Client(url or "http://127.0.0.1:7423", token or TOKEN, transport=api.transport)

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args), obj=CliState(client_factory=factory))

    return run


def test_expose_prints_the_url_and_the_token(invoke: Invoke, api: NetApi) -> None:
    result = invoke("expose", "sb-1", "9000")
    assert result.exit_code == 0, result.output
    assert result.stdout == "http://127.0.0.1:7423/proxy/sb-1/9000/\n"
    assert "X-Stockade-Access-Token: sat_test" in result.stderr
    assert [p["port"] for p in api.sandboxes["sb-1"]["ports"]] == [8080, 9000]


def test_expose_public_prints_no_token(invoke: Invoke, api: NetApi) -> None:
    result = invoke("expose", "sb-1", "9000", "--public")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert api.sandboxes["sb-1"]["ports"][-1]["public"] is True


def test_unexpose(invoke: Invoke, api: NetApi) -> None:
    invoke("expose", "sb-1", "9000")
    result = invoke("unexpose", "sb-1", "9000")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    request = api.last("DELETE")
    assert request.url.path == "/v1/sandboxes/sb-1/ports/9000"
    assert [p["port"] for p in api.sandboxes["sb-1"]["ports"]] == [8080]


def test_unexpose_an_unexposed_port_fails(invoke: Invoke, api: NetApi) -> None:
    result = invoke("unexpose", "sb-1", "9000")
    assert result.exit_code == 1
    assert "port 9000 of sandbox sb-1 is not exposed" in result.stderr
    assert [p["port"] for p in api.sandboxes["sb-1"]["ports"]] == [8080]


@pytest.mark.parametrize("port", ["0", "65536", "http"])
def test_unexpose_checks_the_port(invoke: Invoke, api: NetApi, port: str) -> None:
    result = invoke("unexpose", "sb-1", port)
    assert result.exit_code == 2
    assert "PORT" in result.stderr
    assert not any(r.method == "DELETE" for r in api.requests)
