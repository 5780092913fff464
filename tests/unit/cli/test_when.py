"""Times the CLI takes (--since): relative, ISO 8601 and Unix seconds, and a clear error."""

from __future__ import annotations

import click
import pytest

from stockade.cli._common import parse_when

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", NOW - 86400),
        ("7d", NOW - 7 * 86400),
        ("90m", NOW - 5400),
        ("1.5w", NOW - 1.5 * 7 * 86400),
        ("1700000000", 1_700_000_000.0),
        ("2026-12-01", 1_796_083_200.0),
        ("2026-12-01T09:30:00Z", 1_796_083_200.0 + 9.5 * 3600),
        ("2026-12-01T10:30:00+01:00", 1_796_083_200.0 + 9.5 * 3600),
    ],
)
def test_forms(text: str, expected: float) -> None:
    assert parse_when(text, now=NOW) == pytest.approx(expected)


def test_a_bad_time_names_the_forms() -> None:
    with pytest.raises(click.BadParameter, match="24h or 7d"):
        parse_when("last tuesday", now=NOW)
