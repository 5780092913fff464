"""What a finished command looks like, and the two errors a command can end in.

A non-zero exit is data (:attr:`CommandResult.exit_code`); it becomes a
:class:`CommandError` only when the caller asks with ``check=True``. A command that ran
past its ``timeout=`` raises :class:`CommandTimeoutError`, a
:class:`~stockade.errors.StockadeTimeoutError`, because its output is cut short and a
caller that ignored it would read half a result as a whole one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from stockade._protocol import describe
from stockade.errors import StockadeError, StockadeTimeoutError

__all__ = ["CommandError", "CommandResult", "CommandTimeoutError"]


@dataclass(frozen=True)
class CommandResult:
    """The outcome of :meth:`Sandbox.run`: exit code and everything the command printed.

    ``stdout``/``stderr`` decode the output as UTF-8 (undecodable bytes become U+FFFD);
    ``stdout_bytes``/``stderr_bytes`` hold it exactly. ``oom`` is true when the sandbox
    was killed for memory (``exit_code`` is then 137).

    Example::

        r = sb.run("echo hi && exit 3")
        assert (r.stdout, r.exit_code) == ("hi\\n", 3)
    """

    argv: list[str]
    exit_code: int
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    oom: bool = False
    sandbox_id: str = field(default="", compare=False)

    @property
    def stdout(self) -> str:
        """Standard output as text."""
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """Standard error as text."""
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        """Whether the command exited with code 0."""
        return self.exit_code == 0

    def check(self) -> CommandResult:
        """Return the result, or raise :class:`CommandError` for a non-zero exit.

        Example::

            out = sb.run("cat /etc/hostname").check().stdout
        """
        if self.exit_code != 0:
            raise CommandError(self)
        return self


class CommandError(StockadeError):
    """A command run with ``check=True`` exited non-zero; ``result`` holds its output.

    Example::

        from stockade import CommandError

        try:
            sb.run("false", check=True)
        except CommandError as exc:
            print(exc.exit_code, exc.result.stderr)
    """

    code = "command_failed"
    status = 0

    def __init__(self, result: CommandResult) -> None:
        where = f" in sandbox {result.sandbox_id}" if result.sandbox_id else ""
        tail = result.stderr.strip().splitlines()[-1:] if result.stderr_bytes else []
        detail = f": {tail[0][:200]}" if tail else ""
        oom = " (killed for memory)" if result.oom else ""
        super().__init__(
            f"`{describe(result.argv)}`{where} exited with code {result.exit_code}{oom}{detail}"
        )
        self.result = result
        self.exit_code = result.exit_code


class CommandTimeoutError(StockadeTimeoutError):
    """A command ran past its ``timeout=`` and was killed.

    ``result`` holds the output produced until then when the command ran through
    :meth:`Sandbox.run`; with :meth:`Sandbox.exec` the output stays readable on the
    process's ``stdout``/``stderr``.

    Example::

        from stockade import CommandTimeoutError

        try:
            sb.run("sleep 10", timeout=1)
        except CommandTimeoutError as exc:
            print(exc)  # ... ran past timeout=1s; pass a larger `timeout=` ...
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        sandbox_id: str,
        timeout: float | None,
        result: CommandResult | None = None,
    ) -> None:
        limit = f"timeout={timeout:g}s" if timeout is not None else "its timeout"
        super().__init__(
            f"`{describe(argv)}` in sandbox {sandbox_id} ran past {limit} and was killed; "
            "pass a larger `timeout=` (CLI: --timeout) if it needs more time"
        )
        self.argv = list(argv)
        self.sandbox_id = sandbox_id
        self.timeout = timeout
        self.result = result
