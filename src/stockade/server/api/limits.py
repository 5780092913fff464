"""Range checks with messages that name the allowed range."""

from __future__ import annotations

import os

from ...errors import InvalidArgumentError

__all__ = ["MAX_PORTS", "check_create_ranges", "check_range", "cpu_limit"]

MEMORY_RANGE = (64, 65536)
DISK_RANGE = (64, 102400)
TIMEOUT_RANGE = (1.0, 86400.0)
MIN_CPU = 0.1
# Distinct ports one sandbox may expose through the proxy.
MAX_PORTS = 64


def cpu_limit() -> float:
    return float(os.cpu_count() or 1)


def check_range(name: str, value: float, lo: float, hi: float, unit: str = "") -> None:
    if not lo <= value <= hi:
        raise InvalidArgumentError(
            f"{name}={value:g} is out of range; allowed: {lo:g}–{hi:g}{unit}"
        )


def check_create_ranges(cpu: float, memory: int, disk: int, timeout: float) -> None:
    check_range("cpu", cpu, MIN_CPU, cpu_limit(), " cores")
    check_range("memory", memory, *MEMORY_RANGE, " MiB")
    check_range("disk", disk, *DISK_RANGE, " MiB")
    check_range("timeout", timeout, *TIMEOUT_RANGE, " seconds")
