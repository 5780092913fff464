"""requirements/constraints.txt is the lock of the environment `make setup` builds: it
agrees with every exact pin in pyproject.toml, and pins every package installed beside
Stockade, so the server and the tests always run on the versions written down."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
# Installed by the virtualenv itself, not by the project.
NOT_LOCKED = {"pip", "setuptools", "wheel", "stockade"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt holds exact pins only, got {line!r}"
            pins[normalise(name)] = version.strip()
    return pins


def test_pyproject_pins_agree_with_the_lock() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins = locked()
    for requirement in requirements:
        if "==" not in requirement:
            continue
        name, version = (part.strip() for part in requirement.split(";")[0].split("=="))
        assert pins.get(normalise(name)) == version, (
            f"pyproject.toml pins {name}=={version} but requirements/constraints.txt has "
            f"{pins.get(normalise(name))}: make them agree"
        )


def test_every_installed_package_is_locked() -> None:
    pins = locked()
    for dist in metadata.distributions():
        name = normalise(dist.metadata["Name"])
        if name in NOT_LOCKED:
            continue
        assert pins.get(name) == dist.version, (
            f"{name} {dist.version} is installed but requirements/constraints.txt has "
            f"{pins.get(name)}: add `{name}=={dist.version}` there (or run `make setup`)"
        )
