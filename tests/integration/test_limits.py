"""Resource limits enforced by real runsc: memory, processes, CPU and disk."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from stockade import ConflictError, Sandbox, SandboxTerminatedError

from .conftest import LiveServer
from .helpers import cpuacct_usage_ns, wait_ended, wait_for

# Two busy loops for `seconds`, so the quota (not a single thread) is what limits them.
_BUSY = "timeout {s} sh -c 'while :; do :; done' & timeout {s} sh -c 'while :; do :; done'; wait"


@pytest.fixture(scope="module")
def bystander(server: LiveServer) -> Iterator[Sandbox]:
    """A sandbox that shares the host with the misbehaving ones and must stay unharmed."""
    sb = Sandbox.create(image="debian", timeout=900)
    try:
        yield sb
    finally:
        sb.terminate()


def _assert_unharmed(server: LiveServer, bystander: Sandbox) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    r = bystander.run("echo still fine; cat /proc/meminfo | head -1")
    assert r.exit_code == 0
    assert r.stdout.startswith("still fine\n")
    assert bystander.info().status == "running"


def _assert_oom_outcome(sb: Sandbox) -> None:
    """The sandbox either survived (the exec was the victim) or ended as failed/oom."""
    # The next command tells which: it runs, or it is refused because the sandbox ended
    # (or is ending) for memory.
    try:
        alive = sb.run("echo alive")
    except SandboxTerminatedError as exc:
        assert "memory" in str(exc), exc
        info = wait_ended(sb, timeout=10)
        assert (info.status, info.reason) == ("failed", "oom"), info
        assert info.message and "memory" in info.message
    else:
        assert (alive.exit_code, alive.stdout) == (0, "alive\n"), alive


def test_python_allocating_past_the_memory_limit(server: LiveServer, bystander: Sandbox) -> None:
    sb = Sandbox.create(image="python", memory=128)
    try:
        assert sb.run("python3 -c 'print(1)'").stdout == "1\n"
        try:
            r = sb.run(
                ["python3", "-c", "a = bytearray(400 * 2**20); print('allocated', len(a))"],
                timeout=60,
            )
        except SandboxTerminatedError as exc:
            # The stream ended with the sandbox: the error must say it was memory.
            assert "memory" in str(exc) or "oom" in str(exc), exc
        else:
            assert "allocated" not in r.stdout
            assert r.oom, r
            assert r.exit_code == 137
        _assert_oom_outcome(sb)
    finally:
        sb.terminate()
    _assert_unharmed(server, bystander)


def test_shell_growing_past_the_memory_limit(server: LiveServer, bystander: Sandbox) -> None:
    sb = Sandbox.create(image="debian", memory=128)
    try:
        doubling = "s=0123456789abcdef; while :; do s=$s$s; echo ${#s}; done"
        try:
            with sb.exec("sh", "-c", doubling, timeout=60) as p:
                sizes = p.stdout.read().split()
                code = p.wait()
        except SandboxTerminatedError as exc:
            assert "memory" in str(exc) or "oom" in str(exc), exc
        else:
            assert p.oom
            assert code == 137
            # It did get going before it was stopped, and never past the limit.
            assert sizes and int(sizes[-1]) <= 128 * 2**20
        _assert_oom_outcome(sb)
    finally:
        sb.terminate()
    _assert_unharmed(server, bystander)


def test_exec_right_after_an_oom_kill(server: LiveServer) -> None:
    # When an OOM kill takes the whole sandbox down, the killed command and the next call
    # must say so (oom, or 409 naming memory): no internal error, no made-up exit code.
    for _ in range(3):
        sb = Sandbox.create(image="python", memory=128)
        try:
            try:
                first = sb.run(["python3", "-c", "a = bytearray(400 * 2**20)"])
            except SandboxTerminatedError as exc:
                assert "memory" in str(exc)
                continue
            assert first.oom and first.exit_code == 137
            try:
                r = sb.run("echo alive")
            except SandboxTerminatedError as exc:
                assert "memory" in str(exc)
                continue
            assert (r.exit_code, r.stdout) == (0, "alive\n"), (
                f"exec after the OOM kill exited {r.exit_code} with {r.stderr!r}; the sandbox "
                f"is now {sb.info().status!r}"
            )
            assert str(server.data_dir) not in r.stderr, "runsc's host paths reached the caller"
        finally:
            sb.terminate()


def test_fork_bomb_is_contained(server: LiveServer, bystander: Sandbox) -> None:
    sb = Sandbox.create(image="debian")
    bomb = None
    try:
        cpu_before = cpuacct_usage_ns(sb.id)
        bomb = sb.exec("sh", "-c", "b() { b | b & }; b; sleep 60", timeout=20)
        wait_for(
            lambda: cpuacct_usage_ns(sb.id) - cpu_before > 200_000_000 or None, timeout=10,
            what="the bomb to get going (0.2 s of CPU)",
        )  # fmt: skip
        timings: list[float] = []
        deadline = time.monotonic() + 6
        with httpx.Client(base_url=server.url, headers=server.headers, timeout=10) as http:
            while time.monotonic() < deadline:
                for call in (
                    sb.info,
                    bystander.info,
                    lambda: http.get("/v1/sandboxes", params={"status": "running"}),
                ):
                    t = time.monotonic()
                    call()
                    timings.append(time.monotonic() - t)
                time.sleep(0.2)
        assert len(timings) >= 9
        assert max(timings) < 1.0, f"API calls during the bomb took up to {max(timings):.2f}s"
        # The bomb was really running meanwhile.
        assert (cpuacct_usage_ns(sb.id) - cpu_before) / 1e9 > 0.5
        assert sb.info().status == "running"
        started = time.monotonic()
        r = bystander.run("echo unaffected")
        assert r.stdout == "unaffected\n"
        assert time.monotonic() - started < 5
        _assert_unharmed(server, bystander)
    finally:
        ended = sb.terminate()
        if bomb is not None:
            bomb.close()
    assert ended.status == "terminated"
    _assert_unharmed(server, bystander)


def _cores_used(sb: Sandbox, seconds: int) -> float:
    before, started = cpuacct_usage_ns(sb.id), time.monotonic()
    r = sb.run(_BUSY.format(s=seconds), timeout=seconds + 30)
    after, wall = cpuacct_usage_ns(sb.id), time.monotonic() - started
    assert r.exit_code in (0, 124), r
    return (after - before) / 1e9 / wall


def test_cpu_quota_holds(server: LiveServer) -> None:
    with Sandbox.create(image="debian", cpu=0.5) as half:
        used = _cores_used(half, 4)
    assert 0.3 <= used <= 0.7, f"cpu=0.5 used {used:.2f} cores"
    with Sandbox.create(image="debian", cpu=2) as full:
        control = _cores_used(full, 4)
    assert control > 0.8, f"cpu=2 used only {control:.2f} cores"
    assert control > 1.5 * used


def test_disk_limit(server: LiveServer) -> None:
    with Sandbox.create(image="debian", disk=100) as sb:
        r = sb.run("head -c 200000000 /dev/zero > /big; echo rc=$?; wc -c < /big")
        assert "No space left" in r.stderr, r
        assert "rc=1" in r.stdout
        written = int(r.stdout.split()[-1])
        assert 50 * 2**20 < written <= 100 * 2**20
        image = server.data_dir / "sandboxes" / sb.id / "disk.img"
        allocated = image.stat().st_blocks * 512
        assert allocated <= 110 * 2**20, f"disk.img holds {allocated / 2**20:.0f} MiB"
        # The files API reports the full disk as such.
        with pytest.raises(ConflictError, match="disk"):
            sb.files.write("/more.bin", b"x" * (8 * 2**20))
        # Freeing space makes it usable again.
        sb.files.remove("/big")
        assert sb.files.write("/small.txt", "ok").size_bytes == 2
