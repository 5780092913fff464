"""Schemathesis against a real server: every operation of its /openapi.json, fuzzed.

The `st` CLI runs its coverage, fuzzing and stateful phases against a `stockade serve` of
this module's own (a private data and layer directory), with real runsc sandboxes: the
stateful phase creates, execs into, snapshots, forks and ends them. It runs as a
subprocess because the CLI is what judges the run as a whole: its warnings say when the
schema and the API disagree (an operation whose generated data the API mostly rejects,
or that only ever answers 404), and the config below makes those fail the run.

What it must not find: a 5xx, a response slower than the request timeout, a traceback in
a body, or an error answered in any shape but ``{"error": {"code", "message"}}``
(fuzz_hooks.py). Requests that carry no token, or a wrong one, are part of it (the
coverage phase, and the `ignored_auth` check on every operation).

The run is bounded by the schema's own limits (memory, timeouts, pool sizes, fork counts:
whatever it says the API accepts) and by a fixed seed and example count, so a failure
replays with the same data. What a schema cannot give, fuzz_hooks.py and the config
supply: a registry on loopback for every image reference (no test reaches the internet),
live sandboxes for the valid cases to name (a keeper for the operations that leave a
sandbox as it was, an expendable one for those that end it), an upload's digest that is
its body's, and no endless `follow` of a live sandbox's log.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import REPO, LiveServer, private_cache
from .fuzz_hooks import EXPENDABLE
from .helpers import force_cleanup
from .registry import Registry, start_registry

SEED = 20250704
# Per operation, in the fuzzing phase (the coverage phase derives its cases from the schema).
MAX_EXAMPLES = 10
# Exports pack a whole image into a tarball (seconds each) and a fork restores up to 32
# sandboxes: fewer of those. The coverage phase sends exports its invalid cases only.
SLOW_EXAMPLES = 3
MIN_REQUESTS = 2000
# A response slower than this is a hang. The slowest legitimate answer is a fork of 32
# sandboxes (the schema's maximum; about 45 s on a 2-core machine). Building the
# code-interpreter image takes longer still, so the fixture does that before the run.
REQUEST_TIMEOUT = 120
# The `st` run itself; it takes about 3 minutes on a 2-core machine.
RUN_TIMEOUT = 420
# Warnings that mean the schema and the API disagree, or that operations went untested.
FAIL_ON_WARNINGS = [
    "missing_auth",
    "missing_test_data",
    "validation_mismatch",
    "missing_deserializer",
    "unused_openapi_auth",
    "unsupported_regex",
    "method_not_allowed",
    "unresolvable_reference",
]
ALIVE = ("starting", "running", "paused")


@dataclass
class Target:
    server: LiveServer
    registry: Registry
    work: Path
    keeper: str  # a sandbox that lives through the run (see _config)
    context: str  # a code context in it


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    root = Path(tempfile.mkdtemp(prefix="stockade-fuzz-"))
    # A registry of its own on loopback, empty: pulls end in a 404 from it, never on the
    # internet (fuzz_hooks.py points every generated reference at it).
    registry = start_registry(root, "registry", root / "registry")
    server = LiveServer(data_dir=root / "data", token="sk_test_" + secrets.token_hex(8))
    # Its own layer store: the fuzzer builds, tags, deletes and collects images.
    server.extra_args = ["--cache-dir", str(private_cache(root))]
    try:
        server.start()
        keeper, context = _prepare(server)
        yield Target(server, registry, root, keeper, context)
    finally:
        try:
            _end_everything(server)
        finally:
            server.stop()
            registry.stop()
            force_cleanup(root, server.data_dir)


def _prepare(server: LiveServer) -> tuple[str, str]:
    """Build the code-interpreter image (a minute of pip installs from local wheels) before
    the run, so that no single fuzzed request waits for it; then start a sandbox of it
    with a code context, for the fuzzer to find alive (the IDs it makes up name nothing,
    and the sandboxes it creates itself it also ends, pauses or lets time out)."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=600) as http:
        with http.stream("POST", "/v1/images/code-interpreter/build") as r:
            assert r.status_code == 200, r.read()
            events = [json.loads(line) for line in r.iter_lines() if line]
        assert events and events[-1]["type"] == "done", events[-5:]
        # Room for the kernels of the contexts the run starts in it (each a Python process
        # with numpy and pandas), and a port for the run to stop exposing.
        body = {"image": "code-interpreter", "timeout": 3600, "memory": 4096, "ports": [8080]}
        created = http.post("/v1/sandboxes", json=body)
        assert created.status_code == 201, created.text
        keeper = str(created.json()["id"])
        context = http.post(f"/v1/sandboxes/{keeper}/code/contexts", json={"language": "python"})
        assert context.status_code == 201, context.text
        return keeper, str(context.json()["id"])


