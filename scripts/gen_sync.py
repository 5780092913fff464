#!/usr/bin/env python3
"""Generate the threaded SDK (src/stockade/_sync) from the asyncio SDK (src/stockade/_async).

The async code is the one implementation; this script removes ``async``/``await`` and
renames the async-only names with unasync, in code, docstrings and comments alike, so the
docstring examples of the sync classes read as sync code.

    python scripts/gen_sync.py            # rewrite src/stockade/_sync
    python scripts/gen_sync.py --check    # exit 1 if src/stockade/_sync is stale
    python scripts/gen_sync.py --out DIR  # write the generated files into DIR instead

tests/unit/test_sync_generated.py runs ``--check``, so a stale ``_sync`` fails the tests.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import unasync

ROOT = Path(__file__).resolve().parent.parent
ASYNC_DIR = ROOT / "src" / "stockade" / "_async"
SYNC_DIR = ROOT / "src" / "stockade" / "_sync"

# Names that differ between the two flavours, beyond unasync's own table
# (__aenter__, __aiter__, AsyncIterator, asynccontextmanager, ...).
REPLACEMENTS = {
    # our classes and the package that holds them
    "_async": "_sync",
    "AsyncClient": "Client",  # also turns httpx.AsyncClient into httpx.Client
    "AsyncSandbox": "Sandbox",
    "AsyncProcess": "Process",
    "AsyncStreamReader": "StreamReader",
    "AsyncStreamWriter": "StreamWriter",
    "AsyncFiles": "Files",
    "AsyncSnapshot": "Snapshot",
    "AsyncFileContent": "FileContent",
    "AsyncVolume": "Volume",
    # the hand-written IO pairs in stockade._transport
    "AsyncWebSocket": "WebSocket",
    "AsyncCondition": "Condition",
    # httpx
    "AsyncBaseTransport": "BaseTransport",
    "aread": "read",
    "aclose": "close",
    "aiter_bytes": "iter_bytes",
    "aiter_lines": "iter_lines",
    "aiter_text": "iter_text",
}

# Rewrites that only make sense in prose and examples (docstrings and comments).
TEXT_REPLACEMENTS = {
    "asyncio.sleep": "time.sleep",
}

HEADER = (
    "# This file is generated from src/stockade/_async/{name} by scripts/gen_sync.py.\n"
    "# Do not edit it: edit the async original and run `python scripts/gen_sync.py`.\n"
)

_AWAIT = re.compile(r"\bawait\s+")
_ASYNC = re.compile(r"\basync\s+(?=(?:with|for|def)\b)")
# `noqa: ASYNC…` silences an async-only lint; in sync code it would be an unused noqa.
_NOQA_ASYNC = re.compile(r"\s*# noqa: ASYNC\d+\b")


class _Rule(unasync.Rule):  # type: ignore[misc]  # unasync is untyped
    """unasync's rule, extended to strings and comments (docstring examples included)."""

    def __init__(self) -> None:
        super().__init__("/_async/", "/_sync/", additional_replacements=REPLACEMENTS)
        names = sorted(self.token_replacements, key=len, reverse=True)
        self._names = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")

    def text(self, text: str) -> str:
        for old, new in TEXT_REPLACEMENTS.items():
            text = text.replace(old, new)
        text = _AWAIT.sub("", text)
        text = _ASYNC.sub("", text)
        return self._names.sub(lambda m: str(self.token_replacements[m.group(1)]), text)

    def _unasync_tokens(self, tokens: Any) -> Iterator[Any]:
        for token in super()._unasync_tokens(tokens):
            if token.name == "COMMENT":
                token = token._replace(src=self.text(_NOQA_ASYNC.sub("", token.src)))
            elif token.name in ("STRING", "FSTRING_MIDDLE", "TSTRING_MIDDLE"):
                token = token._replace(src=self.text(token.src))
            yield token


def _sort_imports(source: str, name: str) -> str:
    # Renaming can reorder names (AsyncIterator, Callable -> Iterator, Callable), so let
    # ruff, with the project's settings, sort the imports as `ruff check` expects them.
    result = subprocess.run(
        [
            *(sys.executable, "-m", "ruff", "check", "--quiet", "--select", "I", "--fix-only"),
            *("--stdin-filename", str(SYNC_DIR / name), "-"),
        ],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"ruff failed on the generated {name}: {result.stderr.strip()}")
    return result.stdout


def convert(source: str, name: str) -> str:
    """The sync twin of one async module's source."""
    tokens = unasync.tokenize_rt.src_to_tokens(source)
    body: str = unasync.tokenize_rt.tokens_to_src(_Rule()._unasync_tokens(tokens))
    # A noqa removed from a line that had only it leaves trailing spaces behind.
    body = re.sub(r"[ \t]+$", "", body, flags=re.MULTILINE)
    return _sort_imports(HEADER.format(name=name) + body, name)


def generate() -> dict[str, str]:
    """File name -> generated source, for every module of the async package."""
    return {
        path.name: convert(path.read_text(encoding="utf-8"), path.name)
        for path in sorted(ASYNC_DIR.glob("*.py"))
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the sync code is stale")
    parser.add_argument("--out", type=Path, default=SYNC_DIR, help="where to write")
    args = parser.parse_args(argv)
    generated = generate()
    out: Path = args.out
    if args.check:
        existing = {p.name: p.read_text(encoding="utf-8") for p in out.glob("*.py")}
        if existing != generated:
            stale = sorted(
                name
                for name in existing.keys() | generated.keys()
                if existing.get(name) != generated.get(name)
            )
            print(
                f"{out} is stale ({', '.join(stale)}); run `python scripts/gen_sync.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.glob("*.py"):
        if leftover.name not in generated:
            leftover.unlink()
    for name, source in generated.items():
        (out / name).write_text(source, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
