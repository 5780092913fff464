"""The server's layer rule, read from the imports of every server module.

    api → service → {runtime, network, images, state, agent}

A module imports its own layer or one below, never one above; below the service layer
nothing knows the HTTP framework; ``api/`` reaches the machinery only through services
(nothing of ``runtime/`` or ``images/oci``); and no modules import each other in a loop.
Imports inside functions and under ``TYPE_CHECKING`` count: a lazy import is still an
edge. ARCHITECTURE.md explains the rule; this test keeps it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[3] / "src" / "stockade" / "server"
PACKAGE = "stockade.server"

# Higher may import lower. The composition roots (app, main, prebuild) wire everything.
# config, the server's settings, is read by the service layer and up, and checks them
# with runtime's help (which runsc) and tls's (the certificate to serve); failpoints is
# used by all and imports nothing.
RANK = {
    "app": 4, "main": 4, "prebuild": 4,
    "api": 3,
    "service": 2, "config": 2,
    "runtime": 1, "network": 1, "images": 1, "state": 1, "agent": 1, "tls": 1,
    "failpoints": 0,
}  # fmt: skip
HTTP_FRAMEWORK = ("fastapi", "starlette", "uvicorn")


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(SERVER.rglob("*.py")):
        parts = path.relative_to(SERVER).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((PACKAGE, *parts))] = path
    return found


MODULES = _modules()


def _imported(module: str, path: Path) -> Iterator[str]:
    """Every module name ``module`` imports, relative imports made absolute."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _server_module(name: str) -> str | None:
    """The server module ``name`` is, or is in (``a.b.C`` → ``a.b``); None if outside."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {_server_module(name) for name in _imported(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


GRAPH = _graph()


def _layer(module: str) -> str:
    return module.removeprefix(PACKAGE + ".").split(".")[0]


def test_every_server_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if m != PACKAGE and _layer(m) not in RANK]
    assert not unplaced, f"modules outside every layer (add them to RANK): {unplaced}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{m} -> {t}"
        for m, targets in sorted(GRAPH.items())
        if m != PACKAGE
        for t in sorted(targets)
        if t != PACKAGE and RANK[_layer(t)] > RANK[_layer(m)]
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_api_reaches_the_machinery_only_through_services() -> None:
    below = [
        f"{m} -> {t}"
        for m, targets in sorted(GRAPH.items())
        if _layer(m) == "api"
        for t in sorted(targets)
        if _layer(t) == "runtime" or t.startswith(f"{PACKAGE}.images.oci")
    ]
    assert not below, "api/ imports runtime/ or images/oci:\n" + "\n".join(below)


@pytest.mark.parametrize("layer", ["service", "runtime", "network", "images", "state", "agent"])
def test_below_the_api_nothing_knows_the_http_framework(layer: str) -> None:
    found = [
        f"{module} imports {name}"
        for module, path in MODULES.items()
        if _layer(module) == layer
        for name in _imported(module, path)
        if name.split(".")[0] in HTTP_FRAMEWORK
    ]
    assert not found, "\n".join(found)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    # A module importing its own package (`from . import x`) depends on the package's
    # __init__, which imports the package's modules: that is a loop too.
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
