"""Small tools the integration tests share: polling, host-side probes and local files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import httpx

from stockade import NotFoundError, Sandbox, SandboxInfo
from tests import waiting

_T = TypeVar("_T")

# The one deadline loop (tests/waiting.py), where integration tests look for helpers.
wait_for = waiting.wait_for
wait_for_async = waiting.wait_for_async

CGROUP_ROOT = Path("/sys/fs/cgroup")


def unique(prefix: str = "t") -> str:
    """A value no other test (or earlier run) uses, for tags and file names."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def wait_spares(url: str, token: str, *, timeout: float = 60.0) -> dict[str, int]:
    """Wait until the server has all its spare disks and network slots ready (so that
    counts of mounts, namespaces or rules taken now and later compare like with like)."""
    def probe() -> dict[str, int] | None:
        headers = {"Authorization": f"Bearer {token}"}
        spares: dict[str, int] = httpx.get(f"{url}/v1/pools", headers=headers).json()["spares"]
        full = spares["disks"] == spares["network_slots"] == spares["target"]
        return spares if full else None

    return wait_for(probe, timeout=timeout, what="the server's spares")


def wait_ended(sb: Sandbox, *, timeout: float = 30.0, interval: float = 0.1) -> SandboxInfo:
    """Poll ``sb.info()`` until the sandbox is no longer starting or running."""

    def probe() -> SandboxInfo | None:
        info = sb.info()
        return info if info.status not in ("starting", "running") else None

    return wait_for(probe, timeout=timeout, interval=interval, what=f"{sb.id} to end")


def runsc_binary() -> str:
    """The runsc the server under test uses (the same lookup as the server's)."""
    explicit = os.environ.get("STOCKADE_RUNSC")
    if explicit:
        return explicit
    cached = Path(os.environ.get("STOCKADE_CACHE_DIR") or "/var/cache/stockade") / "bin" / "runsc"
    return str(cached)


def runsc_state(data_dir: Path, sandbox_id: str) -> dict[str, object] | None:
    """``runsc state`` of a sandbox in a server's private runsc root, or None if unknown."""
    result = subprocess.run(
        [runsc_binary(), f"--root={data_dir / 'runsc'}", "state", sandbox_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        return None
    state: dict[str, object] = json.loads(result.stdout)
    return state


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cpuacct_usage_ns(sandbox_id: str) -> int:
    """CPU time (ns) the host charged to a sandbox's cgroup (cgroup v1 cpuacct)."""
    path = CGROUP_ROOT / "cpuacct" / "stockade" / sandbox_id / "cpuacct.usage"
    return int(path.read_text().strip())


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM, …) of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


class RssSampler:
    """Samples a process's VmRSS in a thread; ``peak_kib`` is the highest value seen.

    VmHWM (the kernel's own high-water mark) is folded in as well when it rose while
    sampling, so a spike between two samples is not missed.
    """

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline_kib = proc_status_kib(pid, "VmRSS")
        self._hwm_before = proc_status_kib(pid, "VmHWM")
        self.peak_kib = self.baseline_kib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, proc_status_kib(self.pid, "VmRSS"))
            except (OSError, KeyError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        hwm_after = proc_status_kib(self.pid, "VmHWM")
        if hwm_after > self._hwm_before:
            self.peak_kib = max(self.peak_kib, hwm_after)

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.baseline_kib) / 1024


def random_file(path: Path, size: int, chunk: int = 4 * 1024 * 1024) -> str:
    """Write ``size`` random bytes to ``path``; return their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            data = os.urandom(min(chunk, left))
            digest.update(data)
            f.write(data)
            left -= len(data)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * 1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def force_cleanup(root: Path, data_dir: Path) -> None:
    """Remove whatever a server under ``root`` left behind, even if it cannot run any more.

    Deletes the runsc sandboxes of ``data_dir``, unmounts everything under ``root`` (deepest
    first) and removes ``root``.
    """
    runsc = [runsc_binary(), f"--root={data_dir / 'runsc'}"]
    listed = subprocess.run(
        [*runsc, "list", "--format=json"], capture_output=True, text=True, timeout=60, check=False
    )
    try:
        items = json.loads(listed.stdout or "[]") or []
    except json.JSONDecodeError:
        items = []
    for item in items:
        subprocess.run(
            [*runsc, "delete", "--force", str(item["id"])],
            capture_output=True,
            timeout=60,
            check=False,
        )
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    _remove_network_block(data_dir)
    shutil.rmtree(root, ignore_errors=True)


def _remove_network_block(data_dir: Path) -> None:
    """The namespaces, links and nft table of the server's network block, if it left any."""
    try:
        block = int(json.loads((data_dir / "network.json").read_text())["block"])
    except (OSError, ValueError, KeyError):
        return
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in netns.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"stockade-{block}-"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    links = subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=False)
    for link in json.loads(links.stdout or "[]"):
        name = str(link.get("ifname", ""))
        if name.startswith(f"sk{block}-") or name == f"stockade{block}":
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    subprocess.run(
        ["nft", "delete", "table", "inet", f"stockade_{block}"], capture_output=True, check=False
    )


def read_until(fd: int, needle: re.Pattern[bytes], seen: bytearray, limit: float) -> bool:
    """Read a terminal's output into ``seen`` until ``needle`` matches it, the other side
    closes, or ``limit`` seconds pass; whether it matched."""
    deadline = time.monotonic() + limit
    while not needle.search(seen):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side closed
            return bool(needle.search(seen))
        if not chunk:
            return bool(needle.search(seen))
        seen += chunk
    return True


# A counter that only the very same process can continue: it lives in the loop's memory,
# and /tmp/count shows it (replaced atomically, so a read never sees half a number). Tests
# of snapshots and crashes start it detached and check that it carries on.
COUNTER = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; "
    "mv /tmp/count.new /tmp/count; sleep 0.1; done"
)


def count(sb: Sandbox) -> int:
    """The counter loop's latest value."""

    def probe() -> int | None:
        try:
            text = sb.files.read_text("/tmp/count").strip()
        except NotFoundError:
            return None
        return int(text) if text else None

    return wait_for(probe, timeout=15, interval=0.05, what=f"/tmp/count in {sb.id}")


def counting_past(sb: Sandbox, value: int, *, timeout: float = 10) -> int:
    """Wait until the counter has gone past ``value`` (it is running, not frozen)."""

    def probe() -> int | None:
        now = count(sb)
        return now if now > value else None

    return wait_for(probe, timeout=timeout, interval=0.1, what=f"{sb.id} to count past {value}")


def runsc_processes(sandbox_id: str) -> list[str]:
    """The host's runsc processes (sandbox, gofer, …) of a sandbox, as command lines."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].startswith(b"runsc") and any(sandbox_id.encode() in a for a in argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found
