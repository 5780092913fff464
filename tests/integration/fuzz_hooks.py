"""Schemathesis hooks and checks for test_fuzz_api.py.

The `st` subprocess loads this module (``SCHEMATHESIS_HOOKS``); the test passes what it
needs through the environment:

- ``STOCKADE_FUZZ_URL`` and ``STOCKADE_FUZZ_TOKEN``: the server under test;
- ``STOCKADE_FUZZ_REGISTRY``: ``127.0.0.1:PORT`` of a registry on loopback;
- ``STOCKADE_FUZZ_KEEPER`` and ``STOCKADE_FUZZ_CONTEXT``: a sandbox that lives through the
  run, and a code context in it.

Sandboxes for the run's valid cases: the IDs a generator makes up name nothing, and the
sandboxes the run creates itself are soon ended, paused or timed out by it, so which of
those a case names decides whether it tests the operation or only gets a 404 or 409. The
keeper serves the operations that leave a sandbox as it was; an expendable sandbox, made
again whenever the last one has ended, serves those that end, pause or time it out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import httpx
import schemathesis
from schemathesis import Case, CheckContext, GenerationMode, HookContext, Response
from schemathesis.transport.serialization import serialize_binary

from stockade.errors import InvalidArgumentError
from stockade.server.images.catalog import is_reference
from stockade.server.images.oci.reference import parse_reference

_URL = os.environ.get("STOCKADE_FUZZ_URL", "")
_TOKEN = os.environ.get("STOCKADE_FUZZ_TOKEN", "")
_REGISTRY = os.environ.get("STOCKADE_FUZZ_REGISTRY", "")
_KEEPER = os.environ.get("STOCKADE_FUZZ_KEEPER", "")
_CONTEXT = os.environ.get("STOCKADE_FUZZ_CONTEXT", "")
# The IDs the schema gives as examples (api/params.py): they name nothing on a server.
_EXAMPLE_SANDBOX = "sb-0123456789abcdef"
_EXAMPLE_CONTEXT = "ctx-0123456789abcdef"
# Stands for the expendable sandbox in the run's dictionaries (test_fuzz_api.py).
EXPENDABLE = "sb-expendable"
# Operations that end, pause, resume, checkpoint or time out a sandbox. (Not fork: the
# coverage phase would fork the most the schema allows, 32 at a time, for every valid case.)
_EXPENDABLE_OPS = re.compile(
    r"^(DELETE /v1/sandboxes/\{sandbox_id\}(/files)?"
    r"|POST /v1/sandboxes/\{sandbox_id\}/(timeout|pause|resume|snapshots))$"
)
_expendable: str | None = None
# Operations that use a sandbox and leave it running as it was: the keeper may serve them.
# (Not DELETE .../files: the coverage phase removes `/`, recursively.)
_KEEPER_SAFE = re.compile(
    r"^(GET /v1/sandboxes/\{sandbox_id\}(/logs|/files(/list|/stat|/changes)?)?"
    r"|(PUT|POST) /v1/sandboxes/\{sandbox_id\}/(exec|files|files/mkdir|network|ports"
    r"|filesystem-snapshots)"
    r"|\w+ /v1/sandboxes/\{sandbox_id\}/(code/.+|ports/\{port\}))$"
)

# Bodies that relay what a sandbox wrote (file contents, the entrypoint's log): a Python
# program in there may well print a traceback of its own.
_RELAYED = frozenset(
    {
        ("GET", "/v1/sandboxes/{sandbox_id}/files"),
        ("GET", "/v1/sandboxes/{sandbox_id}/logs"),
    }
)
# NDJSON streams: their log / stdout / stderr / exception events relay a build step's, a
# command's or a kernel's output too; their `error` events are the server's own words.
_NDJSON = "application/x-ndjson"


def _operation(case: Case[Any]) -> tuple[str, str]:
    return case.method.upper(), case.operation.path


def _error_shape(body: Any) -> str | None:
    """What is wrong with an error body, or None for ``{"error": {"code", "message"}}``."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return 'no "error" object'
    if not isinstance(error.get("code"), str) or not isinstance(error.get("message"), str):
        return '"error" lacks a string "code" and "message"'
    return None


