"""The outbound network policy: parsing, validation, modes, matching, (de)serialising."""

from __future__ import annotations

import pytest

from stockade.errors import InvalidArgumentError
from stockade.server.network.policy import (
    MAX_ALLOWLIST,
    NetworkPolicy,
    domain_matches,
    normalize_domain_pattern,
    parse_cidr,
)

# -- parse_cidr ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7/32"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("192.168.1.77/24", "192.168.1.0/24"),
        ("  198.51.100.0/24\n", "198.51.100.0/24"),
        ("0.0.0.0/0", "0.0.0.0/0"),
    ],
)
def test_parse_cidr_normalises(text: str, expected: str) -> None:
    assert parse_cidr(text) == expected


@pytest.mark.parametrize("text", ["::1", "2001:db8::/32", "::ffff:1.2.3.4"])
def test_parse_cidr_rejects_ipv6(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="IPv4 networking only") as info:
        parse_cidr(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize(
    "text", ["", "nope", "example.com", "1.2.3", "10.0.0.0/33", "300.1.1.1", "10.0.0.0/-1"]
)
def test_parse_cidr_rejects_garbage_and_names_the_fix(text: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_cidr(text)
    message = str(info.value)
    assert repr(text) in message
    assert "203.0.113.0/24" in message  # an example of what to write instead


# -- normalize_domain_pattern -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        (" api.example.com ", "api.example.com"),
        ("*.Example.Org.", "*.example.org"),
        ("*.org", "*.org"),  # every subdomain of a single label is allowed by design
        ("a-b.c-d.example", "a-b.c-d.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("0.example.com", "0.example.com"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
    ],
)
def test_normalize_domain_pattern(text: str, expected: str) -> None:
    assert normalize_domain_pattern(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "*",
        "*.",
        "localhost",  # a single label
        "com",
        "a.*.example.com",  # * only as a prefix
        "example.*",
        "*example.com",
        "**.example.com",
        "*.*.example.com",
        "-a.example.com",
        "a-.example.com",
        "a..example.com",
        "a_b.example.com",
        "exa mple.com",
        "bücher.example",
        "http://example.com",
        "example.com/path",
        "example.com:443",
        "a" * 64 + ".com",  # a label longer than 63
    ],
)
def test_normalize_domain_pattern_rejects(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"example\.com") as info:
        normalize_domain_pattern(text)
    assert repr(text) in str(info.value)


def test_normalize_domain_pattern_length_limit() -> None:
    # 4 labels of 63 + 3 dots = 255 > 253; 3 labels of 63 + "a" * 61 = 253 exactly.
    too_long = ".".join(["a" * 63] * 4)
    fits = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(fits) == 253
    assert normalize_domain_pattern(fits) == fits
    assert normalize_domain_pattern("*." + fits) == "*." + fits
    with pytest.raises(InvalidArgumentError):
        normalize_domain_pattern(too_long)
    with pytest.raises(InvalidArgumentError):
        normalize_domain_pattern(fits + "b")


# -- domain_matches -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*.example.org", "a.example.org", True),
        ("*.example.org", "a.b.example.org", True),
        ("*.example.org", "A.Example.ORG.", True),
        ("*.example.org", "example.org", False),
        ("*.example.org", "badexample.org", False),
        ("*.example.org", "a.badexample.org", False),
        ("*.example.org", "example.org.evil.com", False),
        ("*.example.org", ".example.org", False),
        ("example.com", "example.com", True),
        ("example.com", "EXAMPLE.com.", True),
        ("example.com", "www.example.com", False),
        ("example.com", "example.co", False),
        ("example.com", "notexample.com", False),
    ],
)
def test_domain_matches(pattern: str, name: str, matches: bool) -> None:
    assert domain_matches(pattern, name) is matches


# -- NetworkPolicy ------------------------------------------------------------------------


def test_default_policy_is_open() -> None:
    policy = NetworkPolicy.parse()
    assert policy == NetworkPolicy()
    assert policy.mode == "open"
    assert policy.cidr_allowlist is None and policy.domain_allowlist is None
    assert policy.allows_name("anything.example.com")


def test_blocked_policy() -> None:
    policy = NetworkPolicy.parse(block_network=True)
    assert policy.mode == "blocked"
    assert not policy.allows_name("example.com")


def test_parse_normalises_and_deduplicates_in_order() -> None:
    policy = NetworkPolicy.parse(
        outbound_cidr_allowlist=["10.1.2.3/8", "203.0.113.9", "10.0.0.0/8"],
        outbound_domain_allowlist=["Example.com.", "*.Example.org", "example.com"],
    )
    assert policy.mode == "allowlist"
    assert policy.cidr_allowlist == ("10.0.0.0/8", "203.0.113.9/32")
    assert policy.domain_allowlist == ("example.com", "*.example.org")


def test_parse_reports_the_bad_entry() -> None:
    with pytest.raises(InvalidArgumentError, match="'nope'"):
        NetworkPolicy.parse(outbound_cidr_allowlist=["10.0.0.0/8", "nope"])
    with pytest.raises(InvalidArgumentError, match=r"'bad_name\.com'"):
        NetworkPolicy.parse(outbound_domain_allowlist=["example.com", "bad_name.com"])


