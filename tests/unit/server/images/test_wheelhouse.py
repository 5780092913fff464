"""The wheelhouse: the host's pip downloads a built-in image's wheels once per cache."""

from __future__ import annotations

import asyncio
import itertools
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from stockade.server.images.wheelhouse import (
    WHEELS_DIR,
    Wheelhouse,
    WheelhouseError,
    ensure_wheelhouse,
    run_pip,
)

WHEELS = Wheelhouse("demo", ("alpha==1.0", "beta==2.0"))


class FakePip:
    """Stands in for `pip download`: writes a wheel per requirement into its -d directory."""

    def __init__(self, code: int = 0, lines: Sequence[str] = (), delay: float = 0.0) -> None:
        self.code = code
        self.lines = list(lines)
        self.delay = delay
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], on_line: Callable[[str], None]) -> int:
        self.calls.append(list(argv))
        await asyncio.sleep(self.delay)
        dest = Path(argv[argv.index("-d") + 1])
        for line in self.lines:
            on_line(line)
        if self.code == 0:
            for req in argv[argv.index(str(dest)) + 1 :]:
                name, _, version = req.partition("==")
                (dest / f"{name}-{version}-py3-none-any.whl").write_bytes(b"PK\x03\x04")
        return self.code


def _entries(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "wheelhouse").iterdir())


async def test_downloads_into_an_overlay_layer_with_a_marker(tmp_path: Path) -> None:
    pip = FakePip()
    log: list[str] = []
    path = await ensure_wheelhouse(tmp_path, WHEELS, on_log=log.append, pip=pip)
    assert path == tmp_path / "wheelhouse" / WHEELS.dirname
    wheels = path / WHEELS_DIR.lstrip("/")
    assert sorted(w.name for w in wheels.iterdir()) == [
        "alpha-1.0-py3-none-any.whl",
        "beta-2.0-py3-none-any.whl",
    ]
    assert (path / "complete").read_text().split()[0] == "2"
    assert WHEELS.is_complete(tmp_path)
    # World-readable, whatever the umask: sandboxes read them as files of their image.
    assert stat.S_IMODE((path / "opt").stat().st_mode) == 0o755
    assert stat.S_IMODE(next(wheels.iterdir()).stat().st_mode) == 0o644
    # Nothing temporary is left, only the wheelhouse and its lock file.
    assert _entries(tmp_path) == [WHEELS.dirname, f"{WHEELS.dirname}.lock"]
    assert any("2 wheels" in line for line in log), log


async def test_the_host_pip_downloads_cp311_manylinux_wheels_only(tmp_path: Path) -> None:
    pip = FakePip()
    await ensure_wheelhouse(tmp_path, WHEELS, pip=pip)
    (argv,) = pip.calls
    assert argv[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--only-binary=:all:" in argv
    flags = dict(itertools.pairwise(argv))
    assert flags["--python-version"] == "3.11"
    assert flags["--implementation"] == "cp" and flags["--abi"] == "cp311"
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert "manylinux_2_17_x86_64" in platforms and "any" in platforms
    # The host's pip configuration (its index and mirrors) is used as it is.
    assert not any(a.startswith(("--index-url", "--extra-index-url", "-i")) for a in argv)
    assert argv[-2:] == ["alpha==1.0", "beta==2.0"]


async def test_a_complete_wheelhouse_costs_no_pip_call(tmp_path: Path) -> None:
    await ensure_wheelhouse(tmp_path, WHEELS, pip=FakePip())
    again = FakePip()
    path = await ensure_wheelhouse(tmp_path, WHEELS, pip=again)
    assert again.calls == []
    assert path.is_dir()


async def test_concurrent_downloads_share_one_pip_call(tmp_path: Path) -> None:
    pip = FakePip(delay=0.2)
    paths = await asyncio.gather(*(ensure_wheelhouse(tmp_path, WHEELS, pip=pip) for _ in range(3)))
    assert len(pip.calls) == 1
    assert len(set(paths)) == 1


async def test_pins_and_target_name_the_directory(tmp_path: Path) -> None:
    same = Wheelhouse("demo", ("beta==2.0", "alpha==1.0"))
    bumped = Wheelhouse("demo", ("alpha==1.1", "beta==2.0"))
    other_python = Wheelhouse("demo", WHEELS.requirements, python_version="3.12", abi="cp312")
    assert WHEELS.dirname.startswith("demo-") and len(WHEELS.dirname) == len("demo-") + 16
    assert same.dirname == WHEELS.dirname
    assert bumped.dirname != WHEELS.dirname
    assert other_python.dirname != WHEELS.dirname
    await ensure_wheelhouse(tmp_path, WHEELS, pip=FakePip())
    pip = FakePip()
    await ensure_wheelhouse(tmp_path, bumped, pip=pip)
    assert len(pip.calls) == 1  # a changed pin is a new download


async def test_a_pip_failure_names_the_command_and_its_last_lines(tmp_path: Path) -> None:
    lines = [f"line {i}" for i in range(30)] + [
        "ERROR: No matching distribution found for alpha==1.0"
    ]
    with pytest.raises(WheelhouseError) as failed:
        await ensure_wheelhouse(tmp_path, WHEELS, pip=FakePip(code=1, lines=lines))
    message = failed.value.message
    assert "pip download" in message and "--only-binary=:all:" in message
    assert "exited 1" in message
    assert "No matching distribution found for alpha==1.0" in message
    assert "line 29" in message and "line 5\n" not in message
    # Nothing half-made is left, and the next attempt tries again.
    assert _entries(tmp_path) == [f"{WHEELS.dirname}.lock"]
    assert not WHEELS.is_complete(tmp_path)
    pip = FakePip()
    await ensure_wheelhouse(tmp_path, WHEELS, pip=pip)
    assert len(pip.calls) == 1 and WHEELS.is_complete(tmp_path)


async def test_a_download_of_no_wheels_is_a_failure(tmp_path: Path) -> None:
    async def empty(argv: Sequence[str], on_line: Callable[[str], None]) -> int:
        return 0

    with pytest.raises(WheelhouseError, match="downloaded no wheel"):
        await ensure_wheelhouse(tmp_path, WHEELS, pip=empty)


async def test_an_incomplete_directory_left_by_a_crash_is_replaced(tmp_path: Path) -> None:
    stale = WHEELS.path(tmp_path) / "opt" / "stockade" / "wheels"
    stale.mkdir(parents=True)
    (stale / "half.whl").write_bytes(b"")
    pip = FakePip()
    path = await ensure_wheelhouse(tmp_path, WHEELS, pip=pip)
    assert len(pip.calls) == 1
    assert not (path / "opt" / "stockade" / "wheels" / "half.whl").exists()


async def test_run_pip_passes_on_lines_and_the_exit_status() -> None:
    lines: list[str] = []
    code = await run_pip(["sh", "-c", "echo one; echo two >&2; exit 3"], lines.append)
    assert code == 3
    assert lines == ["one", "two"]
