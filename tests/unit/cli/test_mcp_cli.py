"""`stockade mcp` without the MCP SDK says which extra to install."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from stockade.cli.main import cli


def test_without_the_mcp_sdk_the_command_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if `mcp` were not installed: a None entry makes its import fail, as a missing one.
    for name in list(sys.modules):
        if name == "mcp" or name.startswith(("mcp.", "stockade.mcp")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mcp", None)
    result = CliRunner().invoke(cli, ["mcp"])
    assert result.exit_code == 1
    assert "pip install 'stockade[mcp]'" in result.output
