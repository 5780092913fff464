"""Which sandboxes doze, and the Dozer's bookkeeping around wake and forget (no runsc)."""

from __future__ import annotations

import asyncio

import pytest

from stockade.server.runtime import timerslack
from stockade.server.service import doze
from stockade.server.service.doze import Dozer, due_to_doze


def test_only_idle_sandboxes_that_are_not_busy_or_dozing_are_due() -> None:
    due = due_to_doze(
        ["old", "fresh", "busy", "asleep", "unseen"],
        last_active={"old": 100.0, "fresh": 195.0, "busy": 100.0, "asleep": 100.0}.get,
        busy=lambda sid: sid == "busy",
        dozing={"asleep"},
        after=10.0,
        now=200.0,
        since=150.0,
    )
    # "unseen" has no recorded use: it counts as active since the server started (150).
    assert due == ["old", "unseen"]


def test_activity_before_the_server_started_counts_from_its_start() -> None:
    def due(now: float) -> list[str]:
        return due_to_doze(
            ["a"], last_active={"a": 0.0}.get, busy=lambda sid: False, dozing=set(), after=10.0,
            now=now, since=150.0,
        )  # fmt: skip

    assert due(155.0) == []
    assert due(160.0) == ["a"]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    done: list[tuple[str, int]] = []

    def fake(sandbox_id: str, slack_ns: int) -> int:
        done.append((sandbox_id, slack_ns))
        return 0 if sandbox_id == "gone" else 3

    monkeypatch.setattr(doze, "set_timer_slack", fake)
    return done


def test_check_wake_and_forget(writes: list[tuple[str, int]]) -> None:
    running = ["a", "b", "gone"]
    active = {"a": 0.0, "b": 0.0, "gone": 0.0}
    dozer = Dozer(5.0, running=lambda: running, last_active=active.get, busy=lambda s: s == "b")
    dozer._since = 0.0  # as if the server had started long ago

    async def scenario() -> None:
        assert await dozer.check() == ["a", "gone"]
        # A sandbox with no threads to set (not started, or gone) is not counted as dozing.
        assert dozer.dozing == {"a"}
        assert writes == [("a", timerslack.DOZE_SLACK_NS), ("gone", timerslack.DOZE_SLACK_NS)]
        writes.clear()
        assert await dozer.check() == ["gone"]  # "a" dozes already: not written again
        writes.clear()
        await dozer.wake("a")
        await dozer.wake("b")  # awake: nothing to write
        assert writes == [("a", timerslack.DEFAULT_SLACK_NS)]
        assert dozer.dozing == set()
        # A paused or ended sandbox leaves the running set and is forgotten.
        await dozer.check()
        running.remove("a")
        await dozer.check()
        assert "a" not in dozer.dozing

    asyncio.run(scenario())


def test_after_zero_never_runs(writes: list[tuple[str, int]]) -> None:
    dozer = Dozer(0, running=lambda: ["a"], last_active=lambda sid: None, busy=lambda s: False)
    asyncio.run(asyncio.wait_for(dozer.run(), 1))  # returns at once
    assert writes == []
