"""What the OpenAPI document needs beyond the handlers' signatures.

- ``bearer_scheme``: declares the admin token as the API's security scheme. ``require_token``
  (deps.py) does the checking; this dependency only puts ``Authorization: Bearer`` into the
  document, so that clients and fuzzers know every ``/v1`` route needs it.
- ``inline_body``: the request body of a route that reads its body itself (and validates it
  by hand), stated from a model that exists for the document only.
"""

from __future__ import annotations

from typing import Any

from fastapi.security import HTTPBearer
from pydantic import BaseModel

__all__ = ["bearer_scheme", "inline_body", "raw_body"]

# auto_error=False: it never answers for itself; require_token's 401 stays the only one.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="The server's admin token (its token file, or `STOCKADE_TOKEN`).",
)


def inline_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` giving a route ``model``'s JSON schema as its request body.

    The model's nested definitions are inlined: a ``$ref`` to ``#/$defs/...`` would be
    resolved against the whole OpenAPI document, where they are not. (Only for models
    without recursion, which every body here is.)
    """
    schema = model.model_json_schema(mode="validation")
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = resolve(defs[ref.removeprefix("#/$defs/")])
                return {**target, **{k: resolve(v) for k, v in node.items() if k != "$ref"}}
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": resolve(schema)}},
        }
    }


def raw_body(description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that streams its raw request body (any bytes)."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    }