@schemathesis.check
def stockade_error_bodies(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """No traceback in anything the server wrote, and every error in the API's one shape."""
    operation = _operation(case)
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.startswith(_NDJSON) and response.status_code < 400:
        for line in response.content.decode(errors="replace").splitlines():
            if not line.strip():
                continue  # a heartbeat (the watch stream sends one when idle)
            event = json.loads(line)  # a line that is not JSON fails the check too
            if isinstance(event, dict) and event.get("type") == "error":
                assert "Traceback" not in line, f"a traceback in a stream's error: {line[:500]}"
                wrong = _error_shape(event)
                assert wrong is None, f"stream error event: {wrong}: {line[:500]}"
        return None
    if operation not in _RELAYED or response.status_code >= 400:
        text = response.content.decode(errors="replace")
        assert "Traceback" not in text, f"a traceback in the body: {text[:1000]}"
    # HEAD answers carry no body, whatever their status.
    if response.status_code >= 400 and case.method.upper() != "HEAD":
        try:
            body = json.loads(response.content)
        except ValueError:
            raise AssertionError(
                f"a {response.status_code} whose body is not JSON: {response.content[:500]!r}"
            ) from None
        wrong = _error_shape(body)
        assert wrong is None, f"{response.status_code} body: {wrong}: {response.content[:500]!r}"
    return None


def _on_loopback(value: Any) -> Any:
    """A registry reference moved to the test's own registry (same repository, tag and
    digest); anything else as it was."""
    if not isinstance(value, str) or not is_reference(value):
        return value
    try:
        ref = parse_reference(value)
    except InvalidArgumentError:
        return value  # the server refuses it before any pull: left for it to refuse
    moved = f"{_REGISTRY}/{ref.repository}"
    if ref.tag:
        moved += f":{ref.tag}"
    if ref.digest:
        moved += f"@{ref.digest}"
    return moved


def _choose_sandbox(case: Case[Any], operation: tuple[str, str]) -> None:
    """The coverage phase's valid cases vary the other parameters' boundary values; which
    sandbox they name is incidental (the schema's example, or one the run created and may
    have ended since), so they get the keeper or the expendable sandbox, as the operation
    allows. So do the dictionary's placeholders and the documented examples in the fuzzing
    phase. Where an operation would end, pause, checkpoint or fork the keeper, its ID
    becomes the example (a 404): the keeper must live through the run."""
    params = case.path_parameters
    if not _KEEPER or not params or "sandbox_id" not in params:
        return
    label = " ".join(operation)
    meta = case.meta
    coverage_valid = (
        meta is not None
        and meta.phase.name == "coverage"
        and meta.generation.mode == GenerationMode.POSITIVE
    )
    if _KEEPER_SAFE.match(label):
        if params["sandbox_id"] in (_EXAMPLE_SANDBOX, EXPENDABLE) or coverage_valid:
            params["sandbox_id"] = _KEEPER
        if params.get("context_id") == _EXAMPLE_CONTEXT and _CONTEXT:
            params["context_id"] = _CONTEXT
        return
    if params["sandbox_id"] == _KEEPER:
        params["sandbox_id"] = _EXAMPLE_SANDBOX
    if _EXPENDABLE_OPS.match(label) and (params["sandbox_id"] == EXPENDABLE or coverage_valid):
        params["sandbox_id"] = _expendable_sandbox()
    elif params["sandbox_id"] == EXPENDABLE:
        params["sandbox_id"] = _EXAMPLE_SANDBOX


def _expendable_sandbox() -> str:
    """The expendable sandbox, started again if the last one has ended."""
    global _expendable
    if _expendable is None or not _alive(_expendable):
        body = {"image": "debian", "timeout": 600, "memory": 256}
        r = httpx.post(f"{_URL}/v1/sandboxes", json=body, headers=_headers(), timeout=120)
        r.raise_for_status()
        _expendable = str(r.json()["id"])
    return _expendable


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {_TOKEN}"}


def _alive(sandbox_id: object) -> bool:
    try:
        r = httpx.get(f"{_URL}/v1/sandboxes/{sandbox_id}", headers=_headers(), timeout=30)
    except httpx.HTTPError:
        return True  # unsure: treat it as one whose log would not end
    return r.status_code == 200 and r.json().get("status") in ("starting", "running", "paused")


@schemathesis.hook
def before_call(context: HookContext, case: Case[Any], kwargs: dict[str, Any]) -> None:
    operation = _operation(case)
    # The one constraint a schema cannot state: an upload's path names the SHA-256 of its
    # body. Valid cases get the digest of what they send; the others keep theirs.
    if operation == ("PUT", "/v1/images/contexts/{digest}") and (
        case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    ):
        digest = hashlib.sha256(serialize_binary(case.body)).hexdigest()
        case.path_parameters = {**(case.path_parameters or {}), "digest": f"sha256:{digest}"}
    body = case.body if isinstance(case.body, dict) else None
    # Pulls reach only the registry on loopback, whatever the generated reference names: a
    # registry on the internet is unreachable from a test machine (502, after a connect
    # timeout for some addresses), or worse, reachable, and a test then depends on it.
    if body is not None and _REGISTRY:
        if operation == ("POST", "/v1/sandboxes") and "image" in body:
            body["image"] = _on_loopback(body["image"])
        elif operation == ("POST", "/v1/images/pull") and "ref" in body:
            body["ref"] = _on_loopback(body["ref"])
        elif operation == ("POST", "/v1/images/builds") and body.get("registry") is True:
            body["image"] = _on_loopback(body.get("image"))
    _choose_sandbox(case, operation)
    # A watch of a live sandbox's path streams until the client leaves: watch one that is
    # not there (a 404 at once); the watch stream itself is test_file_verbs.py's.
    if operation == ("GET", "/v1/sandboxes/{sandbox_id}/files/watch") and _alive(
        case.path_parameters.get("sandbox_id") if case.path_parameters else None
    ):
        query = case.query if isinstance(case.query, dict) else {}
        query["path"] = "/nonexistent/stockade-fuzz-watch"
        case.query = query
    # `follow` streams a live sandbox's log until the sandbox ends, which can be a day away:
    # for a sandbox that is still alive, read what is there instead.
    if operation == ("GET", "/v1/sandboxes/{sandbox_id}/logs"):
        query = case.query if isinstance(case.query, dict) else {}
        if str(query.get("follow", "")).lower() in ("true", "1") and _alive(
            case.path_parameters.get("sandbox_id") if case.path_parameters else None
        ):
            query["follow"] = "false"
            case.query = query
