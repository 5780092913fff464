"""The code context routes' bodies: ``workdir`` in and out, and ``cwd`` from older SDKs."""

from __future__ import annotations

import pydantic
import pytest

from stockade.server.api.code import ContextOut, NewContext
from stockade.server.service.code.service import CodeContext


def test_a_new_context_takes_workdir() -> None:
    assert NewContext.model_validate({"language": "bash", "workdir": "/tmp"}).workdir == "/tmp"
    assert NewContext.model_validate({}).workdir is None
    assert set(NewContext.model_json_schema()["properties"]) == {"language", "workdir"}


@pytest.mark.parametrize("cwd", ["/tmp", None])
def test_the_body_of_an_older_sdk_still_works(cwd: str | None) -> None:
    """SDKs before the rename always send "cwd" (null when not given)."""
    assert NewContext.model_validate({"language": "python", "cwd": cwd}).workdir == cwd


def test_workdir_and_cwd_together_is_an_error() -> None:
    with pytest.raises(pydantic.ValidationError, match="cwd"):
        NewContext.model_validate({"workdir": "/a", "cwd": "/b"})


def test_a_context_answers_with_workdir() -> None:
    ctx = CodeContext("ctx-1", "sb-1", "bash", "/srv", False)
    out = ContextOut.model_validate(ctx.to_json())
    assert out.model_dump() == {
        "id": "ctx-1", "language": "bash", "workdir": "/srv", "default": False,
        "status": "starting",
    }  # fmt: skip
