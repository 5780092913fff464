"""stockade-agent driven over its protocol: on the host as a plain subprocess, and in gVisor.

On the host the agent is not PID 1, but it makes itself the subreaper of its children,
so reaping and process-group handling behave as in a sandbox. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stockade.server.agent import agent_binary, agent_sources, sources_digest
from stockade.server.agent.protocol import (
    DEFAULT_WINDOW,
    SYNC_PREAMBLE,
    Frame,
    FrameDecoder,
    FrameType,
    encode,
    encode_json,
    encode_window,
    find_hello_ack,
)
from stockade.server.config import DEFAULT_CACHE_DIR, find_runsc

from .helpers import wait_for

T = FrameType
DEADLINE_S = 10.0
LAST_EXEC = {T.EXIT, T.ERROR}
LAST_FILE = {T.END, T.RESULT, T.ERROR}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stockade-agent-test-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def binary(workdir: Path) -> Path:
    return agent_binary(workdir / "cache")


class AgentConn:
    """One end of the protocol over a pair of descriptors, with bounded waits."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.wfd = write_fd
        self.rfd = read_fd
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)
        self.raw = bytearray()  # bytes before the handshake completed
        self.decoder: FrameDecoder | None = None
        self.inbox: list[Frame] = []
        self.channels = itertools.count(1)

    # --------------------------------------------------------------- raw IO

    def _read_some(self) -> bool:
        try:
            data = os.read(self.rfd, 1 << 20)
        except BlockingIOError:
            return True
        if not data:
            return False
        if self.decoder is None:
            self.raw += data
        else:
            self.inbox += self.decoder.feed(data)
        return True

    def send(self, data: bytes, timeout: float = DEADLINE_S) -> None:
        """Write everything, reading meanwhile so that neither side can stall the other."""
        view = memoryview(data)
        deadline = time.monotonic() + timeout
        while view:
            left = deadline - time.monotonic()
            assert left > 0, "the agent stopped reading its input"
            readable, writable, _ = select.select([self.rfd], [self.wfd], [], left)
            if readable:
                self._read_some()
            if writable:
                with contextlib.suppress(BlockingIOError):
                    view = view[os.write(self.wfd, view[: 1 << 16]) :]

    def frame(self, type: int, channel: int, payload: bytes = b"") -> None:
        self.send(encode(type, channel, payload))

    def request(self, type: int, channel: int, obj: Any) -> None:
        self.send(encode_json(type, channel, obj))

    def pump(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for output; False once the agent closed its end."""
        readable, _, _ = select.select([self.rfd], [], [], max(0.0, timeout))
        return self._read_some() if readable else True

    # ------------------------------------------------------------ handshake

    def hello(self, timeout: float = DEADLINE_S) -> dict[str, Any]:
        nonce = secrets.token_bytes(16)
        self.decoder = None
        self.raw = bytearray()
        self.inbox = []
        self.send(SYNC_PREAMBLE + encode(T.HELLO, 0, nonce))
        deadline = time.monotonic() + timeout
        while (ack := find_hello_ack(self.raw, nonce)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no HELLO_ACK; got {bytes(self.raw[-200:])!r}"
            assert self.pump(left), "the agent closed its output"
        self.decoder = FrameDecoder()
        self.inbox = self.decoder.feed(bytes(self.raw[ack.end :]))
        return ack.info

    # ---------------------------------------------------------------- waits

    def wait_for(self, pred: Callable[[Frame], bool], timeout: float = DEADLINE_S) -> Frame:
        """Remove and return the first frame matching ``pred``, reading as needed."""
        deadline = time.monotonic() + timeout
        while True:
            for i, f in enumerate(self.inbox):
                if pred(f):
                    return self.inbox.pop(i)
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; pending frames: {self.inbox[:10]}"
            assert self.pump(left), "the agent closed its output"

    def collect(
        self,
        channel: int,
        last: set[FrameType],
        *,
        grant: bool = True,
        timeout: float = DEADLINE_S,
    ) -> list[Frame]:
        """Every frame of ``channel`` up to one of type ``last``, granting windows as read."""
        out: list[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            mine = [f for f in self.inbox if f.channel == channel]
            self.inbox = [f for f in self.inbox if f.channel != channel]
            for f in mine:
                out.append(f)
                if f.type in last:
                    return out
                if grant and f.type in (T.STDOUT, T.STDERR, T.DATA) and f.payload:
                    self.send(encode_window(channel, len(f.payload)))
            if any(f.channel == channel for f in self.inbox):
                continue  # read while granting a window
            left = deadline - time.monotonic()
            assert left > 0, f"timed out on channel {channel}; got {out[-5:]}"
            assert self.pump(left), "the agent closed its output"

    def output_of(self, channel: int, size: int, timeout: float = DEADLINE_S) -> list[Frame]:
        """The frames of ``channel`` up to ``size`` bytes of output, granting no window."""
        out: list[Frame] = []
        while sum(len(f.payload) for f in out if f.type in (T.STDOUT, T.STDERR, T.DATA)) < size:
            f = self.wait_for(lambda f: f.channel == channel, timeout)
            assert f.type not in LAST_EXEC | LAST_FILE, f"{f} after {out[-5:]}"
            out.append(f)
        return out

    def settled(self) -> list[Frame]:
        """Everything still to come of the requests made so far, dropped from the inbox.

        The witness that it has all come: the answer to a later request. The agent takes
        its input in order, and a command's EXIT comes after it has seen every process
        that ended before that command even started."""
        self.run(["true"])
        got, self.inbox = self.inbox, []
        return got

    # ----------------------------------------------------------- operations

    def exec(self, argv: list[str], **kw: Any) -> int:
        ch = next(self.channels)
        req: dict[str, Any] = {"argv": argv, "env": ["PATH=/usr/bin:/bin"], "cwd": "/"}
        req.update(kw)
        self.request(T.EXEC, ch, req)
        return ch

    def run(self, argv: list[str], stdin: bytes | None = None, **kw: Any) -> Result:
        ch = self.exec(argv, **kw)
        if stdin is not None:
            self.frame(T.STDIN, ch, stdin)
            self.frame(T.STDIN_EOF, ch)
        return Result(self.collect(ch, LAST_EXEC))

    def file_op(self, type: FrameType, **req: Any) -> Frame:
        ch = next(self.channels)
        self.request(type, ch, req)
        frames = self.collect(ch, LAST_FILE)
        assert len(frames) == 1, frames
        return frames[0]

    def write_file(self, path: str, data: bytes, **req: Any) -> Frame:
        ch = next(self.channels)
        self.request(T.FILE_WRITE, ch, {"path": path, **req})
        first = self.wait_for(lambda f: f.channel == ch)
        if first.type != T.READY:
            return first
        for i in range(0, len(data), 256 * 1024):
            self.frame(T.DATA, ch, data[i : i + 256 * 1024])
        self.frame(T.END, ch)
        return self.wait_for(lambda f: f.channel == ch)

    def read_file(self, path: str) -> tuple[bytes, Frame]:
        ch = next(self.channels)
        self.request(T.FILE_READ, ch, {"path": path})
        frames = self.collect(ch, LAST_FILE)
        return b"".join(f.payload for f in frames if f.type == T.DATA), frames[-1]


@dataclass
class Result:
    frames: list[Frame]
    stdout: bytes = field(init=False)
    stderr: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.stdout = b"".join(f.payload for f in self.frames if f.type == T.STDOUT)
        self.stderr = b"".join(f.payload for f in self.frames if f.type == T.STDERR)

    @property
    def last(self) -> Any:
        return self.frames[-1].json()

    @property
    def exit_code(self) -> int:
        assert self.frames[-1].type == T.EXIT, self.frames
        code: int = self.last["exit_code"]
        return code

    @property
    def pid(self) -> int:
        assert self.frames[0].type == T.STARTED, self.frames
        pid: int = self.frames[0].json()["pid"]
        return pid


class HostAgent(AgentConn):
    def __init__(self, binary: Path, log: Path, args: list[str] | None = None) -> None:
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [str(binary), *(args or [])],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        super().__init__(self.proc.stdin.fileno(), self.proc.stdout.fileno())
        self.log = log

    def stop(self) -> None:
        """Closing its input ends an agent without entrypoint (and kills its execs)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()


@pytest.fixture
def agent(binary: Path, workdir: Path) -> Iterator[HostAgent]:
    a = HostAgent(binary, workdir / f"agent-{uuid.uuid4().hex[:8]}.log")
    try:
        a.hello()
        yield a
    finally:
        a.stop()


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie counts as gone: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        # ProcessLookupError: it exited between the open and the read.
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    wait_for(
        lambda: all(gone(p) for p in pids) or None, timeout=timeout, interval=0.02,
        what=f"processes {pids} to end",
    )  # fmt: skip


# -------------------------------------------------------------------------------- build


def test_source_compiles_with_werror(workdir: Path) -> None:
    src_dir = workdir / "werror"
    src_dir.mkdir()
    for name, content in agent_sources().items():
        (src_dir / name).write_bytes(content)
    c_files = sorted(str(p) for p in src_dir.glob("*.c"))
    flags = ["-static", "-O2", "-Wall", "-Wextra", "-Werror", "-iquote", str(src_dir)]
    cmd = ["gcc", *flags, "-o", str(workdir / "w"), *c_files]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_sources_are_every_c_and_h_file_of_the_agent_directory() -> None:
    sources = agent_sources()
    assert list(sources) == sorted(sources)
    assert "main.c" in sources and "frame.h" in sources
    assert all(name.endswith((".c", ".h")) for name in sources)
    assert not any(name.endswith(".py") for name in sources)


def test_any_source_file_changes_the_hash() -> None:
    sources = agent_sources()
    digest = sources_digest(sources)
    assert sources_digest(dict(reversed(sources.items()))) == digest  # order of the dict
    for name in ("main.c", "frame.h"):
        assert sources_digest({**sources, name: sources[name] + b"\n"}) != digest
    assert sources_digest({**sources, "extra.h": b""}) != digest
    renamed = {("renamed.c" if n == "main.c" else n): c for n, c in sources.items()}
    assert sources_digest(renamed) != digest
    # A file's bytes cannot pass for the next file's name.
    assert sources_digest({"a.c": b"xb.c", "c.h": b""}) != sources_digest(
        {"a.c": b"x", "b.cc.h": b""}
    )


def test_binary_is_cached_by_source_hash(binary: Path, workdir: Path) -> None:
    digest = sources_digest(agent_sources())
    assert binary == workdir / "cache" / "agent" / f"stockade-agent-{digest}"
    assert os.access(binary, os.X_OK)
    assert agent_binary(workdir / "cache") == binary


# ----------------------------------------------------------------------------- handshake


def test_hello_ack(agent: HostAgent) -> None:
    info = agent.hello()
    assert info == {"version": 1, "pid": agent.proc.pid}


def test_garbage_padding_and_resync(agent: HostAgent) -> None:
    agent.send(b"\x01\x02 not a frame")
    err = agent.wait_for(lambda f: f.channel == 0)
    assert err.type == T.ERROR and err.json()["errno"] == 22
    # A frame cut short by a dead server, an oversized length, padding: then a new session.
    half = encode(T.STDIN, 9, b"x" * 5000)[:777]
    oversized = b"\xa5\xff\xff\xff\xff" + b"\x05\x00\x00\x00\x01"
    agent.send(oversized + bytes(100) + half)
    agent.hello()
    assert agent.run(["echo", "ok"]).stdout == b"ok\n"
    # Bad JSON and unknown frames.
    agent.frame(T.EXEC, 77, b"{not json")
    err = agent.wait_for(lambda f: f.channel == 77)
    assert err.type == T.ERROR and err.json()["errno"] == 22
    agent.frame(200, 5, b"from the future")
    agent.frame(T.STDIN, 12345, b"nobody")
    agent.frame(T.EXEC, 0, b'{"argv":["true"]}')
    assert agent.wait_for(lambda f: f.channel == 0).type == T.ERROR
    assert agent.run(["true"]).exit_code == 0
    assert agent.settled() == []


# ---------------------------------------------------------------------------------- exec


def test_echo(agent: HostAgent) -> None:
    r = agent.run(["echo", "hello", "world"])
    assert [f.type for f in r.frames] == [T.STARTED, T.STDOUT, T.EXIT]
    assert r.pid > 0
    assert r.stdout == b"hello world\n"
    assert r.exit_code == 0


@pytest.mark.parametrize(
    ("script", "code"),
    [("exit 0", 0), ("exit 3", 3), ("exit 255", 255), ("kill -9 $$", 137), ("kill $$", 143)],
)
def test_exit_codes(agent: HostAgent, script: str, code: int) -> None:
    assert agent.run(["sh", "-c", script]).exit_code == code


def test_stdout_and_stderr_are_separate(agent: HostAgent) -> None:
    r = agent.run(["sh", "-c", "echo out; echo err >&2; echo out2"])
    assert r.stdout == b"out\nout2\n"
    assert r.stderr == b"err\n"


def test_stdin_and_eof(agent: HostAgent) -> None:
    ch = agent.exec(["cat"])
    agent.frame(T.STDIN, ch, b"hello ")
    agent.frame(T.STDIN, ch, b"stdin\n" * 1000)
    agent.frame(T.STDIN_EOF, ch)
    r = Result(agent.collect(ch, LAST_EXEC))
    assert r.stdout == b"hello " + b"stdin\n" * 1000
    assert r.exit_code == 0


def test_missing_program(agent: HostAgent) -> None:
    r = agent.run(["no-such-program-anywhere"])
    assert [f.type for f in r.frames] == [T.ERROR]
    assert r.last["errno"] == 2
    assert "no-such-program-anywhere" in r.last["message"]
    r = agent.run(["/nonexistent/prog"])
    assert r.last["errno"] == 2


def test_not_executable(agent: HostAgent, workdir: Path) -> None:
    f = workdir / "notexec"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(0o644)
    r = agent.run([str(f)])
    assert [f.type for f in r.frames] == [T.ERROR]
    assert r.last["errno"] == 13


def test_bad_cwd(agent: HostAgent) -> None:
    r = agent.run(["true"], cwd="/no/such/dir")
    assert [f.type for f in r.frames] == [T.ERROR]
    assert r.last["errno"] == 2
    assert "/no/such/dir" in r.last["message"]
    r = agent.run(["pwd"], cwd="/tmp")
    assert r.stdout == b"/tmp\n"


def test_env_is_exact_and_path_is_searched(agent: HostAgent, workdir: Path) -> None:
    # No PATH in the env: the default one finds env(1), which prints exactly this env.
    env = ["A=1", "B=two words", "C=é"]
    r = agent.run(["env"], env=env)
    assert r.stdout.decode().splitlines() == env
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    prog = bindir / "stockade-test-prog"
    prog.write_text('#!/bin/sh\necho "found $X"\n')
    prog.chmod(0o755)
    r = agent.run(["stockade-test-prog"], env=[f"PATH=/nonexistent:{bindir}", "X=y"])
    assert r.stdout == b"found y\n"


def test_pty_size_and_resize(agent: HostAgent) -> None:
    ch = agent.exec(
        ["sh", "-c", "stty size; read line; stty size; tty"],
        pty=True, cols=100, rows=30,
    )  # fmt: skip
    out = b""
    while b"30 100" not in out:
        f = agent.wait_for(lambda f: f.channel == ch and f.type in (T.STDOUT, T.EXIT))
        assert f.type == T.STDOUT, f
        out += f.payload
    agent.request(T.RESIZE, ch, {"cols": 120, "rows": 40})
    agent.frame(T.STDIN, ch, b"go\n")
    r = Result(agent.collect(ch, LAST_EXEC))
    assert r.exit_code == 0
    assert b"40 120" in r.stdout
    assert b"/dev/pts/" in r.stdout
    assert r.stderr == b""  # a terminal has one stream


def test_signal_reaches_the_process(agent: HostAgent) -> None:
    ch = agent.exec(["sleep", "100"])
    agent.wait_for(lambda f: f.channel == ch and f.type == T.STARTED)
    agent.request(T.SIGNAL, ch, {"signal": 15})
    r = Result(agent.collect(ch, LAST_EXEC))
    assert r.exit_code == 128 + 15


def test_close_kills_the_whole_group(agent: HostAgent) -> None:
    ch = agent.exec(["sh", "-c", "sleep 100 & echo $!; sleep 100 & echo $!; wait"])
    started = agent.wait_for(lambda f: f.channel == ch and f.type == T.STARTED)
    out = b""
    while out.count(b"\n") < 2:
        out += agent.wait_for(lambda f: f.channel == ch and f.type == T.STDOUT).payload
    pids = [started.json()["pid"], *map(int, out.split())]
    assert not any(gone(p) for p in pids)
    agent.frame(T.CLOSE, ch)
    wait_gone(pids)
    assert [f for f in agent.settled() if f.channel == ch] == []


def test_background_child_does_not_delay_exit(agent: HostAgent) -> None:
    start = time.monotonic()
    r = agent.run(["sh", "-c", "sleep 30 & echo $!"])
    elapsed = time.monotonic() - start
    bg = int(r.stdout)
    try:
        assert r.exit_code == 0
        assert elapsed < 1.0
        assert not gone(bg)  # EXIT does not kill what the command left running
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(bg, signal.SIGKILL)


def test_output_window(agent: HostAgent, workdir: Path) -> None:
    data = os.urandom(5 * 1000 * 1000)
    src = workdir / "big.bin"
    src.write_bytes(data)
    ch = agent.exec(["cat", str(src)])
    mine = agent.output_of(ch, DEFAULT_WINDOW)
    sent = sum(len(f.payload) for f in mine if f.type == T.STDOUT)
    assert mine[0].type == T.STARTED
    assert sent == DEFAULT_WINDOW
    assert agent.settled() == []  # nothing more without a WINDOW...
    assert not gone(mine[0].json()["pid"])  # ...and cat waits for one, the file half sent
    agent.send(encode_window(ch, sent))
    r = Result(mine + agent.collect(ch, LAST_EXEC))
    assert r.exit_code == 0
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(data).digest()


def test_window_at_exit_keeps_output(agent: HostAgent) -> None:
    """Output still in the pipe when the process exits is kept until a window allows it."""
    ch = agent.exec(["sh", "-c", "head -c 300000 /dev/zero"])
    held = agent.output_of(ch, DEFAULT_WINDOW)
    # The rest fits in the pipe: the command ends, its last output not sent yet.
    wait_gone([held[0].json()["pid"]])
    held += [f for f in agent.settled() if f.channel == ch]
    assert sum(len(f.payload) for f in held if f.type == T.STDOUT) == DEFAULT_WINDOW
    assert all(f.type != T.EXIT for f in held)
    agent.send(encode_window(ch, 1 << 20))
    r = Result(held + agent.collect(ch, LAST_EXEC))
    assert r.stdout == bytes(300000) and r.exit_code == 0


def test_hello_kills_running_execs(agent: HostAgent) -> None:
    ch = agent.exec(["sleep", "100"])
    pid = agent.wait_for(lambda f: f.channel == ch and f.type == T.STARTED).json()["pid"]
    agent.hello()
    wait_gone([pid])
    agent.request(T.SIGNAL, ch, {"signal": 9})
    agent.frame(T.STDIN, ch, b"x")
    # The channel number is free again; what was sent to the old command came to nothing
    # (the answer to the next request comes after anything those two would bring).
    agent.request(T.EXEC, ch, {"argv": ["echo", "again"], "env": []})
    again = Result(agent.collect(ch, LAST_EXEC))
    assert [f.type for f in again.frames] == [T.STARTED, T.STDOUT, T.EXIT]
    assert again.stdout == b"again\n"
    assert agent.inbox == []


def test_many_concurrent_execs(agent: HostAgent) -> None:
    chans = {}
    for i in range(50):
        chans[agent.exec(["sh", "-c", f"echo {i}; echo e{i} >&2; exit {i % 7}"])] = i
    for ch, i in chans.items():
        r = Result(agent.collect(ch, LAST_EXEC))
        assert (r.stdout, r.stderr, r.exit_code) == (f"{i}\n".encode(), f"e{i}\n".encode(), i % 7)


# --------------------------------------------------------------------------------- files


def test_files(agent: HostAgent, workdir: Path) -> None:
    root = workdir / "files"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    target = f"{root}/a/b/c/data.bin"
    res = agent.write_file(target, payload, mode=0o640)
    assert res.type == T.RESULT, res
    info = res.json()
    assert info["path"] == target and info["name"] == "data.bin"
    assert (info["type"], info["size"], info["mode"]) == ("file", len(payload), 0o640)
    assert info["target"] is None
    assert abs(info["mtime"] - os.stat(target).st_mtime) < 1e-6
    assert Path(target).read_bytes() == payload
    assert oct(os.stat(f"{root}/a/b").st_mode & 0o777) == oct(0o755)

    data, last = agent.read_file(target)
    assert last.type == T.END and data == payload

    # stat, symlinks are not followed
    os.symlink("a/b", f"{root}/link")
    st = agent.file_op(T.FILE_STAT, path=f"{root}/link").json()
    assert (st["type"], st["target"], st["name"]) == ("symlink", "a/b", "link")
    assert agent.file_op(T.FILE_STAT, path="/").json()["name"] == "/"

    # list: sorted, with full paths; odd names round-trip
    odd = b'caf\xc3\xa9 \xff\n"q"'.decode("utf-8", "surrogateescape")
    Path(root / "zz").write_text("z")
    (root / odd).write_bytes(b"odd")
    listing = agent.file_op(T.FILE_LIST, path=str(root))
    assert listing.type == T.RESULT
    entries = listing.json()["entries"]
    assert [e["name"] for e in entries] == sorted(["a", "link", "zz", odd], key=os.fsencode)
    by_name = {e["name"]: e for e in entries}
    assert by_name["a"]["type"] == "dir" and by_name["a"]["path"] == f"{root}/a"
    assert by_name[odd]["size"] == 3
    assert agent.file_op(T.FILE_STAT, path=f"{root}/{odd}").json()["name"] == odd

    # mkdir
    made = agent.file_op(T.FILE_MKDIR, path=f"{root}/m/n", parents=True)
    assert made.type == T.RESULT and made.json()["type"] == "dir"
    assert agent.file_op(T.FILE_MKDIR, path=f"{root}/m/n").type == T.RESULT  # exists: fine
    assert agent.file_op(T.FILE_MKDIR, path=f"{root}/x/y").json()["errno"] == 2
    assert agent.file_op(T.FILE_MKDIR, path=f"{root}/zz").json()["errno"] == 17
    assert agent.file_op(T.FILE_MKDIR, path=f"{root}/zz/q", parents=True).json()["errno"] == 20
    assert agent.write_file(f"{root}/zz/q/f", b"").json()["errno"] == 20

    # remove
    err = agent.file_op(T.FILE_REMOVE, path=f"{root}/a").json()
    assert err["errno"] == 39 and str(root) in err["message"]
    assert agent.file_op(T.FILE_REMOVE, path=f"{root}/link").json() == {}
    assert (root / "a").is_dir()  # the link went, not its target
    assert agent.file_op(T.FILE_REMOVE, path=f"{root}/a", recursive=True).json() == {}
    assert not (root / "a").exists()
    assert agent.file_op(T.FILE_REMOVE, path=f"{root}/m/n").json() == {}
    assert agent.file_op(T.FILE_REMOVE, path="/", recursive=True).json()["errno"] == 13

    # errors
    missing = f"{root}/missing"
    for op in (T.FILE_STAT, T.FILE_LIST, T.FILE_READ, T.FILE_REMOVE):
        e = agent.file_op(op, path=missing)
        assert e.type == T.ERROR and e.json()["errno"] == 2 and missing in e.json()["message"]
    assert agent.file_op(T.FILE_READ, path=str(root)).json()["errno"] == 21
    assert agent.file_op(T.FILE_LIST, path=f"{root}/zz").json()["errno"] == 20
    assert agent.write_file(str(root), b"x").json()["errno"] == 21
    assert agent.file_op(T.FILE_STAT, path="relative").json()["errno"] == 22


def test_write_reports_enospc(agent: HostAgent, workdir: Path) -> None:
    mnt = workdir / "small"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]
    subprocess.run(mount, capture_output=True, check=True)
    try:
        res = agent.write_file(f"{mnt}/big", os.urandom(1024 * 1024))
        assert res.type == T.ERROR and res.json()["errno"] == 28, res
        assert f"{mnt}/big" in res.json()["message"]
        assert agent.settled() == []  # the rest of the DATA, and END, were ignored
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_file_read_window(agent: HostAgent, workdir: Path) -> None:
    path = workdir / "window.bin"
    data = os.urandom(1024 * 1024)
    path.write_bytes(data)
    ch = next(agent.channels)
    agent.request(T.FILE_READ, ch, {"path": str(path)})
    held = agent.output_of(ch, DEFAULT_WINDOW)
    held += [f for f in agent.settled() if f.channel == ch]  # no more without a WINDOW
    assert sum(len(f.payload) for f in held) == DEFAULT_WINDOW
    agent.send(encode_window(ch, DEFAULT_WINDOW))
    frames = held + agent.collect(ch, LAST_FILE)
    assert b"".join(f.payload for f in frames if f.type == T.DATA) == data


