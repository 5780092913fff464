"""Bad input through the SDK: each mistake raises its own error class with a helpful message."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stockade import (
    AuthenticationError,
    Client,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
    SandboxInfo,
    SandboxTerminatedError,
    StockadeError,
)

from .conftest import LiveServer


@pytest.fixture(scope="module")
def ended(server: LiveServer) -> Iterator[Sandbox]:
    sb = Sandbox.create(image="debian")
    sb.files.write("/tmp/kept.txt", "x")
    sb.terminate()
    yield sb


def test_unknown_image_names_the_known_ones(server: LiveServer) -> None:
    before = {s.id for s in Sandbox.list()}
    with pytest.raises(NotFoundError) as err:
        Sandbox.create(image="no-such-image")
    message = str(err.value)
    assert "no-such-image" in message
    assert "debian" in message and "python" in message
    # Nothing was created for the failed request.
    assert {s.id for s in Sandbox.list()} == before


_CORES = f"{os.cpu_count() or 1:g}"


_OUT_OF_RANGE: list[tuple[dict[str, Any], list[str]]] = [
    ({"cpu": 0.05}, ["cpu", "0.1", _CORES]),
    ({"cpu": (os.cpu_count() or 1) + 1}, ["cpu", "0.1", _CORES]),
    ({"memory": 32}, ["memory", "64", "65536"]),
    ({"memory": 65537}, ["memory", "64", "65536"]),
    ({"disk": 10}, ["disk", "64", "102400"]),
    ({"disk": 200_000}, ["disk", "64", "102400"]),
    ({"timeout": 0.5}, ["timeout", "1", "86400"]),
    ({"timeout": 90_000}, ["timeout", "1", "86400"]),
]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [pytest.param(k, e, id=",".join(f"{n}={v}" for n, v in k.items())) for k, e in _OUT_OF_RANGE],
)
def test_out_of_range_values_name_the_range(
    server: LiveServer, kwargs: dict[str, Any], expected: list[str]
) -> None:
    with pytest.raises(InvalidArgumentError) as err:
        Sandbox.create(image="debian", **kwargs)
    message = str(err.value)
    for part in expected:
        assert part in message, message


def test_other_invalid_create_arguments(server: LiveServer) -> None:
    with pytest.raises(InvalidArgumentError, match="absolute"):
        Sandbox.create(image="debian", workdir="relative/dir")
    with pytest.raises(InvalidArgumentError):
        Sandbox.create(image="debian", entrypoint=[])


def test_exec_on_a_terminated_sandbox(ended: Sandbox) -> None:
    with pytest.raises(SandboxTerminatedError) as err:
        ended.run("echo hi")
    assert "terminated" in str(err.value)
    assert ended.id in str(err.value)
    with pytest.raises(SandboxTerminatedError, match="terminated"):
        ended.exec("echo", "hi")
    with pytest.raises(SandboxTerminatedError, match="terminated"):
        ended.exec("sh", pty=True)


def test_files_on_a_terminated_sandbox(ended: Sandbox) -> None:
    for call in (
        lambda: ended.files.read_text("/tmp/kept.txt"),
        lambda: ended.files.write("/tmp/new.txt", "x"),
        lambda: ended.files.list("/tmp"),
        lambda: ended.files.stat("/tmp/kept.txt"),
        lambda: ended.files.mkdir("/tmp/d"),
        lambda: ended.files.remove("/tmp/kept.txt"),
    ):
        with pytest.raises(SandboxTerminatedError, match="terminated"):
            call()


def test_wrong_token(server: LiveServer) -> None:
    with pytest.raises(AuthenticationError):
        Sandbox.list(url=server.url, token="sk_wrong")
    with pytest.raises(AuthenticationError):
        Sandbox.create(image="debian", url=server.url, token="sk_wrong")
    with Sandbox.create(image="debian") as sb:
        with pytest.raises(AuthenticationError):
            Sandbox.from_id(sb.id, url=server.url, token="sk_wrong")
        with Client(server.url, "sk_wrong") as bad:
            wrong = Sandbox(sb.last_info, bad)
            with pytest.raises(AuthenticationError):
                wrong.exec("true")
            with pytest.raises(AuthenticationError):
                wrong.run("true")
            with pytest.raises(AuthenticationError):
                wrong.files.read_text("/etc/hostname")
        # The right token still works; nothing was changed by the bad calls.
        assert sb.run("echo ok").stdout == "ok\n"


def test_unknown_sandbox_id(server: LiveServer) -> None:
    with pytest.raises(NotFoundError) as err:
        Sandbox.from_id("sb-0000000000000000")
    assert "sb-0000000000000000" in str(err.value)
    with pytest.raises(NotFoundError):
        Sandbox.from_id("not-even-an-id")
    # Operations through a handle whose sandbox does not exist say so too.
    info = SandboxInfo(
        id="sb-0000000000000000", status="running", image="debian", cpu=1, memory=512,
        disk=1024, timeout=300,
    )  # fmt: skip
    with Client() as client:
        ghost = Sandbox(info, client)
        with pytest.raises(NotFoundError, match="sb-0000000000000000"):
            ghost.info()
        with pytest.raises(NotFoundError, match="sb-0000000000000000"):
            ghost.run("true")
        with pytest.raises(NotFoundError, match="sb-0000000000000000"):
            ghost.exec("true")
        with pytest.raises(NotFoundError, match="sb-0000000000000000"):
            ghost.files.read_text("/etc/hostname")
        with pytest.raises(NotFoundError, match="sb-0000000000000000"):
            ghost.terminate()


def test_every_error_shares_one_root(server: LiveServer) -> None:
    cases: list[tuple[Callable[[], object], type[StockadeError], int]] = [
        (lambda: Sandbox.from_id("sb-0000000000000000"), NotFoundError, 404),
        (lambda: Sandbox.create(image="debian", memory=1), InvalidArgumentError, 422),
        (lambda: Sandbox.list(url=server.url, token="sk_wrong"), AuthenticationError, 401),
    ]
    for call, kind, status in cases:
        with pytest.raises(StockadeError) as err:  # the root catches each of them
            call()
        assert type(err.value) is kind, err.value
        assert err.value.status == status, err.value
        assert err.value.message
