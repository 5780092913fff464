"""A sandbox's CPU time as its cgroup counts it, on cgroup v1 (cpuacct) and v2 hosts."""

from __future__ import annotations

from pathlib import Path

from stockade.server.runtime.cgroups import cpu_seconds


def test_cgroup_v1_cpuacct_counts_nanoseconds(tmp_path: Path) -> None:
    group = tmp_path / "cpuacct" / "stockade" / "sb-1"
    group.mkdir(parents=True)
    (group / "cpuacct.usage").write_text("4250000000\n")
    assert cpu_seconds("sb-1", root=tmp_path) == 4.25


def test_cgroup_v2_cpu_stat_counts_microseconds(tmp_path: Path) -> None:
    group = tmp_path / "stockade" / "sb-1"
    group.mkdir(parents=True)
    (group / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    assert cpu_seconds("sb-1", root=tmp_path) == 1.5


def test_a_missing_or_unreadable_cgroup_reads_none(tmp_path: Path) -> None:
    assert cpu_seconds("sb-gone", root=tmp_path) is None
    group = tmp_path / "stockade" / "sb-2"
    group.mkdir(parents=True)
    (group / "cpu.stat").write_text("user_usec 10\n")  # no usage line
    assert cpu_seconds("sb-2", root=tmp_path) is None
