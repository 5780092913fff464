"""The API's time query parameters: ISO 8601 (UTC unless it says) or Unix seconds."""

from __future__ import annotations

import pytest

from stockade.errors import InvalidArgumentError
from stockade.server.api.params import parse_time


def test_forms() -> None:
    assert parse_time("since", None) is None
    assert parse_time("since", "1700000000.5") == 1_700_000_000.5
    assert parse_time("since", "2026-12-01") == 1_796_083_200.0
    assert parse_time("since", "2026-12-01T00:00:00Z") == 1_796_083_200.0
    assert parse_time("since", "2026-12-01T01:00:00+01:00") == 1_796_083_200.0


@pytest.mark.parametrize("text", ["yesterday", "nan", "inf", "-5", "1e20", ""])
def test_bad_times_name_the_parameter(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="until="):
        parse_time("until", text)