def test_large_listing_comes_in_parts(agent: HostAgent, workdir: Path) -> None:
    d = workdir / "many"
    d.mkdir()
    names = sorted(f"{i:05d}-{'n' * 100}" for i in range(12000))  # > 1 MiB of JSON
    for n in names:
        (d / n).touch()
    ch = next(agent.channels)
    agent.request(T.FILE_LIST, ch, {"path": str(d)})
    frames = agent.collect(ch, LAST_FILE, grant=False)
    assert frames[-1].type == T.RESULT and len(frames) > 1
    assert all(f.type == T.DATA for f in frames[:-1])
    got = [e["name"] for f in frames for e in json.loads(f.payload)["entries"]]
    assert got == names


def test_file_write_can_be_abandoned(agent: HostAgent, workdir: Path) -> None:
    ch = next(agent.channels)
    path = workdir / "abandoned"
    agent.request(T.FILE_WRITE, ch, {"path": str(path), "mode": 0o600})
    assert agent.wait_for(lambda f: f.channel == ch).type == T.READY
    agent.frame(T.DATA, ch, b"partial")
    agent.frame(T.CLOSE, ch)
    agent.frame(T.END, ch)
    assert agent.settled() == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)


def test_write_and_mkdir_act_as_the_user(binary: Path) -> None:
    # With uid/gid the kernel checks the user's permissions, so a symlink planted at the
    # path leads only where the user may write; what is made is the user's. (The host
    # kernel here; tests/integration/test_file_owner.py checks gVisor's.)
    assert os.geteuid() == 0, "acting as a user needs root: run the suite with `make test`"
    d = Path(tempfile.mkdtemp(prefix="stockade-agent-user-", dir="/tmp"))
    log = d / "agent.log"
    try:
        d.chmod(0o1777)
        secret = d / "secret"
        secret.write_bytes(b"root's")
        (d / "link").symlink_to(secret)
        nobody = {"uid": 65534, "gid": 65534}
        agent = HostAgent(binary, log)
        try:
            agent.hello()
            denied = agent.write_file(f"{d}/link", b"evil", **nobody).json()
            assert denied["errno"] == 13 and f"{d}/link" in denied["message"], denied
            assert secret.read_bytes() == b"root's"

            made = agent.write_file(f"{d}/new/sub/f", b"mine", uid=1234, gid=2345)
            assert made.type == T.RESULT, made
            for p in ("new", "new/sub", "new/sub/f"):
                st = (d / p).stat()
                assert (st.st_uid, st.st_gid) == (1234, 2345), p
            assert (d / "new/sub/f").read_bytes() == b"mine"
            # Another user may not add to them (no supplementary groups of root's either).
            denied = agent.write_file(f"{d}/new/sub/g", b"x", **nobody).json()
            assert denied["errno"] == 13, denied

            made = agent.file_op(T.FILE_MKDIR, path=f"{d}/m/n", parents=True, **nobody)
            assert made.type == T.RESULT, made
            assert (d / "m/n").stat().st_uid == 65534 and (d / "m").stat().st_gid == 65534
            assert agent.file_op(T.FILE_MKDIR, path=f"{d}/new/x", **nobody).json()["errno"] == 13

            # Without uid/gid: root, as before.
            assert agent.write_file(f"{d}/link", b"root").type == T.RESULT
            assert secret.read_bytes() == b"root"

            for bad in ({"uid": -1}, {"gid": 2**31}, {"uid": "0"}, {"uid": 1.5}):
                err = agent.write_file(f"{d}/bad", b"", **bad).json()
                assert err["errno"] == 22 and "uid" in err["message"], (bad, err)
                err = agent.file_op(T.FILE_MKDIR, path=f"{d}/bad", **bad).json()
                assert err["errno"] == 22, (bad, err)
            assert not (d / "bad").exists()
            agent.hello()  # still answering
        finally:
            agent.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------- process lifetime


