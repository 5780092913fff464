"""Sandbox lifecycle through the SDK: create, info, find, list, terminate, entrypoints, timeouts."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from stockade import AsyncSandbox, Sandbox, SandboxTerminatedError, ServerError, StockadeError

from .conftest import LiveServer
from .helpers import unique, wait_ended, wait_for


def test_create_with_every_option_and_read_info(server: LiveServer) -> None:
    tag = unique()
    before = time.time()
    sb = Sandbox.create(
        image="debian",
        cpu=0.5,
        memory=256,
        disk=256,
        timeout=120,
        env={"GREETING": "hello there", "EMPTY": ""},
        workdir="/srv/app",
        tags={"suite": tag, "role": "options"},
    )
    try:
        assert sb.id.startswith("sb-")
        info = sb.info()
        assert info.id == sb.id
        assert info.status == "running"
        assert info.running and not info.ended
        assert info.reason is None and info.message is None and info.exit_code is None
        assert info.image == "debian"
        assert info.cpu == 0.5
        assert info.memory == 256
        assert info.disk == 256
        assert info.timeout == 120
        assert info.workdir == "/srv/app"
        assert info.tags == {"suite": tag, "role": "options"}
        assert info.entrypoint is None
        assert info.created_at is not None and info.started_at is not None
        assert info.expires_at is not None and info.ended_at is None
        assert before - 1 <= info.created_at.timestamp() <= info.started_at.timestamp()
        assert info.started_at.timestamp() <= time.time() + 1
        lifetime = info.expires_at - info.started_at
        assert abs(lifetime - timedelta(seconds=120)) < timedelta(seconds=1)

        # The options reach the sandbox itself, not just its record.
        r = sb.run('printf "%s|%s|" "$GREETING" "${EMPTY-unset}"; pwd; hostname')
        assert r.exit_code == 0, r.stderr
        assert r.stdout.splitlines() == ["hello there||/srv/app", sb.id]
        meminfo = sb.files.read_text("/proc/meminfo")
        total_kib = int(meminfo.split("MemTotal:")[1].split()[0])
        assert total_kib == 256 * 1024, meminfo[:200]

        # Sandbox.from_id finds the same sandbox; its handle works.
        again = Sandbox.from_id(sb.id)
        assert again.id == sb.id
        assert again.last_info.tags == info.tags
        assert again.last_info.created_at == info.created_at
        assert again.run("cat /proc/sys/kernel/hostname").stdout.strip() == sb.id
    finally:
        sb.terminate()


def test_defaults_are_the_documented_ones(server: LiveServer) -> None:
    with Sandbox.create(image="debian") as sb:
        info = sb.last_info
        assert (info.cpu, info.memory, info.disk, info.timeout) == (1.0, 512, 1024, 300)
        assert info.workdir is None and info.tags == {}
        assert sb.run("pwd").stdout == "/\n"


def test_list_filters_by_tags_and_status(server: LiveServer) -> None:
    suite = unique()
    red = Sandbox.create(image="debian", tags={"suite": suite, "team": "red"})
    blue = Sandbox.create(image="debian", tags={"suite": suite, "team": "blue"})
    try:
        both = Sandbox.list(tags={"suite": suite})
        # Newest first.
        assert [s.id for s in both] == [blue.id, red.id]
        assert [s.last_info.tags["team"] for s in both] == ["blue", "red"]

        only_red = Sandbox.list(tags={"suite": suite, "team": "red"})
        assert [s.id for s in only_red] == [red.id]
        assert Sandbox.list(tags={"suite": suite, "team": "green"}) == []
        assert Sandbox.list(tags={"suite": unique()}) == []

        running_ids = {s.id for s in Sandbox.list(status="running")}
        assert {red.id, blue.id} <= running_ids

        blue.terminate()
        running = Sandbox.list(tags={"suite": suite}, status="running")
        assert [s.id for s in running] == [red.id]
        assert all(s.last_info.status == "running" for s in running)
        ended = Sandbox.list(tags={"suite": suite}, status="terminated")
        assert [s.id for s in ended] == [blue.id]
        assert ended[0].last_info.reason == "terminated"
        assert blue.id not in {s.id for s in Sandbox.list(status="running")}
    finally:
        red.terminate()
        blue.terminate()


def test_terminate_ends_the_sandbox_and_is_idempotent(server: LiveServer) -> None:
    sb = Sandbox.create(image="debian")
    assert sb.run("true").exit_code == 0
    ended = sb.terminate()
    assert ended.status == "terminated"
    assert ended.reason == "terminated"
    assert ended.ended_at is not None and ended.started_at is not None
    assert ended.ended_at >= ended.started_at
    assert ended.expires_at is None

    info = Sandbox.from_id(sb.id).info()
    assert (info.status, info.reason) == ("terminated", "terminated")
    assert info.ended

    # Terminating again answers with the record as it is.
    again = sb.terminate()
    assert (again.status, again.reason) == ("terminated", "terminated")
    assert again.ended_at == info.ended_at

    with pytest.raises(SandboxTerminatedError):
        sb.run("true")


def test_context_manager_terminates_on_exit_and_on_error(server: LiveServer) -> None:
    with Sandbox.create(image="debian") as sb:
        assert sb.run("echo inside").stdout == "inside\n"
    assert Sandbox.from_id(sb.id).info().status == "terminated"

    with pytest.raises(RuntimeError, match="boom"), Sandbox.create(image="debian") as failing:
        raise RuntimeError("boom")
    info = Sandbox.from_id(failing.id).info()
    assert (info.status, info.reason) == ("terminated", "terminated")


async def test_async_sandbox_create_exec_files_terminate(server: LiveServer) -> None:
    tag = unique()
    async with await AsyncSandbox.create(image="debian", tags={"suite": tag}) as sb:
        assert sb.id.startswith("sb-")
        info = await sb.info()
        assert info.status == "running" and info.tags == {"suite": tag}

        p = await sb.exec("sh", "-c", "read line; echo got:$line; echo err >&2; exit 4")
        await p.stdin.write("ping\n")
        await p.stdin.write_eof()
        assert await p.stdout.read() == "got:ping\n"
        assert await p.stderr.read() == "err\n"
        assert await p.wait() == 4

        r = await sb.run("echo hi && exit 3")
        assert (r.stdout, r.exit_code) == ("hi\n", 3)

        data = bytes(range(256)) * 3
        written = await sb.files.write("/work/blob.bin", data)
        assert written.size_bytes == len(data)
        assert await sb.files.read_bytes("/work/blob.bin") == data
        assert [e.name for e in await sb.files.list("/work")] == ["blob.bin"]

        listed = await AsyncSandbox.list(tags={"suite": tag})
        assert [s.id for s in listed] == [sb.id]
        found = await AsyncSandbox.from_id(sb.id)
        assert (await found.info()).status == "running"
    final = await found.info()
    assert (final.status, final.reason) == ("terminated", "terminated")
    with pytest.raises(SandboxTerminatedError):
        await found.run("true")


def test_entrypoint_output_and_exit(server: LiveServer) -> None:
    sb = Sandbox.create(
        image="debian",
        entrypoint=["sh", "-c", "echo hello from main; echo to stderr >&2; sleep 1; exit 7"],
    )
    try:
        assert sb.last_info.entrypoint == [
            "sh", "-c", "echo hello from main; echo to stderr >&2; sleep 1; exit 7",
        ]  # fmt: skip
        info = wait_ended(sb, timeout=30)
        assert info.status == "terminated"
        assert info.reason == "exited"
        assert info.exit_code == 7
        assert info.message and "7" in info.message
        assert info.ended_at is not None
        logs = sb.logs()
        assert "hello from main\n" in logs
        assert "to stderr\n" in logs
        with pytest.raises(SandboxTerminatedError, match="exited"):
            sb.run("true")
    finally:
        sb.terminate()


def test_entrypoint_string_and_followed_logs(server: LiveServer) -> None:
    # A string entrypoint runs through `sh -c`; following the logs ends with the sandbox.
    sb = Sandbox.create(
        image="debian", entrypoint="for i in 1 2 3; do echo tick $i; sleep 0.5; done"
    )
    try:
        started = time.monotonic()
        text = "".join(sb.stream_logs(follow=True))
        assert time.monotonic() - started < 30
        assert text == "tick 1\ntick 2\ntick 3\n"
        info = wait_ended(sb, timeout=10)
        assert (info.status, info.reason, info.exit_code) == ("terminated", "exited", 0)
        assert sb.logs() == text
    finally:
        sb.terminate()


def test_sandbox_timeout_ends_it_on_time(server: LiveServer) -> None:
    sb = Sandbox.create(image="debian", timeout=3)
    try:
        first = sb.last_info
        assert first.started_at is not None and first.expires_at is not None
        deadline = first.started_at.timestamp() + 3
        assert abs(first.expires_at.timestamp() - deadline) < 0.01

        def probe() -> float | None:
            info = sb.info()
            return time.time() if info.status != "running" else None

        seen_at = wait_for(probe, timeout=15, interval=0.1, what="the sandbox to time out")
        info = sb.info()
        assert info.status == "terminated"
        assert info.reason == "timeout"
        assert info.message and "timeout" in info.message
        assert seen_at - deadline < 1.0, f"noticed {seen_at - deadline:.2f}s after the deadline"
        assert seen_at >= deadline - 0.05, "ended before its deadline"
        assert info.ended_at is not None and info.started_at is not None
        lived = (info.ended_at - info.started_at).total_seconds()
        assert 3.0 - 0.05 <= lived < 4.0, lived
        with pytest.raises(SandboxTerminatedError, match="timeout"):
            sb.run("true")
    finally:
        sb.terminate()


def test_entrypoint_that_exits_at_once(server: LiveServer) -> None:
    # However fast the entrypoint is, its sandbox ends as `exited` with its code.
    for script in ("exit 3", "echo quick; exit 3"):
        sb = Sandbox.create(image="debian", entrypoint=["sh", "-c", script])
        try:
            info = wait_ended(sb, timeout=30)
            assert (info.status, info.reason, info.exit_code) == ("terminated", "exited", 3), info
        finally:
            sb.terminate()
    assert sb.logs() == "quick\n"


def test_entrypoint_that_cannot_start_is_a_user_error(server: LiveServer) -> None:
    # A missing program is the caller's mistake (4xx), or a sandbox that ends saying so;
    # never an internal server error.
    try:
        sb = Sandbox.create(image="debian", entrypoint=["/no/such/program"])
    except StockadeError as exc:
        assert not isinstance(exc, ServerError), f"{type(exc).__name__}: {exc}"
        assert "/no/such/program" in str(exc)
    else:
        try:
            info = wait_ended(sb, timeout=30)
            assert info.status in ("terminated", "failed")
            assert info.exit_code != 0
            assert "/no/such/program" in (info.message or "") + sb.logs()
        finally:
            sb.terminate()


def test_parallel_creates_and_terminates_leave_nothing_behind(server: LiveServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from .helpers import runsc_state

    tag = unique()
    with ThreadPoolExecutor(6) as pool:
        boxes = list(pool.map(lambda _: Sandbox.create(image="debian", tags={"p": tag}), range(6)))
        outs = list(pool.map(lambda sb: sb.run("hostname").stdout.strip(), boxes))
        assert outs == [sb.id for sb in boxes]
        ended = list(pool.map(lambda sb: sb.terminate(), boxes))
    assert all(info.status == "terminated" for info in ended)
    assert Sandbox.list(tags={"p": tag}, status="running") == []
    for sb in boxes:
        assert runsc_state(server.data_dir, sb.id) is None, f"runsc still knows {sb.id}"
        sandbox_dir = server.data_dir / "sandboxes" / sb.id
        for mount in ("merged", "disk"):
            assert not os.path.ismount(sandbox_dir / mount), f"{sandbox_dir / mount} still mounted"
        assert not (sandbox_dir / "disk.img").exists()
        assert not (Path("/sys/fs/cgroup/memory/stockade") / sb.id).exists()


def test_command_running_when_the_sandbox_times_out(server: LiveServer) -> None:
    # The command did not fail on its own: the caller must learn that the sandbox ended and
    # why, not get an exit code made up from runsc's internal error.
    sb = Sandbox.create(image="debian", timeout=2)
    try:
        p = sb.exec("sleep", "30")
        with pytest.raises(SandboxTerminatedError, match="timeout"):
            code = p.wait()
            raise AssertionError(f"wait() returned {code}; stderr: {p.stderr.read()!r}")
        p.close()
    finally:
        sb.terminate()

    sb = Sandbox.create(image="debian", timeout=2)
    try:
        with pytest.raises(SandboxTerminatedError, match="timeout"):
            r = sb.run("sleep 30")
            raise AssertionError(f"run() returned {r.exit_code}; stderr: {r.stderr!r}")
    finally:
        sb.terminate()


def test_command_running_when_the_sandbox_is_terminated(server: LiveServer) -> None:
    import threading

    sb = Sandbox.create(image="debian")
    try:
        p = sb.exec("sleep", "30")
        threading.Timer(1.0, sb.terminate).start()
        with pytest.raises(SandboxTerminatedError, match="terminated"):
            code = p.wait()
            raise AssertionError(f"wait() returned {code}; stderr: {p.stderr.read()!r}")
        p.close()
    finally:
        sb.terminate()


class _Sink:
    """A write target that counts bytes, and gives up after a while."""

    def __init__(self, limit: float) -> None:
        self.size = 0
        self.deadline = time.monotonic() + limit

    def write(self, data: bytes) -> int:
        if time.monotonic() > self.deadline:
            raise RuntimeError(f"still reading after {self.size} bytes")
        self.size += len(data)
        return len(data)


def test_file_read_cut_short_by_the_sandbox_ending_is_an_error(server: LiveServer) -> None:
    # A download that the sandbox's end cuts off must not look like a complete file.
    sb = Sandbox.create(image="debian", timeout=2)
    try:
        sink = _Sink(limit=60)
        with pytest.raises(StockadeError):
            size = sb.files.read_to("/dev/zero", sink)
            raise AssertionError(f"read_to returned normally after {size} bytes")
    finally:
        sb.terminate()
