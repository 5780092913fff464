"""``stockade run`` (a command in a fresh sandbox) and ``stockade exec`` (in an existing one).

Output is copied to the local stdout/stderr as it arrives; local stdin is forwarded when
it is a pipe or a file, so ``tar c . | stockade exec ID -- tar x`` works.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import BinaryIO

import click

from stockade import CommandTimeoutError, Process, Sandbox, StockadeError
from stockade.cli._common import (
    CliState,
    command_args,
    env_option,
    pass_state,
    print_error,
    sandbox_options,
)
from stockade.cli.images import ensure_image

# The sandbox outlives the command's own timeout by this much, so that a command that runs
# too long ends as "timed out" (exit 124, a clear message) instead of with its sandbox.
_SANDBOX_GRACE = 30.0
_MAX_SANDBOX_TIMEOUT = 86400.0
_EXIT_TIMED_OUT = 124


def _copy(chunks: Iterator[bytes], out: BinaryIO) -> None:
    for chunk in chunks:
        out.write(chunk)
        out.flush()


def _copy_quietly(chunks: Iterator[bytes], out: BinaryIO) -> None:
    # In a helper thread: errors surface again, with their message, in the main thread's
    # read or wait, so this thread only stops.
    with contextlib.suppress(StockadeError, OSError, ValueError):
        _copy(chunks, out)


def _forward_stdin(process: Process, source: BinaryIO) -> None:
    try:
        while True:
            data = source.read1(65536) if hasattr(source, "read1") else source.read(65536)
            if not data:
                break
            process.stdin.write(data)
        process.stdin.close()
    except (StockadeError, OSError, ValueError):
        pass  # the process exited first (it stopped reading), or the local stdin broke


def stream_command(
    sb: Sandbox,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    timeout: float | None = None,
    user: str | None = None,
) -> int:
    """Run ``argv`` in ``sb`` with its output streamed here; return its exit code."""
    stdin, stdout, stderr = sys.stdin.buffer, sys.stdout.buffer, sys.stderr.buffer
    with sb.exec(*argv, env=env, workdir=workdir, timeout=timeout, user=user) as process:
        if stdin.isatty():
            # Not interactive (that is `stockade shell`): the command reads end-of-file.
            process.stdin.close()
        else:
            threading.Thread(
                target=_forward_stdin, args=(process, stdin), daemon=True, name="stdin"
            ).start()
        errors = threading.Thread(
            target=_copy_quietly, args=(process.stderr.iter_bytes(), stderr), daemon=True,
            name="stderr",
        )  # fmt: skip
        errors.start()
        _copy(process.stdout.iter_bytes(), stdout)
        errors.join()
        try:
            return process.wait()
        except CommandTimeoutError as exc:
            print_error(str(exc))
            return _EXIT_TIMED_OUT


@click.command(context_settings={"allow_interspersed_args": False})
@sandbox_options("Kill the command after this many seconds (exit code 124).")
@click.argument("command", nargs=-1, required=True, metavar="[--] CMD...")
@pass_state
@click.pass_context
def run(
    ctx: click.Context,
    state: CliState,
    image: str,
    cpu: float | None,
    memory: int | None,
    disk: int | None,
    timeout: float | None,
    env: dict[str, str],
    workdir: str | None,
    command: tuple[str, ...],
) -> None:
    """Run a command in a fresh sandbox, then terminate it.

    Exits with the command's exit code (124 when it ran past --timeout).

    \b
    Example:
      stockade run --image python -- python3 -c 'print(6*7)'
    """
    argv = command_args(command)
    client = state.client()
    image = ensure_image(client, image)
    lifetime = None if timeout is None else min(timeout + _SANDBOX_GRACE, _MAX_SANDBOX_TIMEOUT)
    sb = Sandbox.create(
        image=image, cpu=cpu, memory=memory, disk=disk, timeout=lifetime, env=env,
        workdir=workdir, client=client,
    )  # fmt: skip
    try:
        code = stream_command(sb, argv, timeout=timeout)
    finally:
        # Also on Ctrl-C and errors: a `run` sandbox must not outlive the command.
        try:
            sb.terminate()
        except StockadeError as exc:
            print_error(f"could not terminate sandbox {sb.id}: {exc}")
    ctx.exit(code)


@click.command("exec", context_settings={"allow_interspersed_args": False})
@env_option("Environment variable for the command (repeatable).")
@click.option("--workdir", help="Working directory for the command.")
@click.option("--timeout", type=float, help="Kill the command after this many seconds.")
@click.option(
    "--user", "-u", metavar="USER", help="Run as this user of the image, or UID[:GID]."
)
@click.argument("sandbox_id", metavar="ID")
@click.argument("command", nargs=-1, required=True, metavar="[--] CMD...")
@pass_state
@click.pass_context
def exec_(
    ctx: click.Context,
    state: CliState,
    env: dict[str, str],
    workdir: str | None,
    timeout: float | None,
    user: str | None,
    sandbox_id: str,
    command: tuple[str, ...],
) -> None:
    """Run a command in a running sandbox, streaming its output.

    Local stdin is forwarded when it is a pipe or a file. Exits with the command's exit
    code (124 when it ran past --timeout). Options go before the ID; ID may be a
    sandbox's name.

    \b
    Example:
      echo hi | stockade exec sb-123 -- tr a-z A-Z
    """
    argv = command_args(command)
    ctx.exit(stream_command(state.sandbox(sandbox_id), argv, env=env, workdir=workdir,
                            timeout=timeout, user=user))  # fmt: skip
