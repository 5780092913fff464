"""Stockade: self-hosted gVisor sandboxes for running untrusted code.

Example::

    from stockade import Sandbox

    with Sandbox.create(image="python") as sb:
        print(sb.run("python3 -c 'print(6*7)'").stdout)

The same API exists for asyncio as ``AsyncSandbox`` (``await AsyncSandbox.create()``).
"""

from stockade._async import (
    AsyncClient,
    AsyncFiles,
    AsyncProcess,
    AsyncSandbox,
    AsyncSnapshot,
    AsyncStreamReader,
    AsyncStreamWriter,
    AsyncVolume,
)
from stockade._sync import (
    Client,
    Files,
    Process,
    Sandbox,
    Snapshot,
    StreamReader,
    StreamWriter,
    Volume,
)
from stockade._version import __version__
from stockade.commands import CommandError, CommandResult, CommandTimeoutError
from stockade.errors import (
    AuthenticationError,
    BuildError,
    ConflictError,
    DigestMismatchError,
    ForbiddenError,
    ImageNotFoundError,
    InvalidArgumentError,
    KernelUnavailableError,
    NotFoundError,
    QuotaExceededError,
    RateLimitedError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachableError,
    SandboxPausedError,
    SandboxStartingError,
    SandboxTerminatedError,
    ServerError,
    StockadeConnectionError,
    StockadeError,
    StockadeTimeoutError,
    UnsafeLayerError,
    UnsupportedImageError,
    error_from_body,
)
from stockade.execution import CodeContext, Execution, ExecutionError, Logs, Result
from stockade.image import Image
from stockade.models import (
    FileChange,
    FileChanges,
    FileEvent,
    FileInfo,
    ImageInfo,
    NetworkInfo,
    PortInfo,
    SandboxInfo,
    SnapshotInfo,
    TenantUsage,
    UsageReport,
)

__all__ = [
    "AsyncClient",
    "AsyncFiles",
    "AsyncProcess",
    "AsyncSandbox",
    "AsyncSnapshot",
    "AsyncStreamReader",
    "AsyncStreamWriter",
    "AsyncVolume",
    "AuthenticationError",
    "BuildError",
    "Client",
    "CodeContext",
    "CommandError",
    "CommandResult",
    "CommandTimeoutError",
    "ConflictError",
    "DigestMismatchError",
    "Execution",
    "ExecutionError",
    "FileChange",
    "FileChanges",
    "FileEvent",
    "FileInfo",
    "Files",
    "ForbiddenError",
    "Image",
    "ImageInfo",
    "ImageNotFoundError",
    "InvalidArgumentError",
    "KernelUnavailableError",
    "Logs",
    "NetworkInfo",
    "NotFoundError",
    "PortInfo",
    "Process",
    "QuotaExceededError",
    "RateLimitedError",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachableError",
    "Result",
    "Sandbox",
    "SandboxInfo",
    "SandboxPausedError",
    "SandboxStartingError",
    "SandboxTerminatedError",
    "ServerError",
    "Snapshot",
    "SnapshotInfo",
    "StockadeConnectionError",
    "StockadeError",
    "StockadeTimeoutError",
    "StreamReader",
    "StreamWriter",
    "TenantUsage",
    "UnsafeLayerError",
    "UnsupportedImageError",
    "UsageReport",
    "Volume",
    "__version__",
    "error_from_body",
]
