"""The sandbox service: every sandbox's lifecycle, split by role (see service.py)."""

from ..spec import Checkpoint, CreateRequest
from .lookup import describe_end
from .service import SandboxService

__all__ = ["Checkpoint", "CreateRequest", "SandboxService", "describe_end"]
