"""The committed sync SDK is exactly what scripts/gen_sync.py generates from the async one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYNC_DIR = ROOT / "src" / "stockade" / "_sync"


def test_sync_code_is_generated_from_async(tmp_path: Path) -> None:
    out = tmp_path / "_sync"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_sync.py"), "--out", str(out)],
        check=True,
        cwd=ROOT,
    )
    generated = {p.name: p.read_text() for p in out.glob("*.py")}
    committed = {p.name: p.read_text() for p in SYNC_DIR.glob("*.py")}
    assert sorted(generated) == sorted(committed), "files differ; run `make sync`"
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"src/stockade/_sync is stale ({', '.join(stale)}); run `make sync`"


def test_generated_files_say_so() -> None:
    for path in SYNC_DIR.glob("*.py"):
        assert path.read_text().startswith("# This file is generated from"), path.name
