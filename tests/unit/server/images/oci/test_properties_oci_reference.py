"""Property tests of image references: any text is parsed or refused with InvalidArgumentError,
and a parsed reference prints as text that parses back to it.

References come from API callers and from Dockerfiles' FROM lines, and the parsed parts name
registry hosts and URL paths, so nothing else may come out of the parser.
"""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.errors import InvalidArgumentError
from stockade.server.images.oci.reference import (
    DOCKER_HUB,
    Reference,
    is_valid_tag,
    parse_reference,
)

# Deterministic for CI, no timing checks on a small, busy machine.
PROPS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
components = st.lists(
    st.tuples(
        st.sampled_from([".", "_", "__", "-", "--", "---"]), st.text(LOWER, min_size=1, max_size=6)
    ),
    max_size=3,
).flatmap(
    lambda parts: st.text(LOWER, min_size=1, max_size=6).map(
        lambda head: head + "".join(sep + word for sep, word in parts)
    )
)
labels = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True)
# Hosts that Docker reads as a registry: a dot, a port, localhost or an upper-case letter.
registries = st.one_of(
    st.tuples(
        st.lists(labels, min_size=2, max_size=3).map(".".join), st.none() | st.integers(1, 65535)
    ),
    st.tuples(st.just("localhost"), st.none() | st.integers(1, 65535)),
    st.tuples(labels, st.integers(0, 99999)),
    st.tuples(
        st.sampled_from(["[::1]", "[fe80::1]", "127.0.0.1"]), st.none() | st.integers(1, 65535)
    ),
    st.tuples(st.sampled_from(["docker.io", "index.docker.io", DOCKER_HUB]), st.none()),
).map(lambda t: t[0] if t[1] is None else f"{t[0]}:{t[1]}")
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
digests = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: f"sha512:{h}"),
)


@st.composite
def references(draw: st.DrawFn) -> tuple[str, Reference | None]:
    """(a reference as a user writes it, the Reference it means by Docker's rules, or None
    where those rules refuse it)."""
    registry = draw(st.none() | registries)
    path = draw(st.lists(components, min_size=1, max_size=3))
    # First components that Docker's registry rule reads as a host, or cannot.
    first = draw(st.none() | st.sampled_from(["a.b", "0.0", "localhost", "x-y.z", "a_b.c"]))
    if first is not None:
        path = [first, *path]
    tag = draw(st.none() | tags)
    digest = draw(st.none() | digests)
    text = "/".join(path)
    if registry is not None:
        text = f"{registry}/{text}"
    if tag is not None:
        text += f":{tag}"
    if digest is not None:
        text += f"@{digest}"
    host = DOCKER_HUB
    repository = "/".join(path)
    if registry is None and len(path) > 1 and ("." in path[0] or path[0] == "localhost"):
        # Docker's rule cuts both ways: written without a registry, "a.b/c" still names the
        # registry a.b, as a user who meant a Docker Hub repository "a.b" would find out.
        registry, repository = path[0], "/".join(path[1:])
        if "_" in registry:
            return text, None  # a host name has no "_": not a registry, nor a repository
    if registry is not None and registry not in ("docker.io", "index.docker.io", DOCKER_HUB):
        host = registry
    if host == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if tag is None and digest is None:
        tag = "latest"
    expected = Reference(host, repository, tag, digest)
    # Docker's limit on registry/repository; longer names are refused (checked below).
    return text, expected


@PROPS
@given(references())
def test_valid_references_parse_as_docker_reads_them(case: tuple[str, Reference | None]) -> None:
    text, expected = case
    if expected is None:
        try:
            parse_reference(text)
        except InvalidArgumentError as exc:
            assert "is not a valid registry host" in exc.message
            return
        raise AssertionError(f"{text!r}: a registry host with '_' was accepted")
    if len(expected.name) > 255:
        try:
            parse_reference(text)
        except InvalidArgumentError as exc:
            assert "longer than 255" in exc.message
            return
        raise AssertionError(f"{text!r}: a name over 255 characters was accepted")
    assert parse_reference(text) == expected


@PROPS
@given(references())
def test_a_parsed_reference_round_trips_through_its_text(
    case: tuple[str, Reference | None],
) -> None:
    try:
        ref = parse_reference(case[0])
    except InvalidArgumentError:
        return  # the over-long names, covered above
    assert parse_reference(str(ref)) == ref
    assert str(parse_reference(str(ref))) == str(ref)
    assert ref.manifest_ref in (ref.digest, ref.tag)
    assert ref.base_url.startswith(("http://", "https://"))


# Text near the grammar: the characters references are made of, with the ones they may not
# hold, in every order, plus pieces of real references and anything at all.
reference_ish = st.one_of(
    st.text(max_size=80),
    st.text("aA0.:/@_-[]sha256:ef \t\n\u00e9\u0130", max_size=60),
    st.lists(
        st.one_of(
            components,
            registries,
            tags,
            digests,
            st.sampled_from(["/", ":", "@", "//", "::", "@@", "..", "-", "__", "[", "]", " "]),
        ),
        max_size=8,
    ).map("".join),
    references()
    .map(lambda case: case[0])
    .flatmap(
        lambda text: st.tuples(st.integers(0, len(text)), st.text(max_size=3)).map(
            lambda cut: text[: cut[0]] + cut[1] + text[cut[0] :]
        )
    ),
)

_HOST_PORT = re.compile(r"([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(:[0-9]{1,5})?")


@PROPS
@given(reference_ish)
def test_any_text_parses_or_raises_invalid_argument(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidArgumentError as exc:
        assert exc.message.startswith(f"invalid image reference {text!r}: ")
        return
    # What a parsed reference holds is safe to put into a URL and a cache path.
    assert _HOST_PORT.fullmatch(ref.registry), ref
    assert all(re.fullmatch(r"[a-z0-9._-]+", c) for c in ref.repository.split("/")), ref
    assert ".." not in ref.repository.split("/")
    assert len(ref.name) <= 255
    assert ref.tag is None or is_valid_tag(ref.tag)
    assert ref.tag is not None or ref.digest is not None
    assert parse_reference(str(ref)) == ref