def test_entrypoint(binary: Path, workdir: Path) -> None:
    log = workdir / "entry.log"
    a = HostAgent(binary, log, ["--", "sh", "-c", "echo out; echo err >&2; exit 7"])
    try:
        assert a.proc.wait(DEADLINE_S) == 7
        assert a.proc.stdout is not None
        frames = FrameDecoder().feed(a.proc.stdout.read())
        assert frames == [Frame(T.ENTRYPOINT_EXIT, 0, b'{"exit_code":7}')]
        assert log.read_text() == "out\nerr\n"
    finally:
        a.stop()


def test_sigterm_goes_to_the_entrypoint(binary: Path, workdir: Path) -> None:
    script = "trap 'echo term; exit 3' TERM; echo ready; while :; do sleep 0.05; done"
    log = workdir / "term.log"
    a = HostAgent(binary, log, ["--", "sh", "-c", script])
    try:
        wait_for(lambda: "ready" in log.read_text() or None, timeout=DEADLINE_S, interval=0.02,
                 what="the entrypoint's trap")  # fmt: skip
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(DEADLINE_S) == 3
        assert "term" in log.read_text()
    finally:
        a.stop()


def test_sigterm_without_entrypoint_exits_0(agent: HostAgent) -> None:
    ch = agent.exec(["sleep", "100"])
    pid = agent.wait_for(lambda f: f.channel == ch and f.type == T.STARTED).json()["pid"]
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(DEADLINE_S) == 0
    wait_gone([pid])


