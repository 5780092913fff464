"""Built-in images made by the image builder ("recipes"), with fakes for the sandboxes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from stockade.errors import BuildError, InvalidArgumentError, NotFoundError
from stockade.server.images.built import BuiltImage
from stockade.server.images.catalog import ImageCatalog, Recipe
from stockade.server.images.gc import collect
from stockade.server.images.wheelhouse import WHEELS_DIR, Wheelhouse
from stockade.server.network.policy import NetworkPolicy
from stockade.server.service.builder import BuildSpec, ImageBuilder, parse_spec
from stockade.server.service.execs import ExecService, ExitInfo
from stockade.server.service.recipes import (
    CODE_INTERPRETER,
    CODE_INTERPRETER_WHEELS,
    add_recipes,
    code_interpreter_spec,
)
from stockade.server.service.sandboxes import CreateRequest, SandboxService

# ------------------------------------------------------------------------- parse_spec


def test_users_cannot_name_a_wheelhouse() -> None:
    body = {
        "image": "python",
        "steps": [{"op": "pip_install", "packages": ["numpy"], "wheelhouse": "x-0123"}],
    }
    with pytest.raises(InvalidArgumentError, match="wheelhouse"):
        parse_spec(body)
    body["steps"] = [{"op": "pip_install", "packages": ["numpy"], "wheelhouse": "/etc"}]
    with pytest.raises(InvalidArgumentError, match="wheelhouse"):
        parse_spec(body)
    ok = parse_spec({"image": "python", "steps": [{"op": "pip_install", "packages": ["numpy"]}]})
    assert ok.steps == ({"op": "pip_install", "packages": ["numpy"]},)


def test_code_interpreter_installs_its_pinned_wheels_offline() -> None:
    pip, *_ = code_interpreter_spec().steps
    assert pip["wheelhouse"] == CODE_INTERPRETER_WHEELS.dirname
    assert pip["packages"] == list(CODE_INTERPRETER_WHEELS.requirements)
    names = {r.split("==")[0] for r in CODE_INTERPRETER_WHEELS.requirements}
    assert {"ipykernel", "bash-kernel", "numpy", "pandas", "matplotlib"} <= names
    assert all("==" in r for r in CODE_INTERPRETER_WHEELS.requirements)


# ------------------------------------------------------------------- catalog recipes


def _catalog(tmp_path: Path) -> ImageCatalog:
    """A catalog whose `python` base image is "built" (an empty rootfs)."""
    catalog = ImageCatalog(tmp_path)
    (catalog.root / "python" / "rootfs").mkdir(parents=True)
    (catalog.root / "python" / "complete").write_text("1")
    return catalog


class CountingRecipe:
    def __init__(self, tmp_path: Path, delay: float = 0.1) -> None:
        self.layer = tmp_path / "layer"
        self.layer.mkdir()
        self.builds = 0
        self.lookups = 0
        self.delay = delay
        self.made: BuiltImage | None = None

    async def build(self, on_log: Callable[[str], None]) -> BuiltImage:
        self.builds += 1
        on_log("building")
        await asyncio.sleep(self.delay)
        self.made = BuiltImage("ab" * 32, [self.layer], size=5 << 20)
        return self.made

    def lookup(self) -> BuiltImage | None:
        self.lookups += 1
        return self.made


async def test_a_recipe_resolves_like_an_image_and_builds_once(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    recipe = CountingRecipe(tmp_path)
    catalog.add_recipe(Recipe("demo-kit", "a demo", recipe.build, recipe.lookup))
    assert catalog.names()[-1] == "demo-kit"
    catalog.check("demo-kit")
    info = catalog.info("demo-kit")
    assert (info.ready, info.description, info.layers) == (False, "a demo", ())
    resolved = await asyncio.gather(*(catalog.resolve("demo-kit") for _ in range(5)))
    assert recipe.builds == 1
    assert all(r.lowerdirs == (recipe.layer,) for r in resolved)
    info = catalog.info("demo-kit")
    assert (info.ready, info.layers, info.size_mib) == (True, (recipe.layer,), 5)
    built = catalog.built("demo-kit")
    assert built is not None and built.key == "ab" * 32
    # Made once, a resolve is a lookup in memory.
    lookups = recipe.lookups
    started = asyncio.get_running_loop().time()
    for _ in range(1000):
        await catalog.resolve("demo-kit")
    assert asyncio.get_running_loop().time() - started < 0.5
    assert (recipe.builds, recipe.lookups) == (1, lookups)


async def test_a_recipe_made_by_an_earlier_server_is_found_without_building(
    tmp_path: Path,
) -> None:
    catalog = _catalog(tmp_path)
    recipe = CountingRecipe(tmp_path)
    recipe.made = BuiltImage("cd" * 32, [recipe.layer])
    catalog.add_recipe(Recipe("demo-kit", "a demo", recipe.build, recipe.lookup))
    assert catalog.info("demo-kit").ready
    assert (await catalog.resolve("demo-kit")).lowerdirs == (recipe.layer,)
    assert recipe.builds == 0


async def test_a_failed_recipe_build_is_reported_and_tried_again(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    recipe = CountingRecipe(tmp_path)
    attempts = 0

    async def flaky(on_log: Callable[[str], None]) -> BuiltImage:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise BuildError("pip_install step failed (exit code 1)")
        return await recipe.build(on_log)

    catalog.add_recipe(Recipe("demo-kit", "a demo", flaky, recipe.lookup))
    with pytest.raises(Exception, match="building image 'demo-kit' failed: pip_install"):
        await catalog.resolve("demo-kit")
    assert (await catalog.resolve("demo-kit")).lowerdirs == (recipe.layer,)


def test_recipe_names_cannot_shadow_other_images(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    recipe = CountingRecipe(tmp_path)
    for name in ("python", "img-0123", "team/app", "agent:v1"):
        with pytest.raises(ValueError, match="cannot name a recipe"):
            catalog.add_recipe(Recipe(name, "", recipe.build, recipe.lookup))
    catalog.add_recipe(Recipe(CODE_INTERPRETER, "", recipe.build, recipe.lookup))
    with pytest.raises(NotFoundError, match="debian, python, code-interpreter"):
        catalog.info("nope")


async def test_the_log_of_a_recipe_build_reaches_every_follower(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    recipe = CountingRecipe(tmp_path)
    catalog.add_recipe(Recipe("demo-kit", "a demo", recipe.build, recipe.lookup))
    first: list[str] = []
    second: list[str] = []
    await asyncio.gather(
        catalog.ensure("demo-kit", first.append), catalog.made("demo-kit", second.append)
    )
    assert first == second == ["building"]


def test_gc_keeps_the_layers_of_recipe_images(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path)
    layer = catalog.layers.root / ("build-" + "ef" * 32)
    layer.mkdir(parents=True)
    other = catalog.layers.root / ("build-" + "01" * 32)
    other.mkdir()
    made = BuiltImage("ef" * 32, [layer, catalog.root / "python" / "rootfs"])
    catalog.add_recipe(Recipe("demo-kit", "", CountingRecipe(tmp_path).build, lambda: made))
    result = collect(catalog, min_age=0)
    assert layer.is_dir() and not other.exists()
    assert result.removed == 1


# ------------------------------------------------------------- the builder's step


@dataclass
class _Record:
    id: str


class FakeSandboxes:
    """Runs no sandbox: remembers the layers each build step got, and "captures" a layer."""

    def __init__(self) -> None:
        self.lowerdirs: list[list[Path]] = []

    async def create_over(
        self,
        req: CreateRequest,
        lowerdirs: Sequence[Path],
        *,
        tags: Mapping[str, str],
        user: str | None = None,
    ) -> _Record:
        self.lowerdirs.append(list(lowerdirs))
        return _Record(f"sb-{len(self.lowerdirs)}")

    async def terminate(
        self, sandbox_id: str, *, reason: str = "terminated", capture: Path | None = None
    ) -> None:
        if capture is not None:
            (capture / "usr").mkdir(parents=True)


class _Session:
    async def events(self) -> AsyncIterator[ExitInfo]:
        yield ExitInfo(0)

    async def aclose(self) -> None:
        pass


class FakeExecs:
    def __init__(self) -> None:
        self.commands: list[str] = []

    async def start(self, sandbox_id: str, argv: Sequence[str], **_: Any) -> _Session:
        self.commands.append(argv[-1])
        return _Session()


def _builder(tmp_path: Path) -> tuple[ImageBuilder, FakeSandboxes, FakeExecs]:
    sandboxes, execs = FakeSandboxes(), FakeExecs()
    builder = ImageBuilder(
        tmp_path,
        _catalog(tmp_path),
        cast(SandboxService, sandboxes),
        cast(ExecService, execs),
        policy=NetworkPolicy(),
    )
    return builder, sandboxes, execs


def _complete(tmp_path: Path, wheelhouse: Wheelhouse) -> Path:
    path = wheelhouse.path(tmp_path)
    (path / WHEELS_DIR.lstrip("/")).mkdir(parents=True)
    (path / "complete").write_text("0 0\n")
    return path


async def test_a_wheelhouse_step_sees_the_wheels_below_its_image_only(tmp_path: Path) -> None:
    builder, sandboxes, execs = _builder(tmp_path)
    wheels = Wheelhouse("demo", ("alpha==1.0",))
    builder.add_wheelhouse(wheels)
    house = _complete(tmp_path, wheels)
    spec = BuildSpec(
        "python",
        (
            {"op": "pip_install", "packages": ["alpha==1.0"], "wheelhouse": wheels.dirname},
            {"op": "run", "commands": ["true"]},
        ),
    )
    log: list[str] = []
    image = await builder.build(spec, log.append)
    rootfs = builder.catalog.root / "python" / "rootfs"
    assert sandboxes.lowerdirs[0] == [rootfs, house]
    assert house not in sandboxes.lowerdirs[1]
    assert house not in image.lowerdirs
    assert execs.commands[0] == (
        "python3 -m pip install --no-cache-dir --progress-bar off --no-index "
        f"--find-links {WHEELS_DIR} alpha==1.0"
    )
    assert any(f"from wheelhouse {wheels.dirname}" in line for line in log), log
    # The wheelhouse is part of the layer's key: other wheels, another layer.
    assert builder.cached(spec) == image
    other = Wheelhouse("demo", ("alpha==1.1",))
    moved = BuildSpec("python", ({**spec.steps[0], "wheelhouse": other.dirname}, spec.steps[1]))
    assert builder.cached(moved) is None


async def test_a_step_cannot_name_a_wheelhouse_the_server_does_not_have(tmp_path: Path) -> None:
    builder, sandboxes, _ = _builder(tmp_path)
    spec = BuildSpec(
        "python", ({"op": "pip_install", "packages": ["a"], "wheelhouse": "../../etc"},)
    )
    with pytest.raises(BuildError, match="not one of this server's"):
        await builder.build(spec, lambda line: None)
    assert sandboxes.lowerdirs == []


async def test_cached_finds_what_build_made_and_nothing_else(tmp_path: Path) -> None:
    builder, _, _ = _builder(tmp_path)
    spec = BuildSpec("python", ({"op": "env", "vars": {"A": "1"}},))
    assert builder.cached(spec) is None
    image = await builder.build(spec, lambda line: None)
    assert builder.cached(spec) == image
    assert builder.cached(BuildSpec("debian", spec.steps)) is None  # not built
    assert builder.cached(BuildSpec("python:3.12", spec.steps)) is None  # a registry base


async def test_images_build_on_the_code_interpreter(tmp_path: Path) -> None:
    builder, sandboxes, execs = _builder(tmp_path)
    add_recipes(builder.catalog, builder)
    house = _complete(tmp_path, CODE_INTERPRETER_WHEELS)
    assert CODE_INTERPRETER in builder.catalog.names()
    assert not builder.catalog.info(CODE_INTERPRETER).ready
    log: list[str] = []
    spec = parse_spec({"image": CODE_INTERPRETER, "steps": [{"op": "run", "commands": ["x"]}]})
    image = await builder.build(spec, log.append)
    made = builder.catalog.built(CODE_INTERPRETER)
    assert made is not None and builder.catalog.info(CODE_INTERPRETER).ready
    assert image.lowerdirs[1:] == made.lowerdirs and house not in image.lowerdirs
    # The recipe's two steps and the user's one; the recipe's log reaches the user.
    assert len(sandboxes.lowerdirs) == 3 and execs.commands[-1] == "x"
    assert any("from wheelhouse" in line for line in log), log
