"""The ``stockade`` console script: the CLI if its extra is installed, else how to get it.

``pip install stockade`` gives the SDK alone (httpx and websockets), so that a library user
does not pull in click and rich; the command line needs ``pip install 'stockade[cli]'``.
This module imports nothing beyond the standard library until it knows the CLI can load.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["main"]

# What the CLI needs beyond the SDK, as `pip install 'stockade[cli]'` installs it.
CLI_MODULES = ("click", "rich")


def missing_cli_modules() -> list[str]:
    """The CLI's dependencies that cannot be imported here."""
    return [name for name in CLI_MODULES if importlib.util.find_spec(name) is None]


def main() -> None:
    """Run the ``stockade`` command, or say which extra to install and exit 1."""
    missing = missing_cli_modules()
    if missing:
        print(
            f"error: the stockade command needs {' and '.join(missing)}, which the SDK alone "
            "does not install; install the CLI with: pip install 'stockade[cli]'",
            file=sys.stderr,
        )
        raise SystemExit(1)
    from stockade.cli.main import main as cli_main

    cli_main()
