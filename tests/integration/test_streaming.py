"""Streams over plain HTTP arrive as they are produced, not when they end."""

from __future__ import annotations

import time

from stockade import Sandbox

from .conftest import LiveServer


def test_followed_logs_arrive_while_the_entrypoint_runs(server: LiveServer) -> None:
    sb = Sandbox.create(image="debian", entrypoint=["sh", "-c", "echo ready; sleep 5; echo done"])
    try:
        t0 = time.monotonic()
        chunks = sb.stream_logs(follow=True)
        first = next(chunks)
        assert "ready" in first
        assert time.monotonic() - t0 < 3, "the first log line waited for the end"
        del chunks  # closes the stream
    finally:
        sb.terminate()


def test_run_callbacks_fire_while_the_command_runs(server: LiveServer) -> None:
    with Sandbox.create(image="debian") as sb:
        seen: list[tuple[float, str]] = []
        t0 = time.monotonic()
        r = sb.run(
            "echo first; sleep 4; echo second",
            on_stdout=lambda text: seen.append((time.monotonic() - t0, text)),
        )
        assert r.stdout == "first\nsecond\n"
        assert seen and seen[0][1].startswith("first")
        assert seen[0][0] < 2.5, f"the first output came only after {seen[0][0]:.1f}s"
