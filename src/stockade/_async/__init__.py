"""The SDK classes, re-exported by ``stockade``."""

from stockade._async.client import AsyncClient
from stockade._async.files import AsyncFiles
from stockade._async.process import AsyncProcess, AsyncStreamReader, AsyncStreamWriter
from stockade._async.sandbox import AsyncSandbox
from stockade._async.snapshot import AsyncSnapshot
from stockade._async.volume import AsyncVolume

__all__ = [
    "AsyncClient",
    "AsyncFiles",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncSnapshot",
    "AsyncStreamReader",
    "AsyncStreamWriter",
    "AsyncVolume",
]
