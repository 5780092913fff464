"""Where a request's time goes: named stages, reported as a ``Server-Timing`` header.

A route opens a :class:`Stages` with :func:`collect`; code anywhere below it marks its
work with ``with stage("overlay"):``. The record travels in a context variable, so the
service layer needs no extra parameter, and ``asyncio.to_thread`` carries it into worker
threads. Outside a collecting request :func:`stage` costs one context-variable read.

``make bench`` reads the header of sandbox creates to print the cold-start breakdown.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["Stages", "collect", "stage"]

_current: ContextVar[Stages | None] = ContextVar("stockade_stages", default=None)


class Stages:
    """Seconds spent per stage name (a stage entered twice adds up)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.spans: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.spans[name] = self.spans.get(name, 0.0) + seconds

    def header(self) -> str:
        """The ``Server-Timing`` value: each stage, then ``total`` for the whole request."""
        total = time.perf_counter() - self.started
        parts = [f"{name};dur={s * 1e3:.2f}" for name, s in self.spans.items()]
        parts.append(f"total;dur={total * 1e3:.2f}")
        return ", ".join(parts)


@contextlib.contextmanager
def collect() -> Iterator[Stages]:
    """Record the stages of the code run inside this block."""
    stages = Stages()
    token = _current.set(stages)
    try:
        yield stages
    finally:
        _current.reset(token)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the time spent in this block towards stage ``name`` of the current request."""
    stages = _current.get()
    if stages is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        stages.add(name, time.perf_counter() - t0)
