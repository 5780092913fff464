"""The host side of the code interpreter, without a sandbox: how kernel messages become
run events, and how a run that never gets its kernel is reported."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import zmq.asyncio

from stockade.errors import ConflictError
from stockade.server.service.code.kernel import (
    LANGUAGES,
    Kernel,
    _output_event,
    payload_size,
    strip_ansi,
)
from stockade.server.service.code.service import MAX_CONTEXTS, CodeService
from stockade.server.service.execs import ExecService


def test_tracebacks_lose_their_colour_codes() -> None:
    coloured = "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero\x1b[?25h"
    assert strip_ansi(coloured) == "ZeroDivisionError: division by zero"


def test_payload_size_counts_text_and_json_values() -> None:
    assert payload_size({"text/plain": "abc", "application/json": {"a": [1, 2]}}) == 3 + 13


@pytest.mark.parametrize(
    ("kind", "content", "event"),
    [
        ("stream", {"name": "stdout", "text": "hi\n"}, {"type": "stdout", "text": "hi\n"}),
        ("stream", {"name": "stderr", "text": "oops"}, {"type": "stderr", "text": "oops"}),
        (
            "execute_result",
            {"data": {"text/plain": "2"}, "execution_count": 1},
            {"type": "result", "data": {"text/plain": "2"}, "is_main_result": True},
        ),
        (
            "display_data",
            {"data": {"image/png": "iVBOR"}},
            {"type": "result", "data": {"image/png": "iVBOR"}, "is_main_result": False},
        ),
        ("display_data", {"data": {}}, None),
        ("clear_output", {"wait": False}, None),
        ("status", {"execution_state": "busy"}, None),
    ],
)
def test_kernel_messages_become_events(
    kind: str, content: dict[str, Any], event: dict[str, Any] | None
) -> None:
    assert _output_event(kind, content) == event


async def test_a_kernel_that_never_started_reports_its_death(tmp_path: Path) -> None:
    context = zmq.asyncio.Context()
    try:
        kernel = Kernel(
            cast(ExecService, None), "sb-1", LANGUAGES["python"], None,
            zmq_context=context, runtime_root=tmp_path, image="python",
        )  # fmt: skip
        kernel.death = "exit code 1"
        kernel.died.set()
        events = [e async for e in kernel.execute("1+1", timeout=None, limit=1024)]
    finally:
        context.term()
    assert [e["type"] for e in events] == ["exception", "end"]
    assert events[0]["name"] == "KernelDied"
    assert "restart" in events[0]["value"] and "exit code 1" in events[0]["value"]


async def test_an_unknown_language_names_the_languages(tmp_path: Path) -> None:
    service = CodeService(
        cast(Any, SimpleNamespace(before_pause=[], after_pause=[], on_end=[])),
        cast(Any, None),
        tmp_path,
    )
    try:
        with pytest.raises(Exception, match="bash, python") as info:
            await service.create("sb-1", "cobol", None)
        assert getattr(info.value, "code", None) == "invalid_argument"
    finally:
        await service.stop()


async def test_a_sandbox_has_at_most_so_many_contexts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = CodeService(
        cast(Any, SimpleNamespace(before_pause=[], after_pause=[], on_end=[])),
        cast(Any, None),
        tmp_path,
    )
    full = {f"ctx-{i}": object() for i in range(MAX_CONTEXTS)}

    async def contexts(sandbox_id: str) -> dict[str, object]:
        return full

    monkeypatch.setattr(service, "_sandbox_contexts", contexts)
    try:
        with pytest.raises(ConflictError, match=f"has {MAX_CONTEXTS} code contexts") as info:
            await service.create("sb-1", "python", None)
        assert "remove_code_context" in str(info.value)
        assert len(full) == MAX_CONTEXTS  # nothing was added for the refused one
    finally:
        await service.stop()