def _end_everything(server: LiveServer) -> None:
    """Empty the pools the fuzzer made and end every sandbox it left alive (running,
    paused or still starting); force_cleanup removes whatever remains after that."""
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=120) as http:
        for pool in http.get("/v1/pools").json()["pools"]:
            http.put(f"/v1/pools/{pool['image']}", json={"size": 0})
        for status in ALIVE:
            for sb in http.get("/v1/sandboxes", params={"status": status}).json()["sandboxes"]:
                http.delete(f"/v1/sandboxes/{sb['id']}")
        left = [
            sb["id"]
            for status in ALIVE
            for sb in http.get("/v1/sandboxes", params={"status": status}).json()["sandboxes"]
        ]
    assert not left, f"sandboxes still alive after the run: {left}"


def _config(report_dir: Path, keeper: str, context: str) -> str:
    # Only these checks: a 5xx, an operation that ignores a missing or wrong token, a
    # traceback or a misshapen error (fuzz_hooks.py), and a slow answer.
    checks = "".join(
        f"{name}.enabled = true\n"
        for name in ("not_a_server_error", "ignored_auth", "stockade_error_bodies")
    )
    return f"""
seed = {SEED}
request-timeout = {REQUEST_TIMEOUT}
workers = 1
hooks = "tests.integration.fuzz_hooks"

[warnings]
fail-on = {json.dumps(FAIL_ON_WARNINGS)}

[cache]
enabled = false

[auth.openapi.bearer]
bearer = "${{STOCKADE_FUZZ_TOKEN}}"

[generation]
max-examples = {MAX_EXAMPLES}
deterministic = true
database = "none"

[checks]
enabled = false
{checks}max_response_time = {REQUEST_TIMEOUT}

[phases]
examples.enabled = false
coverage.enabled = true
fuzzing.enabled = true
stateful.enabled = true

[reports]
directory = "{report_dir}"
ndjson.enabled = true
json.enabled = true

[dictionaries.keeper]
values = ["{keeper}"]

[dictionaries.context]
values = ["{context}"]

[dictionaries.paths]
values = ["/etc/hostname", "/etc/os-release", "/tmp"]

# Half of the cases of the operations that use a sandbox without ending it name the keeper,
# and a third of their paths one that exists; the others get made-up values and the IDs of
# sandboxes the run created. (Not the operations that end, pause, time out or fork it, nor
# removals: the keeper must live through the run, whole. fuzz_hooks.py keeps it from them.)
[[operations]]
include-path-regex = '^/v1/sandboxes/\\{{sandbox_id\\}}/(exec|files|code|logs|ports|network)'
exclude-method = "DELETE"
parameters = {{ "path.sandbox_id" = {{ dictionary = "keeper", probability = 0.5 }}, \
"path.context_id" = {{ dictionary = "context", probability = 0.5 }}, \
"query.path" = {{ dictionary = "paths", probability = 0.3 }} }}

[[operations]]
include-path = "/v1/sandboxes/{{sandbox_id}}"
include-method = "GET"
parameters = {{ "path.sandbox_id" = {{ dictionary = "keeper", probability = 0.5 }} }}

[dictionaries.expendable]
values = ["{EXPENDABLE}"]

# And a third of the cases of those that end, pause or time one out name the expendable
# sandbox (fuzz_hooks.py swaps in a live one).
[[operations]]
include-path-regex = '^/v1/sandboxes/\\{{sandbox_id\\}}(/(files|timeout|pause|resume|snapshots))?$'
exclude-method = ["GET", "PUT"]
parameters = {{ "path.sandbox_id" = {{ dictionary = "expendable", probability = 0.3 }}, \
"query.path" = {{ dictionary = "paths", probability = 0.3 }} }}

# Signed file URLs take no bearer credential (the URL's signature is it): every generated
# case is a 403, by design. Their checks are test_signed_urls.py's and test_file_verbs.py's.
[[operations]]
include-path-regex = '^/v1/signed/'
enabled = false

# The file verbs act on paths that must exist (rename's source, chmod's and a watch's path,
# a URL's file), and a PATCH of a sandbox must name a live one: most generated cases do
# not, which is a 404 or 422, not a finding. Their answers are still checked; only the
# coverage warnings are off for them.
[[operations]]
include-path-regex = '^/v1/sandboxes/[^/]+/files/(rename|chmod|watch|upload-url|download-url)$'
warnings = false

[[operations]]
include-path = "/v1/sandboxes/{{sandbox_id}}"
include-method = "PATCH"
warnings = false

[[operations]]
include-path = "/v1/images/export"
generation.max-examples = {SLOW_EXAMPLES}
phases.coverage.generation.mode = "negative"

[[operations]]
include-path = "/v1/sandboxes/{{sandbox_id}}/fork"
generation.max-examples = {SLOW_EXAMPLES}
"""


