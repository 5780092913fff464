"""The shapes of the API's identifiers and paths, stated once for the OpenAPI document.

Identifiers in paths are documented, not enforced: an ID names a sandbox, snapshot,
volume or image or it does not, and one that names nothing is a 404 whatever its shape
(``Sandbox.from_id("not-even-an-id")`` raises NotFoundError, as it always has). Body
fields and query parameters that a handler or service already checks with a message of
its own get the same treatment (:func:`documented`), so that those messages stay what
clients and tests see. Only what nothing checked before is enforced here (a port number's
range).

The patterns use only what JSON Schema, Python's ``re`` and pydantic's Rust regex engine
read alike: explicit ``[0-9]`` rather than ``\\d`` (which in Python also matches other
scripts' digits, that no parser here accepts).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Path, Query

from ...errors import InvalidArgumentError

__all__ = [
    "ABS_PATH",
    "CIDR",
    "CONTEXT_DIGEST",
    "CONTEXT_ID",
    "DOMAIN_PATTERN",
    "IMAGE_NAME",
    "IMAGE_REF",
    "MAX_PATH",
    "MAX_REFERENCE",
    "MOUNT_PATH",
    "REFERENCE",
    "SANDBOX_ID",
    "SNAPSHOT_ID",
    "TAG_NAME",
    "VOLUME_REF",
    "AbsPathQ",
    "ContextIdP",
    "DigestP",
    "ImageNameP",
    "PortP",
    "RemovablePathQ",
    "SandboxIdP",
    "SandboxIdQ",
    "SnapshotIdP",
    "TimeQ",
    "VolumeRefP",
    "documented",
    "documented_optional",
    "parse_time",
]

# Server-made IDs are `<prefix>-<16 hex>`; any 1–64 of these characters after the prefix
# is accepted (and, unknown, answered 404), as service/changes.py does for snapshots.
SANDBOX_ID = r"^sb-[0-9A-Za-z_-]{1,64}$"
SNAPSHOT_ID = r"^sn-[0-9A-Za-z_-]{1,64}$"
CONTEXT_ID = r"^ctx-[0-9A-Za-z_-]{1,64}$"
# A volume's name (service/volumes.py check_name) or its ID (`vol-<16 hex>`), which has
# the same shape.
VOLUME_REF = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# A base image or built-in image's name (images/catalog.py), the shape of a tag's name.
IMAGE_NAME = r"^[a-z0-9][a-z0-9._-]{0,127}$"
# The files of an image's copy step, named by their tar's sha256 (service/builder.py).
CONTEXT_DIGEST = r"^sha256:[0-9a-f]{64}$"
# An absolute path inside a sandbox (service/files.py check_path).
ABS_PATH = r"^/[^\x00]*$"
MAX_PATH = 1024
# A mount point (service/volumes.py check_mount_path, which also wants it normalised and
# clear of the runtime's own trees): absolute, without control characters.
MOUNT_PATH = r"^/[^\x00-\x1f\x7f]*$"

# A registry reference as images/oci/reference.py parses it: [host[:port]/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]{{1,5}})?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}"
_REFERENCE = rf"(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@(?:{_DIGEST}))?"
# A named image: a base or built-in image, `name[:tag]` of a build, or `img-…`.
_NAMED = rf"[a-z0-9][a-z0-9._-]{{0,127}}(?::{_TAG})?"
REFERENCE = rf"^{_REFERENCE}$"
IMAGE_REF = rf"^(?:{_NAMED}|{_REFERENCE})$"
# Docker's limit on `registry/repository`, less the room Docker Hub's own prefix takes.
MAX_REFERENCE = 200
# `name:tag` for a built image (images/tags.py parse_tag); `name` alone means `name:latest`.
TAG_NAME = rf"^[a-z0-9][a-z0-9._-]{{0,127}}(?::{_TAG})?$"

# network/policy.py: an IPv4 network or address, and a host name or `*.` + a name.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
CIDR = rf"^{_OCTET}(?:\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?[0-9]))?$"
_DNS_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
DOMAIN_PATTERN = rf"^(?:\*\.(?:{_DNS_LABEL}\.)*{_DNS_LABEL}|(?:{_DNS_LABEL}\.)+{_DNS_LABEL})\.?$"


def documented(**constraints: Any) -> dict[str, Any]:
    """JSON Schema keywords for a value that its handler checks itself (for the
    ``json_schema_extra`` of a field or parameter): they describe, they do not enforce."""
    return constraints


def documented_optional(**constraints: Any) -> Callable[[dict[str, Any]], None]:
    """Like :func:`documented`, for an optional query parameter (``str | None``): the
    keywords go on its string alternative, where they apply, rather than beside the
    ``anyOf``, where a generator could only filter for them."""

    def extra(schema: dict[str, Any]) -> None:
        for branch in schema.get("anyOf", [schema]):
            if branch.get("type") == "string":
                branch.update(constraints)

    return extra


def _examples(*values: object) -> dict[str, Any]:
    return {"examples": list(values)}


def _documented_id(pattern: str, *examples: object) -> dict[str, Any]:
    """An identifier's shape and examples; the handler answers 404 for any other."""
    return documented(pattern=pattern, examples=list(examples))