# ------------------------------------------------------------------------------- gVisor

CACHE = Path(os.environ.get("STOCKADE_CACHE_DIR") or DEFAULT_CACHE_DIR)
RUNSC = Path(find_runsc(CACHE))
ROOTFS = CACHE / "images" / "debian" / "rootfs"


@pytest.mark.runsc
def test_in_gvisor(binary: Path, workdir: Path) -> None:
    # `make test` prepares runsc and the debian image; missing either is a set-up failure.
    assert os.geteuid() == 0, "runsc needs root: run the suite with `make test`"
    assert ROOTFS.is_dir(), f"{ROOTFS} is missing: `make test` builds it"
    base = Path(tempfile.mkdtemp(prefix="gv-", dir=workdir))
    bundle, state = base / "bundle", base / "state"
    bundle.mkdir()
    state.mkdir()
    spec = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/.stockade/agent"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
        },
        # Writes land in the in-memory overlay (--overlay2=root:memory), never in the image.
        "root": {"path": str(ROOTFS), "readonly": False},
        "hostname": "agent-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/.stockade/agent", "type": "bind", "source": str(binary),
             "options": ["bind", "ro"]},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")]},
    }  # fmt: skip
    (bundle / "config.json").write_text(json.dumps(spec))
    fin, fout = base / "agent.in", base / "agent.out"
    os.mkfifo(fin)
    os.mkfifo(fout)
    sid = f"agent-test-{uuid.uuid4().hex[:8]}"
    runsc = [str(RUNSC), f"--root={state}", "--platform=systrap", "--network=none",
             "--overlay2=root:memory"]  # fmt: skip
    # The sandbox keeps these read-write FIFO descriptors: neither side ever sees EOF.
    rw_in = os.open(fin, os.O_RDWR)
    rw_out = os.open(fout, os.O_RDWR)
    with open(base / "output.log", "ab") as log:
        started = subprocess.run(
            [*runsc, "run", "--detach", f"--bundle={bundle}", sid],
            stdin=rw_in, stdout=rw_out, stderr=log, timeout=60, check=False,
        )  # fmt: skip
    os.close(rw_in)
    os.close(rw_out)
    conn: AgentConn | None = None
    try:
        assert started.returncode == 0, (base / "output.log").read_text()[-3000:]

        def connect() -> AgentConn:
            # Non-blocking opens: ENXIO instead of a hang if the sandbox is gone.
            try:
                w = os.open(fin, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                log = (base / "output.log").read_text()[-3000:]
                raise AssertionError(f"the sandbox holds no agent.in: {e}\n{log}") from e
            r = os.open(fout, os.O_RDONLY | os.O_NONBLOCK)
            return AgentConn(w, r)

        def disconnect(c: AgentConn) -> None:
            os.close(c.wfd)
            os.close(c.rfd)

        conn = connect()
        info = conn.hello(timeout=30)
        assert info == {"version": 1, "pid": 1}
        r = conn.run(["sh", "-c", "echo hi from $(cat /proc/1/comm)"])
        assert (r.stdout, r.exit_code) == (b"hi from agent\n", 0), r.frames
        payload = os.urandom(600_000)
        res = conn.write_file("/tmp/deep/dir/file.bin", payload, mode=0o600)
        assert res.type == T.RESULT and res.json()["size"] == len(payload), res
        data, last = conn.read_file("/tmp/deep/dir/file.bin")
        assert last.type == T.END and data == payload
        assert not (ROOTFS / "tmp" / "deep").exists()
        pty = conn.run(["sh", "-c", "stty size"], pty=True, cols=91, rows=19)
        assert b"19 91" in pty.stdout, pty.frames
        # A server restart: a half-sent frame, new descriptors, a new handshake.
        ch = conn.exec(["sleep", "100"])
        conn.wait_for(lambda f: f.channel == ch and f.type == T.STARTED)
        conn.send(encode(T.STDIN, ch, b"q" * 1000)[:500])
        disconnect(conn)
        conn = connect()
        conn.hello(timeout=30)
        assert conn.run(["echo", "again"]).stdout == b"again\n"
        # Orphans get reaped by the agent: no zombies pile up. Unreaped, the five sleeps
        # would stay in the process table for good.
        conn.run(["sh", "-c", "for i in 1 2 3 4 5; do (sleep 0.01 &) ; done"])

        def reaped() -> str | None:
            stats = conn.run(["sh", "-c", "cat /proc/[0-9]*/stat"]).stdout.decode()
            return stats if "(sleep)" not in stats else None

        ps = wait_for(reaped, timeout=10, interval=0.05, what="the orphaned sleeps to be reaped")
        assert ") Z " not in ps, ps
        # Round trip of a trivial exec over the channel.
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            assert conn.run(["true"]).exit_code == 0
            times.append(time.perf_counter() - t0)
        ms = sorted(t * 1000 for t in times)
        print(
            f"\ngVisor exec round trip of `true` over the agent channel: "
            f"median {statistics.median(ms):.2f} ms, min {ms[0]:.2f} ms, max {ms[-1]:.2f} ms"
        )
    finally:
        if conn is not None:
            with contextlib.suppress(OSError):
                disconnect(conn)
        subprocess.run(
            [*runsc, "delete", "--force", sid], capture_output=True, timeout=60, check=False
        )
