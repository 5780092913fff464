# This file is generated from src/stockade/_async/__init__.py by scripts/gen_sync.py.
# Do not edit it: edit the async original and run `python scripts/gen_sync.py`.
"""The SDK classes, re-exported by ``stockade``."""

from stockade._sync.client import Client
from stockade._sync.files import Files
from stockade._sync.process import Process, StreamReader, StreamWriter
from stockade._sync.sandbox import Sandbox
from stockade._sync.snapshot import Snapshot
from stockade._sync.volume import Volume

__all__ = [
    "Client",
    "Files",
    "Process",
    "Sandbox",
    "Snapshot",
    "StreamReader",
    "StreamWriter",
    "Volume",
]
