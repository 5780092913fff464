"""The TypeScript SDK (sdk/typescript, npm package `@stockade/sdk`) against a real server.

One test builds it with its pinned tsc and runs its own suite (`npm test`: node's test
runner, real sandboxes on the session server, and the check that the committed OpenAPI
types match this server's /openapi.json). Another packs it with `npm pack`, installs the
tarball into an empty directory as a user would, type-checks examples/typescript against
the installed package and runs the example against the server. A third checks that the
SDK trusts an https server's own certificate through STOCKADE_CA_BUNDLE, and only then.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade import errors

from .conftest import LiveServer
from .helpers import force_cleanup

pytestmark = pytest.mark.runsc

REPO = Path(__file__).resolve().parents[2]
SDK = REPO / "sdk" / "typescript"
EXAMPLE = REPO / "examples" / "typescript"
NODE = shutil.which("node")
NPM = shutil.which("npm")


def _run(
    argv: list[str], cwd: Path, *, env: dict[str, str] | None = None, timeout: float = 240
) -> str:
    """Run a node/npm command and return its stdout; on failure, fail the test with its
    whole output."""
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"`{' '.join(argv)}` in {cwd} exited {done.returncode}:\n{output[-20000:]}")
    return done.stdout


def _node_env(server: LiveServer) -> dict[str, str]:
    return {
        **os.environ,
        "STOCKADE_URL": server.url,
        "STOCKADE_TOKEN": server.token,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }


@pytest.fixture(scope="module")
def npm(server: LiveServer) -> str:
    """npm, with sdk/typescript's node_modules installed exactly as package-lock.json says
    (`npm ci`, skipped while the lock file is unchanged since the last one)."""
    if NODE is None or NPM is None:
        pytest.fail("node >= 20 and npm are needed for the TypeScript SDK; run scripts/setup.sh")
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True)
    assert int(version.stdout.strip().lstrip("v").split(".")[0]) >= 20, version.stdout
    want = hashlib.sha256((SDK / "package-lock.json").read_bytes()).hexdigest()
    stamp = SDK / "node_modules" / ".stockade-lock-sha256"
    if not stamp.exists() or stamp.read_text() != want:
        _run([NPM, "ci", "--prefer-offline"], SDK, env=_node_env(server))
        stamp.write_text(want)
    return NPM


def test_typescript_sdk_suite(server: LiveServer, npm: str) -> None:
    # Python's code → class table, for the test that the TypeScript SDK maps alike.
    table = {
        code: [
            cls.__name__,
            cls.status,
            [b.__name__ for b in cls.__mro__[1:] if b.__module__ == errors.__name__],
        ]
        for code, cls in errors._BY_CODE.items()
    }
    env = {**_node_env(server), "STOCKADE_PY_ERROR_CODES": json.dumps(table)}
    output = _run([npm, "test"], SDK, env=env, timeout=180)
    # The whole suite ran: no test skipped for want of its inputs.
    assert "# fail 0" in output and "# skipped 0" in output, output[-5000:]


def test_typescript_package_installs_and_runs_the_example(
    server: LiveServer, npm: str, tmp_path: Path
) -> None:
    env = _node_env(server)
    _built(npm, server)  # so the pack need not run tsc again (its prepack script)
    argv = [npm, "pack", "--json", "--ignore-scripts", "--pack-destination", str(tmp_path)]
    packed = json.loads(_run(argv, SDK, env=env))
    files = {f["path"] for f in packed[0]["files"]}
    assert {"dist/index.js", "dist/index.d.ts", "package.json", "README.md"} <= files, files
    assert not any(f.startswith(("src/", "test/", "node_modules/")) for f in files), files
    tarball = tmp_path / packed[0]["filename"]

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(
        json.dumps({"name": "app", "private": True, "type": "module"})
    )
    types_node = json.loads((SDK / "package.json").read_text())["devDependencies"]["@types/node"]
    _run(
        [npm, "install", "--prefer-offline", str(tarball), f"@types/node@{types_node}"],
        app,
        env=env,
    )
    # The published types are enough to compile the example (strict), with the SDK's tsc.
    shutil.copy(EXAMPLE / "quickstart.ts", app / "quickstart.ts")
    shutil.copy(EXAMPLE / "tsconfig.json", app / "tsconfig.json")
    _run([str(SDK / "node_modules" / ".bin" / "tsc"), "-p", "tsconfig.json"], app, env=env)
    assert NODE is not None
    output = _run([NODE, "dist/quickstart.js"], app, env=env, timeout=120)
    assert (
        "exit code 3" in output and "streamed: line 3" in output and "read back: hello" in output
    ), output


def _built(npm: str, server: LiveServer) -> None:
    """dist/ as tsc makes it from the sources now (rebuilt when a source is newer)."""
    index = SDK / "dist" / "index.js"
    newest = max(p.stat().st_mtime for p in (SDK / "src").rglob("*.ts"))
    if not index.exists() or index.stat().st_mtime < newest:
        _run([npm, "run", "build"], SDK, env=_node_env(server))


@pytest.fixture(scope="module")
def tls_server() -> Iterator[LiveServer]:
    tmp = Path(tempfile.mkdtemp(prefix="stockade-ts-tls-"))
    live = LiveServer(
        data_dir=tmp / "data",
        token="sk_test_" + secrets.token_hex(8),
        extra_args=["--host", "127.0.0.1", "--tls-self-signed"],
    )
    live.start()
    try:
        yield live
    finally:
        live.terminate_all()
        live.stop()
        force_cleanup(tmp, live.data_dir)


# Lists sandboxes, then execs over wss:// in a new one; prints what happened as JSON.
_TLS_SCRIPT = """
import { Sandbox } from "./dist/index.js";
try {
  await Sandbox.list();
  const sb = await Sandbox.create({ image: "debian", timeout: 60 });
  const p = await sb.exec(["echo", "over wss"]);
  const out = await p.stdout.text();
  await p.wait();
  await sb.terminate();
  console.log(JSON.stringify({ ok: out }));
} catch (exc) {
  console.log(JSON.stringify({ error: exc.name, message: exc.message }));
}
"""


def test_typescript_sdk_trusts_a_ca_bundle(
    tls_server: LiveServer, server: LiveServer, npm: str
) -> None:
    _built(npm, server)
    assert NODE is not None
    env = {**_node_env(tls_server), "STOCKADE_URL": tls_server.url}
    env.pop("STOCKADE_CA_BUNDLE", None)
    argv = [NODE, "--input-type=module", "-e", _TLS_SCRIPT]
    refused = json.loads(_run(argv, SDK, env=env))
    assert refused["error"] == "StockadeConnectionError", refused
    assert "not trusted" in refused["message"] and "STOCKADE_CA_BUNDLE" in refused["message"]

    env["STOCKADE_CA_BUNDLE"] = str(tls_server.data_dir / "tls" / "cert.pem")
    assert json.loads(_run(argv, SDK, env=env)) == {"ok": "over wss\n"}
