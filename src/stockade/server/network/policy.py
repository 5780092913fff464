"""A sandbox's outbound network policy: what it may reach, validated once, stored as data.

Modes (``NetworkPolicy.mode``):
- ``open`` (the default): public addresses; never private ranges, loopback, link-local
  (the cloud metadata address), the host's own addresses or other sandboxes;
- ``blocked``: loopback only;
- ``allowlist``: only the listed CIDR ranges and/or domain names. Names are enforced by the
  host's DNS forwarder and egress proxy (see dns.py, egress.py), so resolving a name
  elsewhere or faking SNI/Host reaches nothing.

A domain pattern is an exact name (``example.com``) or ``*.`` plus a name, which matches
every subdomain of it but not the name itself (``*.example.org``), as in E2B and Vercel.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ...errors import InvalidArgumentError

__all__ = [
    "NetworkMode",
    "NetworkPolicy",
    "domain_matches",
    "normalize_domain_pattern",
    "parse_cidr",
]

# What NetworkPolicy.mode says: no limits, no network at all, or only what is listed.
NetworkMode = Literal["open", "blocked", "allowlist"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
MAX_ALLOWLIST = 256


def parse_cidr(text: str) -> str:
    """``10.0.0.0/8`` or a bare address; normalised. Only IPv4: sandboxes have no IPv6."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise InvalidArgumentError(
            f"invalid CIDR {text!r}: expected an IPv4 network such as 203.0.113.0/24"
        ) from None
    if net.version != 4:
        raise InvalidArgumentError(f"invalid CIDR {text!r}: sandboxes have IPv4 networking only")
    return str(net)


def normalize_domain_pattern(text: str) -> str:
    """Lower-case, without a trailing dot; raises for anything that is not a host name."""
    pattern = text.strip().lower().rstrip(".")
    name = pattern[2:] if pattern.startswith("*.") else pattern
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise InvalidArgumentError(
            f"{text!r} is an address, not a domain: put it in outbound_cidr_allowlist"
        )
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or "*" in name
        or (len(labels) < 2 and not pattern.startswith("*."))
        or not all(_LABEL.match(label) for label in labels)
    ):
        raise InvalidArgumentError(
            f"invalid domain pattern {text!r}: use a name such as example.com, or "
            "*.example.com for its subdomains"
        )
    return pattern


def domain_matches(pattern: str, name: str) -> bool:
    name = name.lower().rstrip(".")
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


@dataclass(frozen=True)
class NetworkPolicy:
    block_network: bool = False
    cidr_allowlist: tuple[str, ...] | None = None
    domain_allowlist: tuple[str, ...] | None = None

    @property
    def mode(self) -> NetworkMode:
        if self.block_network:
            return "blocked"
        if self.cidr_allowlist is not None or self.domain_allowlist is not None:
            return "allowlist"
        return "open"

    def allows_name(self, name: str) -> bool:
        """May the sandbox resolve and connect to ``name``? (Every name, unless allowlisted.)"""
        if self.block_network:
            return False
        if self.domain_allowlist is None:
            return self.cidr_allowlist is None
        return any(domain_matches(p, name) for p in self.domain_allowlist)

    @classmethod
    def parse(
        cls,
        *,
        block_network: bool = False,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        outbound_domain_allowlist: Sequence[str] | None = None,
    ) -> NetworkPolicy:
        if block_network and (
            outbound_cidr_allowlist is not None or outbound_domain_allowlist is not None
        ):
            raise InvalidArgumentError(
                "block_network=True cannot be combined with an allowlist: drop one of them"
            )
        for name, items in (
            ("outbound_cidr_allowlist", outbound_cidr_allowlist),
            ("outbound_domain_allowlist", outbound_domain_allowlist),
        ):
            if items is not None and len(items) > MAX_ALLOWLIST:
                raise InvalidArgumentError(
                    f"{name} has {len(items)} entries; at most {MAX_ALLOWLIST}"
                )
        return cls(
            block_network=block_network,
            cidr_allowlist=_unique(parse_cidr(c) for c in outbound_cidr_allowlist)
            if outbound_cidr_allowlist is not None
            else None,
            domain_allowlist=_unique(normalize_domain_pattern(d) for d in outbound_domain_allowlist)
            if outbound_domain_allowlist is not None
            else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "block_network": self.block_network,
            "outbound_cidr_allowlist": list(self.cidr_allowlist)
            if self.cidr_allowlist is not None
            else None,
            "outbound_domain_allowlist": list(self.domain_allowlist)
            if self.domain_allowlist is not None
            else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkPolicy:
        cidrs, domains = data.get("outbound_cidr_allowlist"), data.get("outbound_domain_allowlist")
        return cls(
            block_network=bool(data.get("block_network")),
            cidr_allowlist=tuple(cidrs) if cidrs is not None else None,
            domain_allowlist=tuple(domains) if domains is not None else None,
        )


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
