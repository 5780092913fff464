"""What a sandbox is given when it is made: its resources and its lifetime.

:class:`SandboxSpec` is the one place their defaults are written; the HTTP bodies that
create sandboxes and pools, and the pools themselves, read them from here
(``SandboxSpec.memory`` is the default memory, a dataclass field's default being its class
attribute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..runtime.rootfs import DEFAULT_DISK_MIB

__all__ = ["OnTimeout", "SandboxSpec"]

# What a sandbox's timeout and idle timeout do to it when they come.
OnTimeout = Literal["terminate", "pause"]


@dataclass(frozen=True)
class SandboxSpec:
    """A sandbox's resources and lifetime settings, each with its default."""

    cpu: float = 1.0  # cores, fractional allowed
    memory: int = 512  # MiB
    disk: int = DEFAULT_DISK_MIB  # MiB of writable disk
    timeout: float = 300.0  # seconds of life
    idle_timeout: float = 0.0  # seconds without activity before on_timeout applies; 0: never
    on_timeout: OnTimeout = "terminate"
    auto_resume: bool = False  # a paused sandbox wakes by itself on its next use