SandboxIdP = Annotated[
    str,
    Path(
        description="A sandbox ID (`sb-…`).",
        json_schema_extra=_documented_id(SANDBOX_ID, "sb-0123456789abcdef"),
    ),
]
SnapshotIdP = Annotated[
    str,
    Path(
        description="A memory snapshot's ID (`sn-…`).",
        json_schema_extra=_documented_id(SNAPSHOT_ID, "sn-0123456789abcdef"),
    ),
]
ContextIdP = Annotated[
    str,
    Path(
        description="A code context's ID (`ctx-…`).",
        json_schema_extra=_documented_id(CONTEXT_ID, "ctx-0123456789abcdef"),
    ),
]
VolumeRefP = Annotated[
    str,
    Path(
        description="A volume's name, or its ID (`vol-…`).",
        json_schema_extra=_documented_id(VOLUME_REF, "data", "vol-0123456789abcdef"),
    ),
]
ImageNameP = Annotated[
    str,
    Path(
        description="A base image (`python`, `debian`) or a built-in one (`code-interpreter`); "
        "`GET /v1/images` lists them.",
        json_schema_extra=_documented_id(IMAGE_NAME, "python", "debian"),
    ),
]
DigestP = Annotated[
    str,
    Path(
        description="`sha256:` and the 64 lowercase hex digits of the tar's SHA-256.",
        json_schema_extra=_documented_id(
            CONTEXT_DIGEST,
            # The empty upload's digest: the one a generated example can match.
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
    ),
]
PortP = Annotated[
    int,
    Path(
        ge=1,
        le=65535,
        description="A TCP port inside the sandbox.",
        json_schema_extra=_examples(8080),
    ),
]
_PATH_DOC = f"Absolute path inside the sandbox (at most {MAX_PATH} characters, no NUL)."
AbsPathQ = Annotated[
    str,
    Query(
        description=_PATH_DOC,
        # check_path answers these itself, naming the path, so they are only documented.
        json_schema_extra=documented(
            pattern=ABS_PATH, maxLength=MAX_PATH, examples=["/tmp", "/etc/hostname"]
        ),
    ),
]
# A path that FileService.remove accepts: not the root, however it is spelled (`/`, `//`,
# `/./..`: all that normalises to `/`).
RemovablePathQ = Annotated[
    str,
    Query(
        description=_PATH_DOC + " Not `/`.",
        json_schema_extra=documented(
            pattern=ABS_PATH,
            maxLength=MAX_PATH,
            examples=["/tmp/example.txt", "/etc/hostname"],
            **{"not": {"pattern": r"^(/+(\.|\.\.)?)+$"}},
        ),
    ),
]

SandboxIdQ = Annotated[
    str | None,
    Query(
        max_length=80,
        description="Only this sandbox's (`sb-…`).",
        json_schema_extra=_documented_id(SANDBOX_ID, "sb-0123456789abcdef"),
    ),
]
TimeQ = Annotated[
    str | None,
    Query(
        max_length=40,
        description="A time: ISO 8601 (`2026-12-01`, `2026-12-01T09:30:00Z`; UTC unless "
        "it says) or Unix seconds.",
        json_schema_extra=_examples("2026-12-01T00:00:00Z"),
    ),
]


def parse_time(name: str, text: str | None) -> float | None:
    """A :data:`TimeQ` value as Unix seconds (None: not given); 422 naming ``name`` and
    the forms it takes otherwise."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgumentError(
                f"{name}={text[:40]!r} is not a time: give ISO 8601 (2026-12-01 or "
                "2026-12-01T09:30:00Z) or Unix seconds"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        value = when.timestamp()
        # Years 1 to 9999 parse, but not all of them name a time an answer can print.
        if not 0 <= value < 1e11:
            raise InvalidArgumentError(
                f"{name}={text[:40]!r} is out of range: give a time from 1970 on"
            ) from None
        return value
    if not (math.isfinite(value) and 0 <= value < 1e11):
        raise InvalidArgumentError(f"{name}={text[:40]!r} is not a time in Unix seconds")
    return value