def test_domain_allowlist_allows_only_its_names() -> None:
    policy = NetworkPolicy.parse(outbound_domain_allowlist=["example.com", "*.example.org"])
    assert policy.allows_name("example.com")
    assert policy.allows_name("API.example.org.")
    assert not policy.allows_name("www.example.com")
    assert not policy.allows_name("example.org")
    assert not policy.allows_name("evil.com")


def test_cidr_only_allowlist_allows_no_name() -> None:
    policy = NetworkPolicy.parse(outbound_cidr_allowlist=["203.0.113.0/24"])
    assert policy.mode == "allowlist"
    assert policy.domain_allowlist is None
    assert not policy.allows_name("example.com")


def test_empty_allowlists_are_an_allowlist_of_nothing() -> None:
    for policy in (
        NetworkPolicy.parse(outbound_cidr_allowlist=[]),
        NetworkPolicy.parse(outbound_domain_allowlist=[]),
    ):
        assert policy.mode == "allowlist"
        assert not policy.allows_name("example.com")
    assert NetworkPolicy.parse(outbound_cidr_allowlist=[]).cidr_allowlist == ()


@pytest.mark.parametrize(
    ("cidrs", "domains"),
    [(["203.0.113.0/24"], None), (None, ["example.com"]), ([], None), (None, [])],
)
def test_block_network_conflicts_with_an_allowlist(
    cidrs: list[str] | None, domains: list[str] | None
) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot be combined") as info:
        NetworkPolicy.parse(
            block_network=True, outbound_cidr_allowlist=cidrs, outbound_domain_allowlist=domains
        )
    assert "drop one of them" in str(info.value)


def test_allowlist_size_limit() -> None:
    cidrs = [f"10.0.{i // 256}.{i % 256}" for i in range(MAX_ALLOWLIST + 1)]
    domains = [f"host{i}.example.com" for i in range(MAX_ALLOWLIST + 1)]
    assert MAX_ALLOWLIST == 256
    # Exactly the limit is fine.
    assert len(NetworkPolicy.parse(outbound_cidr_allowlist=cidrs[:-1]).cidr_allowlist or ()) == 256
    assert (
        len(NetworkPolicy.parse(outbound_domain_allowlist=domains[:-1]).domain_allowlist or ())
        == 256
    )
    with pytest.raises(InvalidArgumentError, match=r"outbound_cidr_allowlist has 257 entries"):
        NetworkPolicy.parse(outbound_cidr_allowlist=cidrs)
    with pytest.raises(InvalidArgumentError, match=r"outbound_domain_allowlist has 257 .*256"):
        NetworkPolicy.parse(outbound_domain_allowlist=domains)


@pytest.mark.parametrize(
    "policy",
    [
        NetworkPolicy(),
        NetworkPolicy(block_network=True),
        NetworkPolicy.parse(outbound_cidr_allowlist=["203.0.113.0/24"]),
        NetworkPolicy.parse(outbound_domain_allowlist=["*.example.org"]),
        NetworkPolicy.parse(
            outbound_cidr_allowlist=["203.0.113.0/24", "198.51.100.1"],
            outbound_domain_allowlist=["example.com", "*.example.org"],
        ),
        NetworkPolicy.parse(outbound_cidr_allowlist=[], outbound_domain_allowlist=[]),
    ],
)
def test_dict_round_trip(policy: NetworkPolicy) -> None:
    data = policy.to_dict()
    assert set(data) == {"block_network", "outbound_cidr_allowlist", "outbound_domain_allowlist"}
    restored = NetworkPolicy.from_dict(data)
    assert restored == policy
    assert restored.mode == policy.mode


def test_to_dict_shape() -> None:
    policy = NetworkPolicy.parse(
        outbound_cidr_allowlist=["203.0.113.0/24"], outbound_domain_allowlist=["example.com"]
    )
    assert policy.to_dict() == {
        "block_network": False,
        "outbound_cidr_allowlist": ["203.0.113.0/24"],
        "outbound_domain_allowlist": ["example.com"],
    }
    assert NetworkPolicy().to_dict() == {
        "block_network": False,
        "outbound_cidr_allowlist": None,
        "outbound_domain_allowlist": None,
    }


def test_from_dict_of_an_empty_or_partial_record() -> None:
    assert NetworkPolicy.from_dict({}) == NetworkPolicy()
    assert NetworkPolicy.from_dict({"block_network": True}).mode == "blocked"
    partial = NetworkPolicy.from_dict({"outbound_domain_allowlist": ["example.com"]})
    assert partial.mode == "allowlist"
    assert partial.domain_allowlist == ("example.com",)
    assert partial.cidr_allowlist is None


@pytest.mark.parametrize("text", ["1.2.3.4", "*.10.0.0.1", "::1"])
def test_an_address_is_not_a_domain_pattern(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="outbound_cidr_allowlist"):
        normalize_domain_pattern(text)
