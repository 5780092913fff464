"""What an audit entry keeps of a caller's argv: enough to tell what ran, bounded."""

from __future__ import annotations

from stockade.server.api.audit import capped_argv


def test_a_short_argv_is_kept_whole() -> None:
    assert capped_argv(["sh", "-c", "echo hi"]) == ["sh", "-c", "echo hi"]
    assert capped_argv(None) is None


def test_a_huge_argv_is_cut_to_four_kib_saying_how_much_went() -> None:
    argv = ["true", *(["x" * 100_000] * 9)]
    kept = capped_argv(argv)
    assert kept is not None
    assert sum(len(a) for a in kept) < 4096 + 100
    assert kept[0] == "true"
    assert kept[-1].endswith(f"[{900_004 - 4096} more characters, 8 more args]")
