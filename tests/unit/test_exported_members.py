"""``stockade.__all__`` is complete, and covers every public module's names."""

from __future__ import annotations

import importlib
import types

import pytest

import stockade

PUBLIC_MODULES = [
    "stockade.commands", "stockade.errors", "stockade.execution", "stockade.models",
]  # fmt: skip


def test_all_names_are_exported() -> None:
    public = [
        name
        for name, value in vars(stockade).items()
        if not isinstance(value, types.ModuleType)
        and (not name.startswith("_") or name == "__version__")
    ]
    # Ruff (RUF022) keeps __all__ sorted; this checks it is complete and has no extras.
    assert sorted(stockade.__all__) == sorted(public)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_modules_are_reexported(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__all__, module_name
    for name in module.__all__:
        assert name in stockade.__all__, f"{module_name}.{name} is not exported by stockade"
        assert getattr(stockade, name) is getattr(module, name)


def test_sync_and_async_are_paired() -> None:
    for name in stockade.__all__:
        if name.startswith("Async"):
            assert name[len("Async") :] in stockade.__all__, name
