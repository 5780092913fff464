"""Code contexts through pause/resume, snapshots and forks, against real gVisor: the
kernels carry on with their variables (docs/snapshots.md, docs/code-interpreter.md)."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from stockade import Sandbox, SandboxPausedError

from .conftest import LiveServer, own_server

pytestmark = [pytest.mark.runsc, pytest.mark.timeout(240, func_only=True)]


def _kernel_pid(sb: Sandbox) -> str:
    return sb.run_code("import os; os.getpid()").text or ""


def test_pause_and_resume_keep_every_context_and_its_variables(server: LiveServer) -> None:
    with Sandbox.create(image="code-interpreter", memory=1024, timeout=600) as sb:
        assert sb.run_code("x = 41").error is None
        bash = sb.create_code_context(language="bash")
        other = sb.create_code_context()
        assert sb.run_code("export GREETING=hello", context=bash).error is None
        assert sb.run_code("y = [1, 2, 3]", context=other).error is None
        pid = _kernel_pid(sb)

        sb.pause()
        with pytest.raises(SandboxPausedError, match="resume"):
            sb.run_code("x")
        sb.resume()

        assert sb.run_code("x + 1").text == "42"
        assert _kernel_pid(sb) == pid  # the same kernel, not a new one
        assert sb.run_code("sum(y)", context=other).text == "6"
        out: list[str] = []
        sb.run_code("echo $GREETING", context=bash, on_stdout=out.append)
        assert "".join(out).strip() == "hello"
        ids = {c.id for c in sb.list_code_contexts()}
        assert {bash.id, other.id} <= ids

        # Interrupting a cell still reaches the kernel through its new watcher.
        started = time.monotonic()
        timed_out = sb.run_code("import time; time.sleep(60)", timeout=1)
        assert timed_out.error is not None and timed_out.error.name == "KeyboardInterrupt"
        assert time.monotonic() - started < 15
        assert sb.run_code("x").text == "41"

        # A context still restarts (to a fresh kernel) and is removed as before.
        sb.restart_code_context(other)
        assert sb.run_code("'y' in dir()", context=other).text == "False"
        sb.remove_code_context(other)
        assert other.id not in {c.id for c in sb.list_code_contexts()}


def test_auto_resume_wakes_the_sandbox_for_run_code(server: LiveServer) -> None:
    with Sandbox.create(image="code-interpreter", auto_resume=True, timeout=600) as sb:
        sb.run_code("state = 'kept'")
        sb.pause()
        assert sb.info().status == "paused"
        assert sb.run_code("state").text == "'kept'"
        assert sb.info().status == "running"


def test_snapshot_restore_and_fork_carry_the_kernel_state(server: LiveServer) -> None:
    with Sandbox.create(image="code-interpreter", memory=1024, timeout=600) as sb:
        sb.run_code("counter = 1")
        snap = sb.snapshot()
        try:
            sb.run_code("counter = 100")
            restored = snap.restore()
            try:
                assert restored.run_code("counter").text == "1"
                restored.run_code("counter += 1")
                assert restored.run_code("counter").text == "2"
                assert sb.run_code("counter").text == "100"  # the source is its own
            finally:
                restored.terminate()
        finally:
            snap.delete()

        forks = sb.fork(2)
        try:
            forks[0].run_code("counter = 'first'")
            assert forks[1].run_code("counter").text == "100"
            assert forks[0].run_code("counter").text == "'first'"
            assert sb.run_code("counter").text == "100"
        finally:
            for f in forks:
                f.terminate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_contexts_outlive_a_server_restart(sig: signal.Signals) -> None:
    with own_server("stockade-code-restart-") as live:
        kw: dict[str, Any] = {"url": live.url, "token": live.token}
        sb = Sandbox.create(image="code-interpreter", memory=1024, timeout=600, **kw)
        try:
            sb.run_code("kept = 'across restarts'")
            named = sb.create_code_context()
            sb.run_code("n = 7", context=named)
            pid = _kernel_pid(sb)
            live.restart(sig)
            again = Sandbox.from_id(sb.id, **kw)
            assert again.run_code("kept").text == "'across restarts'"
            assert _kernel_pid(again) == pid  # attached, not started anew
            assert again.run_code("n * 6", context=named.id).text == "42"
        finally:
            Sandbox.from_id(sb.id, **kw).terminate()
