"""A create's readiness check: polled inside the new sandbox until it passes or times out.

Every check runs inside the sandbox through its agent, never from the host's network, so
it sees exactly what the sandbox's own processes see:

- a port (``8000``): something listens on that TCP port (the sandbox's /proc/net/tcp and
  tcp6, read through the agent: no program of the image is needed);
- an HTTP URL (``http://localhost:8000/healthz``): a 2xx or 3xx answer, fetched by the
  image's ``python3`` or ``curl`` (redirects are not followed; no proxy);
- a command (``["pg_isready"]``): it exits 0.

A check that does not pass within its timeout ends the sandbox: the caller gets the
check's last output and no sandbox is left running.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import (
    InvalidArgumentError,
    SandboxTerminatedError,
    StockadeError,
    StockadeTimeoutError,
)
from ..state.records import EndReason
from .execs import ExecService, ExitInfo, OutputChunk

__all__ = ["DEFAULT_TIMEOUT", "MAX_TIMEOUT", "Readiness", "capture", "wait_ready"]

DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 3600.0
_MAX_OUTPUT = 4096  # bytes of a check's output kept for the error
_CHECK_TIMEOUT = 5.0  # one check's own limit (a URL that hangs, a slow command)
_URL = re.compile(r"^https?://[^\s\x00-\x1f\x7f]{1,2040}$")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column

# The URL check: the first HTTP client the image has, printing the status code.
_URL_SCRIPT = r"""
u="$1"
if command -v python3 >/dev/null 2>&1; then
  exec python3 - "$u" <<'EOF'
import sys, urllib.error, urllib.request
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)
try:
    print(opener.open(sys.argv[1], timeout=4).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception as e:
    print(f"000 {type(e).__name__}: {e}")
EOF
elif command -v curl >/dev/null 2>&1; then
  exec curl -sS --noproxy '*' --max-time 4 -o /dev/null -w '%{http_code}\n' "$u"
else
  echo "000 the image has neither python3 nor curl to fetch $u; use a port or a command"
fi
"""


@dataclass(frozen=True)
class Readiness:
    """One readiness check (exactly one of ``port``, ``url``, ``command``)."""

    port: int | None = None
    url: str | None = None
    command: tuple[str, ...] | None = None
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def parse(cls, value: int | str | Sequence[str], timeout: float | None) -> Readiness:
        """The check ``value`` names, or InvalidArgumentError saying what it may be."""
        limit = DEFAULT_TIMEOUT if timeout is None else timeout
        if not 0 < limit <= MAX_TIMEOUT:
            raise InvalidArgumentError(
                f"readiness_timeout must be in (0, {MAX_TIMEOUT:.0f}] seconds, not {limit}"
            )
        if isinstance(value, bool):
            raise InvalidArgumentError("readiness must be a port, an http:// URL or a command")
        if isinstance(value, int):
            if not 1 <= value <= 65535:
                raise InvalidArgumentError(f"readiness port {value} must be in 1..65535")
            return cls(port=value, timeout=limit)
        if isinstance(value, str):
            if not _URL.fullmatch(value):
                raise InvalidArgumentError(
                    f"readiness URL {value[:80]!r} must be an http:// or https:// URL such as "
                    "'http://localhost:8000/healthz' (or pass a port or a command list)"
                )
            return cls(url=value, timeout=limit)
        argv = tuple(value)
        if not argv or not all(isinstance(a, str) and a and "\0" not in a for a in argv):
            raise InvalidArgumentError(
                "readiness command must be a non-empty list of strings, e.g. ['pg_isready']"
            )
        return cls(command=argv, timeout=limit)

    def describe(self) -> str:
        if self.port is not None:
            return f"port {self.port}"
        if self.url is not None:
            return f"URL {self.url}"
        return f"command {list(self.command or ())}"


async def wait_ready(execs: ExecService, sandbox_id: str, check: Readiness) -> None:
    """Return once ``check`` passes in the sandbox; otherwise end the sandbox and raise
    StockadeTimeoutError (past the timeout) or SandboxTerminatedError (it ended first),
    either carrying the check's last output."""
    sandboxes = execs.sandboxes
    loop = asyncio.get_running_loop()
    deadline = loop.time() + check.timeout
    last = "(no check ran)"
    pause = 0.1
    while True:
        record = await sandboxes.get(sandbox_id)
        if not record.alive:
            raise SandboxTerminatedError(
                f"sandbox {sandbox_id} ended ({record.status}, exit code {record.exit_code}) "
                f"before its readiness check ({check.describe()}) passed; the check's last "
                f"output: {last}; its log: `stockade logs {sandbox_id}`"
            )
        remaining = deadline - loop.time()
        try:
            ok, last = await asyncio.wait_for(
                _check_once(execs, sandbox_id, check), max(0.5, min(_CHECK_TIMEOUT, remaining))
            )
        except TimeoutError:
            ok, last = False, f"the check did not finish within {_CHECK_TIMEOUT:.0f} s"
        except SandboxTerminatedError:
            continue  # said with the sandbox's end, above
        except StockadeError as exc:  # a command the image lacks, say
            ok, last = False, str(exc)
        if ok:
            return
        if loop.time() >= deadline:
            break
        await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
        pause = min(pause * 2, 1.0)
    message = (
        f"sandbox {sandbox_id} was not ready after {check.timeout:g} s (readiness: "
        f"{check.describe()}), so it was terminated; the check's last output: {last}"
    )
    await sandboxes.terminate(sandbox_id, reason=EndReason.ERROR, message=message[:1000])
    raise StockadeTimeoutError(message + " (raise readiness_timeout if it needs longer to start)")


async def _check_once(execs: ExecService, sandbox_id: str, check: Readiness) -> tuple[bool, str]:
    if check.port is not None:
        return await _port_check(execs, sandbox_id, check.port)
    if check.url is not None:
        code, out = await capture(
            execs, sandbox_id, ["/bin/sh", "-c", _URL_SCRIPT, "sh", check.url]
        )
        status = out.strip().split(" ", 1)[0]
        ok = code == 0 and status.isdigit() and 200 <= int(status) < 400
        return ok, f"HTTP {out.strip()}" if status.isdigit() and status != "000" else out
    code, out = await capture(execs, sandbox_id, list(check.command or ()))
    return code == 0, f"exit code {code}: {out}" if out else f"exit code {code}"


async def _port_check(execs: ExecService, sandbox_id: str, port: int) -> tuple[bool, str]:
    launcher = execs.sandboxes.launcher
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        text = await launcher.agent_read(sandbox_id, table, limit=1 << 20)
        if _listens(text, port):
            return True, ""
    return False, f"nothing listens on TCP port {port} yet"


def _listens(table: str, port: int) -> bool:
    """Whether a /proc/net/tcp(6) table has a socket listening on ``port``."""
    want = f"{port:04X}"
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == _LISTEN and fields[1].rpartition(":")[2] == want:
            return True
    return False


async def capture(
    execs: ExecService, sandbox_id: str, argv: list[str], *, user: str | None = None
) -> tuple[int, str]:
    """Run ``argv`` as ``user`` (default: the sandbox's) within a few seconds; its exit
    code and the end of its output (a few KiB)."""
    session = await execs.start(sandbox_id, argv, timeout=_CHECK_TIMEOUT, activity=False, user=user)
    out = b""
    code = -1
    try:
        async for event in session.events():
            if isinstance(event, OutputChunk):
                out = (out + event.data)[-_MAX_OUTPUT:]
            elif isinstance(event, ExitInfo):
                code = event.exit_code
    finally:
        await session.aclose()
    return code, out.decode(errors="replace").strip()
