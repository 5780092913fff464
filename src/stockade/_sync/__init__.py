# This file is generated from src/stockade/_async/__init__.py by scripts/gen_sync.py.
# Do not edit it: edit the async original and run `python scripts/gen_sync.py`.
"""The SDK classes, re-exported by ``stockade``."""

from stockade._sync.client import Client
from stockade._sync.files import Files
from stockade._sync.process import Process, StreamReader, StreamWriter
from stockade._sync.sandbox import Sandbox

__all__ = [
    "Client",
    "Files",
    "Process",
    "Sandbox",
    "StreamReader",
    "StreamWriter",
]
