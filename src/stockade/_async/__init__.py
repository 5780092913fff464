"""The SDK classes, re-exported by ``stockade``."""

from stockade._async.client import AsyncClient
from stockade._async.files import AsyncFiles
from stockade._async.process import AsyncProcess, AsyncStreamReader, AsyncStreamWriter
from stockade._async.sandbox import AsyncSandbox

__all__ = [
    "AsyncClient",
    "AsyncFiles",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncStreamReader",
    "AsyncStreamWriter",
]
