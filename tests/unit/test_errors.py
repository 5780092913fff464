"""Every API error code reaches the caller as its class, with the server's message."""

from __future__ import annotations

import inspect
import re

import httpx
import pytest

import stockade.commands
import stockade.errors
from stockade import (
    AuthenticationError,
    Client,
    ConflictError,
    InvalidArgumentError,
    KernelUnavailableError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    Sandbox,
    SandboxPausedError,
    SandboxStartingError,
    SandboxTerminatedError,
    ServerError,
    StockadeError,
    StockadeTimeoutError,
)
from tests.unit.fakes import FakeApi, error_body

CODES = [
    (400, "bad_request", InvalidArgumentError),
    (401, "unauthorized", AuthenticationError),
    (404, "not_found", NotFoundError),
    (409, "sandbox_terminated", SandboxTerminatedError),
    (409, "sandbox_paused", SandboxPausedError),
    (409, "sandbox_starting", SandboxStartingError),
    (409, "conflict", ConflictError),
    (409, "kernel_unavailable", KernelUnavailableError),
    (413, "payload_too_large", InvalidArgumentError),
    (422, "invalid_argument", InvalidArgumentError),
    (429, "quota_exceeded", QuotaExceededError),
    (429, "rate_limited", RateLimitedError),
    (500, "internal", ServerError),
    (504, "timeout", StockadeTimeoutError),
]


@pytest.mark.parametrize(("status", "code", "cls"), CODES)
def test_code_maps_to_class(
    client: Client, api: FakeApi, status: int, code: str, cls: type[StockadeError]
) -> None:
    api.errors[("GET", "/v1/sandboxes/sb-1")] = (status, error_body(code, f"message for {code}"))
    with pytest.raises(cls) as info:
        Sandbox.from_id("sb-1", client=client)
    assert type(info.value) is cls
    assert info.value.message == f"message for {code}"
    assert (info.value.code, info.value.status, info.value.request_id) == (
        code, status, "req-test",
    )  # fmt: skip


@pytest.mark.parametrize(("status", "code", "cls"), CODES)
async def test_code_maps_to_class_async(
    api: FakeApi, status: int, code: str, cls: type[StockadeError]
) -> None:
    from stockade import AsyncClient, AsyncSandbox

    api.errors[("POST", "/v1/sandboxes")] = (status, error_body(code, "nope"))
    async with AsyncClient("http://127.0.0.1:1", "test-token", transport=api.transport) as c:
        with pytest.raises(cls, match="nope"):
            await AsyncSandbox.create(client=c)


def test_non_json_error_keeps_the_body(client: Client, api: FakeApi) -> None:
    api.errors[("GET", "/v1/sandboxes/sb-1")] = (502, b"<html>Bad Gateway</html>")
    with pytest.raises(ServerError, match="HTTP 502: <html>Bad Gateway"):
        Sandbox.from_id("sb-1", client=client)


def test_error_inside_a_stream(client: Client, api: FakeApi) -> None:
    api.errors[("POST", "/v1/images/python/build")] = (404, error_body("not_found", "no img"))
    with pytest.raises(NotFoundError, match="no img"):
        client.build_image("python")


def _answering_429(headers: dict[str, str], code: str = "rate_limited") -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        body = error_body(code, "tenant acme is past creates_per_minute=2")
        return httpx.Response(429, json=body, headers=headers)

    return httpx.MockTransport(handler)


def test_rate_limited_reads_retry_after_from_the_header() -> None:
    transport = _answering_429({"Retry-After": "7"})
    with (
        Client("http://127.0.0.1:1", "t", transport=transport) as c,
        pytest.raises(RateLimitedError, match="creates_per_minute") as info,
    ):
        Sandbox.create(client=c)
    assert info.value.retry_after == 7.0 and info.value.status == 429
    assert isinstance(info.value, QuotaExceededError)  # one except clause catches both
    with (
        Client("http://127.0.0.1:1", "t", transport=_answering_429({})) as c,
        pytest.raises(RateLimitedError) as unsaid,
    ):
        Sandbox.create(client=c)
    assert unsaid.value.retry_after is None
    # A plain 429 without Stockade's body (a proxy's) is still a quota error.
    assert type(stockade.errors.error_from_body(429, None)) is QuotaExceededError


async def test_rate_limited_reads_retry_after_async() -> None:
    from stockade import AsyncClient, AsyncSandbox

    transport = _answering_429({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    async with AsyncClient("http://127.0.0.1:1", "t", transport=transport) as c:
        with pytest.raises(RateLimitedError) as info:
            await AsyncSandbox.create(client=c)
    assert info.value.retry_after == 0.0  # a date in the past: now


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30", 30.0), (" 2.5 ", 2.5), ("-4", 0.0), ("soon", None), (None, None), ("nan", None)],
)
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    from stockade._base import retry_after_seconds

    assert retry_after_seconds(value) == seconds


def test_wrong_token(api: FakeApi) -> None:
    with Client("http://127.0.0.1:1", "wrong", transport=api.transport) as c:
        with pytest.raises(AuthenticationError, match="wrong token"):
            c.images()
        assert c.health()["status"] == "ok"  # the one call that needs no token


def test_read_timeout_is_a_stockade_timeout(api: FakeApi) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    transport = httpx.MockTransport(slow)
    with (
        Client("http://127.0.0.1:1", "t", transport=transport) as c,
        pytest.raises(StockadeTimeoutError, match="GET /v1/images: timed out"),
    ):
        c.images()


def test_malformed_answer_is_a_server_error(client: Client, api: FakeApi) -> None:
    api.errors[("GET", "/v1/sandboxes/sb-1")] = (200, {"id": "sb-1", "status": 3})
    with pytest.raises(ServerError, match="malformed sandbox"):
        Sandbox.from_id("sb-1", client=client)


def test_starting_is_a_conflict_by_status_alone() -> None:
    """An SDK that meets ``sandbox_starting`` knows it; a bare 409 is still a conflict."""
    known = stockade.errors.error_from_body(409, error_body("sandbox_starting", "wait"))
    assert type(known) is SandboxStartingError
    assert isinstance(known, ConflictError)
    assert (known.code, known.status, known.message) == ("sandbox_starting", 409, "wait")
    assert SandboxStartingError("x").to_body()["error"]["code"] == "sandbox_starting"
    assert type(stockade.errors.error_from_body(409, None)) is ConflictError


def _docstring_tree() -> dict[str, str | None]:
    """Each class drawn in errors.py's docstring, mapped to the class drawn as its parent."""
    doc = stockade.errors.__doc__ or ""
    tree = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in tree.splitlines():
        match = re.match(r"^ {4}((?:[│ ] {3})*)(?:[├└]── )?(\w+)", line)
        assert match, f"unreadable line in the docstring tree: {line!r}"
        prefix, name = match.groups()
        depth = len(prefix) // 4 + (1 if "──" in line else 0)
        del stack[depth:]
        parents[name] = stack[-1] if stack else None
        stack.append(name)
    return parents


def test_docstring_tree_lists_every_error_class() -> None:
    drawn = _docstring_tree()
    defined = {
        name: cls
        for module in (stockade.errors, stockade.commands)
        for name, cls in vars(module).items()
        if inspect.isclass(cls)
        and issubclass(cls, StockadeError)
        and cls.__module__ == module.__name__
    }
    assert sorted(drawn) == sorted(defined)
    for name, parent in drawn.items():
        bases = [b.__name__ for b in defined[name].__bases__ if issubclass(b, StockadeError)]
        assert bases == ([parent] if parent else []), name
