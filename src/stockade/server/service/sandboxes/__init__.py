"""The sandbox service: every sandbox's lifecycle, split by role (see service.py)."""

from .lookup import describe_end
from .service import Checkpoint, CreateRequest, SandboxService

__all__ = ["Checkpoint", "CreateRequest", "SandboxService", "describe_end"]
