"""The `stockade` command as users run it: a subprocess that finds the server via the env."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from stockade import Sandbox

from .conftest import LiveServer
from .helpers import read_until, unique, wait_ended

STOCKADE = Path(sys.executable).parent / "stockade"
_ID = re.compile(r"^sb-[0-9a-f]+$")


def cli(
    *args: str, input: str | bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `stockade ARGS…` with the test server's URL and token in its environment."""
    return subprocess.run(
        [str(STOCKADE), *args],
        input=input.decode("latin-1") if isinstance(input, bytes) else input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )


def _commands() -> list[str]:
    out = cli("--help").stdout
    section = out.split("Commands:", 1)[1]
    return [line.split()[0] for line in section.splitlines() if line.startswith("  ")]


def test_help_for_every_command(server: LiveServer) -> None:
    top = cli("--help")
    assert top.returncode == 0, top.stderr
    assert "Usage: stockade" in top.stdout
    commands = _commands()
    assert {"run", "create", "ls", "exec", "cp", "logs", "rm", "shell"} <= set(commands)
    for command in commands:
        r = cli(command, "--help")
        assert r.returncode == 0, (command, r.stderr)
        assert f"Usage: stockade {command}" in r.stdout, r.stdout
        assert r.stderr == ""
    version = cli("--version")
    assert version.returncode == 0 and "stockade" in version.stdout


def test_run_prints_output_and_exits_with_the_code(server: LiveServer) -> None:
    running_before = {s.id for s in Sandbox.list(status="running")}
    ended_before = {s.id for s in Sandbox.list(status="terminated")}
    r = cli("run", "--image", "debian", "--", "sh", "-c", "echo hi; echo warn >&2; exit 5")
    assert r.returncode == 5, r.stderr
    assert r.stdout == "hi\n"
    assert "warn" in r.stderr
    # The sandbox it ran in is gone.
    assert {s.id for s in Sandbox.list(status="running")} <= running_before
    used = [s for s in Sandbox.list(status="terminated") if s.id not in ended_before]
    assert len(used) == 1
    assert used[0].last_info.reason == "terminated"

    ok = cli("run", "--image", "debian", "--env", "WHO=cli", "--", "sh", "-c", "echo $WHO")
    assert (ok.returncode, ok.stdout) == (0, "cli\n")


def test_create_ls_exec_info_rm(server: LiveServer) -> None:
    tag = unique()
    created = cli("create", "--image", "debian", "--tag", f"suite={tag}", "--memory", "256")
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()
    assert _ID.match(sandbox_id), created.stdout
    try:
        info = Sandbox.from_id(sandbox_id).info()
        assert (info.status, info.memory, info.tags) == ("running", 256, {"suite": tag})

        listed = cli("ls")
        assert listed.returncode == 0, listed.stderr
        assert sandbox_id in listed.stdout
        as_json = cli("ls", "--tag", f"suite={tag}", "--json")
        assert [s["id"] for s in json.loads(as_json.stdout)] == [sandbox_id]

        x = cli("exec", sandbox_id, "--", "echo", "x")
        assert (x.returncode, x.stdout) == (0, "x\n"), x.stderr
        code = cli("exec", sandbox_id, "--", "sh", "-c", "echo out; echo err >&2; exit 4")
        assert (code.returncode, code.stdout) == (4, "out\n")
        assert "err" in code.stderr
        piped = cli("exec", sandbox_id, "--", "tr", "a-z", "A-Z", input="piped in\n")
        assert piped.stdout == "PIPED IN\n"
        env = cli(
            "exec", "-e", "K=v", "--workdir", "/tmp", sandbox_id, "--", "sh", "-c", "echo $K; pwd"
        )
        assert env.stdout == "v\n/tmp\n"

        shown = cli("info", sandbox_id)
        assert shown.returncode == 0 and "running" in shown.stdout

        removed = cli("rm", sandbox_id)
        assert removed.returncode == 0, removed.stderr
        assert sandbox_id in removed.stdout
        final = Sandbox.from_id(sandbox_id).info()
        assert (final.status, final.reason) == ("terminated", "terminated")
        assert sandbox_id not in cli("ls", "--status", "running").stdout

        late = cli("exec", sandbox_id, "--", "true")
        assert late.returncode == 1
        assert "terminated" in late.stderr
        missing = cli("rm", "sb-0000000000000000")
        assert missing.returncode == 1 and "sb-0000000000000000" in missing.stderr
    finally:
        Sandbox.from_id(sandbox_id).terminate()


def test_cp_round_trip(sb: Sandbox, tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000 + os.urandom(100_000)
    local = tmp_path / "payload.bin"
    local.write_bytes(data)

    up = cli("cp", str(local), f"{sb.id}:/data/payload.bin")
    assert up.returncode == 0, up.stderr
    assert sb.files.read_bytes("/data/payload.bin") == data

    back = tmp_path / "back.bin"
    down = cli("cp", f"{sb.id}:/data/payload.bin", str(back))
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == data

    # Into a directory on either side, like cp(1).
    assert cli("cp", str(local), f"{sb.id}:/data/dir/").returncode == 0
    assert sb.files.read_bytes("/data/dir/payload.bin") == data
    into = tmp_path / "into"
    into.mkdir()
    assert cli("cp", f"{sb.id}:/data/dir/payload.bin", str(into)).returncode == 0
    assert (into / "payload.bin").read_bytes() == data

    missing = cli("cp", f"{sb.id}:/data/nope.bin", str(tmp_path / "nope.bin"))
    assert missing.returncode != 0
    assert not (tmp_path / "nope.bin").exists()


def test_logs_of_an_entrypoint_sandbox(server: LiveServer) -> None:
    created = cli(
        "create", "--image", "debian",
        "--entrypoint", "sh -c 'echo from-main; echo to-err >&2; sleep 1; echo done'",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    sandbox_id = created.stdout.strip()
    try:
        followed = cli("logs", "--follow", sandbox_id, timeout=60)
        assert followed.returncode == 0, followed.stderr
        assert followed.stdout.splitlines() == ["from-main", "to-err", "done"]
        info = wait_ended(Sandbox.from_id(sandbox_id))
        assert (info.reason, info.exit_code) == ("exited", 0)
        again = cli("logs", sandbox_id)
        assert again.stdout == followed.stdout
    finally:
        Sandbox.from_id(sandbox_id).terminate()


def _drain(fd: int, seen: bytearray, limit: float) -> None:
    """Read until the other side closes (or ``limit`` passes)."""
    deadline = time.monotonic() + limit
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        seen += chunk


def test_shell_through_a_pty(sb: Sandbox) -> None:
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(
        [str(STOCKADE), "shell", sb.id],
        stdin=slave, stdout=slave, stderr=slave, env=os.environ.copy(), start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()
    try:
        # Wait for the shell to show up (its prompt), then type.
        assert read_until(master, re.compile(rb"[#$] ?$|#"), seen, 30), bytes(seen)
        os.write(master, b"echo $((6*7)); stty size\n")
        assert read_until(master, re.compile(rb"30 100\r?\n"), seen, 30), bytes(seen)
        assert re.search(rb"[\r\n]42\r?\n", seen), bytes(seen)
        os.write(master, b"exit 3\n")
        _drain(master, seen, 10)
        assert proc.wait(timeout=30) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
