"""The version of Stockade: the one place it is written.

Hatch reads it into the distribution's metadata (``[tool.hatch.version]`` in
pyproject.toml), and the SDK, the CLI and the server import it as plain code, so a server
run from a source tree that was never installed still reports it, and an installed wheel
reports the same string as ``pip show stockade``.
"""

__version__ = "0.1.0"
