"""What tenants, API keys and the audit log cost: the same calls made with a tenant's key
and with the admin token, in one run (the token is the baseline), and execs on a server
that keeps an audit log against one started with --no-audit."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import httpx

from stockade import Client, Sandbox

from .server import Server

Row = tuple[str, list[float], list[float], str]
Timer = Callable[[Callable[[], object], int], list[float]]


def _in_turns(
    timed: Timer, ours: Callable[[], object], theirs: Callable[[], object], runs: int
) -> tuple[list[float], list[float]]:
    """Both, one run of each in turn, so that drift on a noisy host falls on both alike."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(runs):
        a += timed(ours, 1)
        b += timed(theirs, 1)
    return a, b


def access_rows(server: Server, image: str, runs: int, timed: Timer) -> list[Row]:
    admin = {"Authorization": f"Bearer {server.token}"}
    tenant = f"bench-{secrets.token_hex(4)}"
    made = httpx.post(f"{server.url}/v1/tenants", json={"name": tenant}, headers=admin)
    made.raise_for_status()
    made = httpx.post(
        f"{server.url}/v1/keys", json={"tenant": tenant, "role": "user"}, headers=admin
    )
    made.raise_for_status()
    rows: list[Row] = []
    with (
        Client(server.url, server.token) as as_token,
        Client(server.url, made.json()["key"]) as as_key,
    ):
        mine = Sandbox.create(image=image, timeout=600, client=as_key)
        ours = Sandbox.create(image=image, timeout=600, client=as_token)
        try:
            key_times, token_times = _in_turns(
                timed, lambda: mine.exec("true").wait(), lambda: ours.exec("true").wait(), runs
            )
            rows.append(("exec round trip with a key", key_times, token_times, "admin token"))
        finally:
            mine.terminate()
            ours.terminate()

        def create(client: Client) -> Callable[[], None]:
            def once() -> None:
                sb = Sandbox.create(image=image, timeout=120, client=client)
                try:
                    sb.run(["true"])
                finally:
                    sb.terminate()

            return once

        key_times, token_times = _in_turns(
            timed, create(as_key), create(as_token), max(3, runs // 3)
        )
        rows.append(("create + run with a key", key_times, token_times, "admin token"))
    return rows


def audit_rows(work: Path, server: Server, image: str, runs: int, timed: Timer) -> list[Row]:
    """An exec's round trip while its audit entry is written, against a server that
    writes none; the same image, limits and client."""
    (work / "no-audit").mkdir()
    quiet = Server(work / "no-audit", extra_args=("--no-audit",), port_offset=2)
    try:
        with (
            Client(server.url, server.token) as audited,
            Client(quiet.url, quiet.token) as unaudited,
        ):
            mine = Sandbox.create(image=image, timeout=600, client=audited)
            theirs = Sandbox.create(image=image, timeout=600, client=unaudited)
            try:
                on, off = _in_turns(
                    timed, lambda: mine.exec("true").wait(), lambda: theirs.exec("true").wait(),
                    runs,
                )  # fmt: skip
                rows: list[Row] = [("exec round trip, audit log on", on, off, "audit off")]
                on, off = _in_turns(
                    timed, lambda: mine.run(["true"]), lambda: theirs.run(["true"]), runs
                )
                rows.append(("run (HTTP), audit log on", on, off, "audit off"))
            finally:
                mine.terminate()
                theirs.terminate()
    finally:
        quiet.stop()
    return rows
