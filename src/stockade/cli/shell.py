"""``stockade shell``: an interactive terminal in a sandbox.

The local terminal goes into raw mode (restored on every exit path), keystrokes go to the
remote pty as they are typed, its output is written back from a second thread, and a
SIGWINCH handler forwards the terminal size.
"""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from types import FrameType

import click

from stockade import CommandTimeoutError, Process, StockadeError
from stockade.cli._common import CliState, fail, pass_state

# Prefer bash, fall back to sh, in one exec (no extra round trip to probe the image).
_DEFAULT_SHELL = [
    "sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi",
]  # fmt: skip


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Put the terminal on ``fd`` into raw mode and restore it afterwards, whatever happens."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _size() -> tuple[int, int]:
    size = shutil.get_terminal_size()
    return size.columns, size.lines


def _pump_output(process: Process, out_fd: int, wake_fd: int, done: threading.Event) -> None:
    try:
        for chunk in process.stdout.iter_bytes():
            while chunk:
                chunk = chunk[os.write(out_fd, chunk) :]
    except (StockadeError, OSError):
        pass  # the main thread reports the outcome through wait()
    finally:
        # The flag goes up before the wake-up: the main thread may run the moment the byte
        # lands, and the thread itself is still alive then, so is_alive() would lie.
        done.set()
        os.write(wake_fd, b"x")  # unblock the main thread's select()


def interact(process: Process, in_fd: int, out_fd: int) -> None:
    """Shuttle bytes between the local terminal and ``process`` until its output ends."""
    wake_r, wake_w = os.pipe()
    resized = threading.Event()
    done = threading.Event()
    previous = signal.getsignal(signal.SIGWINCH)

    def on_winch(signum: int, frame: FrameType | None) -> None:
        # Only flag it: sending from a signal handler could interleave with a send that
        # the interrupted main thread is in the middle of.
        resized.set()
        os.write(wake_w, b"w")

    signal.signal(signal.SIGWINCH, on_winch)
    output = threading.Thread(
        target=_pump_output, args=(process, out_fd, wake_w, done), daemon=True, name="pty-output"
    )
    output.start()
    stdin_open = True
    try:
        while not done.is_set():
            watched = [wake_r, in_fd] if stdin_open else [wake_r]
            ready, _, _ = select.select(watched, [], [])
            if wake_r in ready:
                os.read(wake_r, 1024)
            if resized.is_set():
                resized.clear()
                process.resize(*_size())
            if in_fd in ready:
                data = os.read(in_fd, 65536)
                try:
                    if data:
                        process.stdin.write(data)
                    else:
                        stdin_open = False
                        process.stdin.close()
                except StockadeError:
                    stdin_open = False  # the shell exited; its output thread ends next
    finally:
        signal.signal(signal.SIGWINCH, previous)
        if done.is_set():
            output.join()  # its last write to wake_w must land before the pipe is closed
        os.close(wake_r)
        os.close(wake_w)


@click.command()
@click.argument("sandbox_id", metavar="ID")
@click.option(
    "--cmd", "cmd", metavar="CMD",
    help="Program to run, as a shell-quoted line [default: bash, or sh without bash].",
)  # fmt: skip
@click.option("--workdir", help="Working directory for the shell.")
@pass_state
@click.pass_context
def shell(
    ctx: click.Context,
    state: CliState,
    sandbox_id: str,
    cmd: str | None,
    workdir: str | None,
) -> None:
    """Open an interactive shell (a pty) in a running sandbox.

    Exits with the shell's exit code.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        fail("`stockade shell` needs a terminal; use `stockade exec ID -- CMD` with pipes")
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    argv = shlex.split(cmd) if cmd else _DEFAULT_SHELL
    if not argv:
        fail("--cmd is empty; give the program to run")
    cols, rows = _size()
    term = {"TERM": os.environ.get("TERM") or "xterm-256color"}
    sb = state.sandbox(sandbox_id)
    with sb.exec(*argv, env=term, workdir=workdir, pty=True, cols=cols, rows=rows) as process:
        with raw_terminal(in_fd):
            interact(process, in_fd, out_fd)
        try:
            code = process.wait()
        except CommandTimeoutError as exc:
            fail(str(exc), 124)
    ctx.exit(code)
