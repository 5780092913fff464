"""Image references parse as Docker parses them, and malformed ones say how to write them."""

from __future__ import annotations

import pytest

from stockade.errors import InvalidArgumentError
from stockade.server.images.oci.reference import Reference, is_valid_tag, parse_reference

DIGEST = "sha256:" + "ab" * 32

VALID = [
    # text, registry, repository, tag, digest
    ("python", "registry-1.docker.io", "library/python", "latest", None),
    ("python:3.12-slim", "registry-1.docker.io", "library/python", "3.12-slim", None),
    ("library/python:3", "registry-1.docker.io", "library/python", "3", None),
    ("docker.io/python", "registry-1.docker.io", "library/python", "latest", None),
    ("index.docker.io/bitnami/redis:7", "registry-1.docker.io", "bitnami/redis", "7", None),
    ("bitnami/redis", "registry-1.docker.io", "bitnami/redis", "latest", None),
    ("ghcr.io/a/b:t", "ghcr.io", "a/b", "t", None),
    ("ghcr.io/a/b/c/d", "ghcr.io", "a/b/c/d", "latest", None),
    (f"127.0.0.1:5000/x/y@{DIGEST}", "127.0.0.1:5000", "x/y", None, DIGEST),
    (f"ghcr.io/a/b:v1@{DIGEST}", "ghcr.io", "a/b", "v1", DIGEST),
    (f"python@{DIGEST}", "registry-1.docker.io", "library/python", None, DIGEST),
    ("localhost:5000/x", "localhost:5000", "x", "latest", None),
    ("localhost/x:1", "localhost", "x", "1", None),
    ("[::1]:5000/team/app:v2", "[::1]:5000", "team/app", "v2", None),
    ("quay.io/a.b_c__d-e---f/g", "quay.io", "a.b_c__d-e---f/g", "latest", None),
    ("r.example:443/app:V_1.0-rc", "r.example:443", "app", "V_1.0-rc", None),
    ("MyRegistry/app", "MyRegistry", "app", "latest", None),  # uppercase => a host
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), VALID)
def test_valid_references(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    assert parse_reference(text) == Reference(registry, repository, tag, digest)


INVALID = [
    ("", "empty"),
    ("Python:3", "lowercase"),
    ("ghcr.io/Owner/app", "lowercase"),
    ("python:", "tag"),
    ("python:-bad", "tag"),
    ("python:.bad", "tag"),
    ("python:a+b", "tag"),
    ("python:" + "t" * 129, "tag"),
    ("python@sha256:abc", "digest"),
    ("python@md5:" + "a" * 32, "digest"),
    ("python@sha256:" + "AB" * 32, "digest"),
    ("python@", "digest"),
    ("ghcr.io/", "missing"),
    ("ghcr.io//app", "component"),
    ("app/", "component"),
    ("a..b", "component"),
    ("-app", "component"),
    ("app_", "component"),
    ("py thon", "whitespace"),
    (" python", "whitespace"),
    ("bad_host.io:port/app", "registry"),
    ("x" * 250 + "/" + "y" * 10, "longer than"),
]


@pytest.mark.parametrize(("text", "why"), INVALID)
def test_invalid_references_name_the_problem_and_an_example(text: str, why: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_reference(text)
    message = info.value.message
    assert why in message
    assert "python:3.12-slim" in message  # every message shows a valid example
    assert info.value.code == "invalid_argument"


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("localhost:5000/x", True),
        ("localhost/x", True),
        ("127.0.0.1:5000/x", True),
        ("127.8.9.10/x", True),
        ("[::1]:5000/x", True),
        ("python", False),
        ("ghcr.io/a/b", False),
        ("10.0.0.1:5000/x", False),
        ("localhost.example.com/x", False),
        ("[::2]:5000/x", False),
    ],
)
def test_plain_http_only_for_loopback(text: str, plain: bool) -> None:
    ref = parse_reference(text)
    assert ref.plain_http is plain
    assert ref.base_url.startswith("http://" if plain else "https://")


def test_string_form_and_manifest_ref() -> None:
    ref = parse_reference("python:3.12")
    assert str(ref) == "registry-1.docker.io/library/python:3.12"
    assert ref.manifest_ref == "3.12"
    pinned = parse_reference(f"ghcr.io/a/b:v1@{DIGEST}")
    assert str(pinned) == f"ghcr.io/a/b:v1@{DIGEST}"
    assert pinned.manifest_ref == DIGEST  # the digest decides what is pulled
    assert parse_reference(str(pinned)) == pinned


def test_tag_validity() -> None:
    assert is_valid_tag("v1.0_rc-2")
    assert not is_valid_tag(".hidden")
    assert not is_valid_tag("a:b")
    assert not is_valid_tag("")