def _interactions(report: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished:
            out.extend(finished["recorder"].get("interactions", {}).values())
    return out


# Past pytest-timeout's default: the fixture builds an image first, and the run itself is
# bounded by RUN_TIMEOUT.
@pytest.mark.timeout(RUN_TIMEOUT + 180)
def test_schemathesis_finds_nothing(target: Target) -> None:
    server = target.server
    run_dir = target.work / "st"
    run_dir.mkdir()
    config = run_dir / "schemathesis.toml"
    config.write_text(_config(run_dir / "reports", target.keeper, target.context))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "STOCKADE_FUZZ_URL": server.url,
        "STOCKADE_FUZZ_TOKEN": server.token,
        "STOCKADE_FUZZ_REGISTRY": target.registry.host,
        "STOCKADE_FUZZ_KEEPER": target.keeper,
        "STOCKADE_FUZZ_CONTEXT": target.context,
    }
    st = Path(sys.executable).parent / "st"
    started = time.monotonic()
    result = subprocess.run(
        [str(st), "--config-file", str(config), "--no-color", "run",
         "--phases", "coverage,fuzzing,stateful", f"{server.url}/openapi.json"],
        cwd=run_dir, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    reports = sorted((run_dir / "reports").glob("*.ndjson"))
    assert reports, f"no report from st:\n{output[-10000:]}"
    interactions = _interactions(reports[0])
    statuses = Counter(i["response"]["status_code"] for i in interactions if i.get("response"))
    summary = f"{len(interactions)} requests in {took:.0f}s, statuses {sorted(statuses.items())}"
    print(summary)
    assert result.returncode == 0, f"{summary}\n{output[-20000:]}\n{server.log()}"
    assert len(interactions) >= MIN_REQUESTS, f"{summary}\n{output[-5000:]}"
    assert not [i for i in interactions if not i.get("response")], "requests without an answer"
    assert not [s for s in statuses if s >= 500], summary
    # Both sides of the token check were exercised.
    assert statuses[401] > 0 and sum(n for s, n in statuses.items() if s < 300) > 0, summary
