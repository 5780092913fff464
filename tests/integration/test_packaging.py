"""The package as people install it: ``python -m build`` makes a wheel and an sdist, and
the wheel goes into a clean virtualenv, first alone (the SDK imports without the CLI's
dependencies, and the ``stockade`` command names its extra), then beside langchain-core,
openai-agents and openai, where ``pip check`` must pass.

It needs no runsc, but it downloads what pip's cache lacks from the package index, with
the exact versions of requirements/constraints.txt so that every run resolves alike.
"""

from __future__ import annotations

import email
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import stockade

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "requirements" / "constraints.txt"

pytestmark = pytest.mark.timeout(300)


def run(*argv: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_wheel_installs_beside_agent_frameworks(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, REPO)
    version = stockade.__version__
    wheel = dist / f"stockade-{version}-py3-none-any.whl"
    sdist = dist / f"stockade-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = email.message_from_bytes(zf.read(f"stockade-{version}.dist-info/METADATA"))
    assert "stockade/py.typed" in names and "stockade/integrations/langchain.py" in names
    assert f"stockade-{version}.dist-info/licenses/LICENSE" in names
    assert meta["License-Expression"] == "Apache-2.0" and meta["Version"] == version
    # The SDK's own dependencies are ranges, never pins, so it installs beside others.
    base = [r for r in meta.get_all("Requires-Dist", []) if "extra ==" not in r]
    assert sorted(r.split("<")[0].split(">")[0] for r in base) == ["httpx", "websockets"]
    assert not any("==" in r for r in base), base
    with tarfile.open(sdist) as tf:
        top = {Path(n).parts[1] for n in tf.getnames() if len(Path(n).parts) > 1}
    assert {"src", "LICENSE", "CHANGELOG.md", "pyproject.toml"} <= top
    assert not top & {".hypothesis", ".venv", "sdk"}, top

    # A bare virtualenv driven by this environment's pip (`pip --python`), installing
    # without byte-compiling: the same packages and checks, in a fraction of the time.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    py = venv / "bin" / "python"
    pip: list[str | Path] = [sys.executable, "-m", "pip", "--python", py, "-q"]
    pinned: list[str | Path] = ["--disable-pip-version-check", "--no-compile", "-c", CONSTRAINTS]
    run(*pip, "install", *pinned, wheel)

    # The SDK alone: no click or rich anywhere, and import stockade stays light.
    run(py, "-c", "import importlib.util as u; assert not u.find_spec('click')", cwd=tmp_path)
    light = "import stockade, sys; assert 'click' not in sys.modules and 'rich' not in sys.modules"
    run(py, "-c", light, cwd=tmp_path)
    run(py, "-c", f"import stockade; assert stockade.__version__ == {version!r}", cwd=tmp_path)
    command = subprocess.run(
        [str(venv / "bin" / "stockade"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert command.returncode == 1
    assert "pip install 'stockade[cli]'" in command.stderr

    # Beside the frameworks' own packages, and the adapters load there.
    run(*pip, "install", *pinned, "langchain-core", "openai-agents", "openai")
    run(*pip, "check", "--disable-pip-version-check")
    adapters = "import stockade.integrations.langchain, stockade.integrations.openai_agents"
    run(py, "-c", adapters, cwd=tmp_path)
