"""The ``stockade`` CLI through click's CliRunner, on the fake API and exec server."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from click.testing import CliRunner, Result

from stockade import Client
from stockade.cli._common import CliState, age
from stockade.cli.main import cli
from tests.unit.fakes import TOKEN, FakeApi, FakeExecServer
from tests.unit.test_tls import TlsServer

Invoke = Callable[..., Result]

COMMANDS = ["serve", "images", "create", "ls", "info", "rm", "logs", "run", "exec", "shell", "code",
            "code-context", "cp", "network", "expose", "unexpose", "port-forward", "image",
            "snapshot", "pause", "resume", "fork", "volume", "changes", "set-timeout"]  # fmt: skip


@pytest.fixture
def invoke(api: FakeApi, exec_server: FakeExecServer) -> Invoke:
    def factory(url: str | None, token: str | None) -> Client:
        return Client(url or exec_server.url, token or TOKEN, transport=api.transport)

    def run(*args: str, input: str | bytes | None = None) -> Result:
        state = CliState(client_factory=factory)
        return CliRunner().invoke(cli, list(args), obj=state, input=input)

    return run


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_create_prints_the_id(invoke: Invoke, api: FakeApi) -> None:
    result = invoke(
        "create", "--cpu", "0.5", "--memory", "256", "--env", "A=1=2", "--tag", "user=x",
        "--entrypoint", "python3 -m http.server 8000", "--timeout", "60",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == "sb-2\n"
    body = json.loads(api.last("POST").content)
    assert body == {
        "image": "python", "cpu": 0.5, "memory": 256, "timeout": 60.0, "env": {"A": "1=2"},
        "tags": {"user": "x"}, "entrypoint": ["python3", "-m", "http.server", "8000"],
    }  # fmt: skip


def test_create_json(invoke: Invoke) -> None:
    result = invoke("create", "--json")
    assert json.loads(result.stdout)["id"] == "sb-2"


def test_bad_pair_is_a_usage_error(invoke: Invoke) -> None:
    result = invoke("create", "--env", "NOEQUALS")
    assert result.exit_code == 2
    assert "expected KEY=VALUE" in result.stderr


def test_create_builds_a_missing_image_first(invoke: Invoke, api: FakeApi) -> None:
    result = invoke("create", "--image", "base")
    assert result.exit_code == 0, result.output
    assert "building image base" in result.stderr
    assert "I: Retrieving base" in result.stderr
    assert [r.url.path for r in api.requests[-3:]] == [
        "/v1/images", "/v1/images/base/build", "/v1/sandboxes",
    ]  # fmt: skip


def test_ls_table_and_json(invoke: Invoke, api: FakeApi) -> None:
    invoke("create", "--tag", "team=t")
    result = invoke("ls")
    assert result.exit_code == 0
    for text in ("ID", "STATUS", "sb-1", "sb-2", "running", "512 MiB", "user=x", "team=t"):
        assert text in result.stdout
    result = invoke("ls", "--tag", "team=t", "--status", "running", "--json")
    assert [s["id"] for s in json.loads(result.stdout)] == ["sb-2"]


def test_info(invoke: Invoke) -> None:
    result = invoke("info", "sb-1")
    assert "status" in result.stdout and "running" in result.stdout
    assert json.loads(invoke("info", "sb-1", "--json").stdout)["memory"] == 512


def test_rm_keeps_going_after_an_error(invoke: Invoke, api: FakeApi) -> None:
    result = invoke("rm", "sb-nope", "sb-1")
    assert result.exit_code == 1
    assert result.stdout == "sb-1\n"
    assert "error: sandbox sb-nope does not exist" in result.stderr
    assert api.sandboxes["sb-1"]["status"] == "terminated"


def test_errors_print_one_line_and_exit_1(invoke: Invoke) -> None:
    result = invoke("info", "sb-nope")
    assert result.exit_code == 1
    assert result.stderr == "error: sandbox sb-nope does not exist\n"


def test_missing_token_message(isolated_env: Path) -> None:
    result = CliRunner().invoke(cli, ["ls"], obj=CliState())
    assert result.exit_code == 1
    assert "STOCKADE_TOKEN" in result.stderr and "Traceback" not in result.output


def test_run_streams_and_exits_with_the_code(invoke: Invoke, api: FakeApi) -> None:
    result = invoke("run", "--", "echo", "hi", "there")
    assert result.exit_code == 0, result.output
    assert result.stdout == "hi there\n"
    assert api.sandboxes["sb-2"]["status"] == "terminated"
    result = invoke("run", "exit", "3")  # no `--` needed: options end at the command
    assert result.exit_code == 3
    assert result.stderr == "bye\n"
    assert api.sandboxes["sb-3"]["status"] == "terminated"


def test_run_timeout(invoke: Invoke, api: FakeApi, exec_server: FakeExecServer) -> None:
    result = invoke("run", "--timeout", "5", "--", "slow")
    assert result.exit_code == 124
    assert "ran past timeout=5s" in result.stderr
    assert json.loads(api.last("POST").content)["timeout"] == 35.0
    assert exec_server.starts[-1]["timeout"] == 5.0
    assert api.sandboxes["sb-2"]["status"] == "terminated"


def test_run_forwards_piped_stdin(invoke: Invoke) -> None:
    result = invoke("run", "--", "cat", input="piped data")
    assert result.stdout == "piped data"


def test_exec(invoke: Invoke, exec_server: FakeExecServer) -> None:
    result = invoke("exec", "--env", "A=1", "--workdir", "/w", "sb-1", "--", "cat", input="x\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == "x\n"
    start = exec_server.starts[-1]
    assert (start["argv"], start["env"], start["workdir"]) == (["cat"], {"A": "1"}, "/w")


def test_exec_unknown_sandbox(invoke: Invoke) -> None:
    result = invoke("exec", "sb-nope", "--", "true")
    assert result.exit_code == 1
    assert "error: sandbox sb-nope does not exist" in result.stderr


def test_exec_needs_a_command(invoke: Invoke) -> None:
    result = invoke("exec", "sb-1", "--")
    assert result.exit_code == 2


def test_cp_both_ways(invoke: Invoke, api: FakeApi, tmp_path: Path) -> None:
    local = tmp_path / "data.csv"
    local.write_bytes(b"a,b\n1,2\n")
    assert invoke("cp", str(local), "sb-1:/app/data.csv").exit_code == 0
    assert api.files[("sb-1", "/app/data.csv")] == b"a,b\n1,2\n"
    api.dirs.add(("sb-1", "/app"))
    assert invoke("cp", str(local), "sb-1:/app").exit_code == 0  # into the directory
    assert ("sb-1", "/app/data.csv") in api.files
    back = tmp_path / "back"
    back.mkdir()
    assert invoke("cp", "sb-1:/app/data.csv", str(back)).exit_code == 0
    assert (back / "data.csv").read_bytes() == b"a,b\n1,2\n"
    assert invoke("cp", "sb-1:/app/data.csv", "-").stdout == "a,b\n1,2\n"
    assert invoke("cp", "-", "sb-1:/in.txt", input="from stdin").exit_code == 0
    assert api.files[("sb-1", "/in.txt")] == b"from stdin"


def test_cp_refuses_directories_and_two_locals(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("cp", str(tmp_path), "sb-1:/x")
    assert result.exit_code == 1
    assert "only files are supported" in result.stderr
    result = invoke("cp", "a", "b")
    assert "exactly one of SRC and DEST" in result.stderr


def test_logs(invoke: Invoke) -> None:
    result = invoke("logs", "-f", "sb-1")
    assert result.stdout == "booting\nserving on :8000 ✓\n"


def test_images(invoke: Invoke) -> None:
    result = invoke("images")
    assert "python" in result.stdout and "261 MiB" in result.stdout
    assert [i["name"] for i in json.loads(invoke("images", "--json").stdout)] == [
        "python", "base",
    ]  # fmt: skip


def test_shell_needs_a_terminal(invoke: Invoke) -> None:
    result = invoke("shell", "sb-1")
    assert result.exit_code == 1
    assert "needs a terminal" in result.stderr


def test_serve_passes_its_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import stockade.server.main

    seen: dict[str, Any] = {}
    monkeypatch.setattr(stockade.server.main, "run_server", lambda **kw: seen.update(kw))
    args = ["serve", "--port", "9999", "--data-dir", str(tmp_path / "d"),
            "--max-code-output-bytes", "65536", "--doze-after", "2.5",
            "--audit-retention", "86400", "--no-audit"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert seen == {"host": "127.0.0.1", "port": 9999, "data_dir": tmp_path / "d",
                    "cache_dir": None, "pools": None, "network": None, "dns_upstreams": (),
                    "tunnel_domain": None, "code_output_limit": 65536,
                    "retention": None, "doze_after": 2.5, "max_log_bytes": None,
                    "tls_cert": None, "tls_key": None, "tls_self_signed": None,
                    "audit_retention": 86400.0, "audit": False}  # fmt: skip
    seen.clear()
    assert CliRunner().invoke(cli, ["serve", "--tls-self-signed"]).exit_code == 0
    assert seen["tls_self_signed"] is True and not seen["tls_cert"]
    seen.clear()
    args = ["serve", "--tls-cert", "c.pem", "--tls-key", "k.pem"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert (seen["tls_cert"], seen["tls_key"]) == (Path("c.pem"), Path("k.pem"))
    seen.clear()
    # The flag's name before it said its unit still works, unlisted.
    assert CliRunner().invoke(cli, ["serve", "--code-output-limit", "4096"]).exit_code == 0
    assert seen["code_output_limit"] == 4096 and "legacy_code_output_limit" not in seen
    assert "--code-output-limit" not in CliRunner().invoke(cli, ["serve", "--help"]).output
    seen.clear()
    args = ["serve", "--no-network", "--dns-upstream", "127.0.0.1:5353",
            "--tunnel-domain", "sbx.example.com"]  # fmt: skip
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert seen["network"] is False and seen["dns_upstreams"] == ("127.0.0.1:5353",)
    assert seen["tunnel_domain"] == "sbx.example.com"
    seen.clear()
    assert CliRunner().invoke(cli, ["serve", "--retention", "3600"]).exit_code == 0
    assert seen["retention"] == 3600
    assert CliRunner().invoke(cli, ["serve", "--retention", "-1"]).exit_code == 2
    seen.clear()
    args = ["serve", "--pool", "python=4", "--pool", "debian=1"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert seen["pools"] == "python=4,debian=1"


def test_serve_without_the_server_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "stockade.server.main")
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 1
    assert "pip install 'stockade[server]'" in result.stderr


def test_age() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert age(None) == "-"
    assert [age(now - timedelta(seconds=s), now) for s in (5, 300, 7200, 172800)] == [
        "5s", "5m", "2h", "2d",
    ]  # fmt: skip


def test_global_url_and_token_reach_the_client(api: FakeApi, exec_server: FakeExecServer) -> None:
    seen: list[tuple[str | None, str | None]] = []

    def factory(url: str | None, token: str | None) -> Client:
        seen.append((url, token))
        return Client(exec_server.url, TOKEN, transport=api.transport)

    state = CliState(client_factory=factory)
    result = CliRunner().invoke(cli, ["--url", "http://h:1", "--token", "tk", "ls"], obj=state)
    assert result.exit_code == 0, result.output
    assert seen == [("http://h:1", "tk")]


def test_ctrl_c_exits_130(isolated_env: Path) -> None:
    def interrupted(url: str | None, token: str | None) -> Client:
        raise KeyboardInterrupt

    result = CliRunner().invoke(cli, ["ls"], obj=CliState(client_factory=interrupted))
    assert result.exit_code == 130


def test_run_terminates_the_sandbox_on_ctrl_c(
    invoke: Invoke, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stockade.cli.run

    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(stockade.cli.run, "stream_command", interrupted)
    result = invoke("run", "--", "sleep", "100")
    assert result.exit_code == 130
    assert api.sandboxes["sb-2"]["status"] == "terminated"


def test_ls_never_truncates_an_id_in_a_narrow_terminal() -> None:
    from rich.console import Console

    from stockade.cli.sandboxes import _table
    from stockade.models import SandboxInfo

    info = SandboxInfo(
        id="sb-d7662e8a9764c58f", status="terminated", image="img-0123456789abcdef:a-long-tag",
        cpu=1, memory=512, disk=1024, timeout=300, reason="agent_protocol", tags={"user": "me"},
    )  # fmt: skip
    console = Console(width=80, record=True)
    console.print(_table([info]))
    assert "sb-d7662e8a9764c58f" in console.export_text()


@pytest.fixture
def tls_server() -> Iterator[TlsServer]:
    server = TlsServer(trustme.CA())
    yield server
    server.close()


def test_ca_bundle_trusts_a_private_server(
    tls_server: TlsServer, tmp_path: Path, isolated_env: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    tls_server.ca.cert_pem.write_to_path(str(ca_file))
    base = ["--url", tls_server.url(), "--token", TOKEN]
    refused = CliRunner().invoke(cli, [*base, "images"])
    assert refused.exit_code == 1
    assert "is not trusted" in refused.stderr and "STOCKADE_CA_BUNDLE" in refused.stderr
    trusted = CliRunner().invoke(cli, [*base, "--ca-bundle", str(ca_file), "images"])
    assert trusted.exit_code == 0, trusted.output
    missing = CliRunner().invoke(cli, [*base, "--ca-bundle", str(tmp_path / "no.pem"), "images"])
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
