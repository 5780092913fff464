"""The host-side nftables policy of one server's sandboxes.

gVisor's netstack sends the sandbox's packets out of its veth as raw frames, so the
policy cannot live inside the sandbox: it sits on the host, in one table per server
(``inet stockade_<block>``), keyed by the host end of each sandbox's veth.

Layout (every rule that matters is per sandbox, so a policy change is one atomic
transaction that replaces two chains):

- ``input`` and ``forward`` send every packet *from* a sandbox interface through the
  verdict map ``sandbox_policy`` to that sandbox's chain ``sb_<slot>``. The chain accepts DNS to
  the services address, refuses the host's own addresses and every sandbox address, then
  applies the mode. An interface without an entry is refused: a sandbox whose policy is
  not in place yet reaches nothing.
- ``forward`` refuses new connections *to* a sandbox interface: nothing outside reaches
  a sandbox except the server itself (the port proxy), whose packets are not forwarded.
- ``prerouting`` (nat) sends allowlisted sandboxes' TCP to the egress proxy through their
  chain ``rd_<slot>``, which is empty in the other modes.
- ``postrouting`` masquerades the block's addresses on the way out.

Packets *from* a sandbox are judged on every packet, not only on new connections, so a
policy change also cuts connections that are already open. ``reject`` (not ``drop``)
(a TCP reset) makes a refused connect fail at once instead of hanging.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..runtime import proc
from .addressing import SANDBOX_SUPERNET, Block
from .policy import NetworkPolicy

__all__ = ["PRIVATE_RANGES", "Firewall", "connected_subnets", "host_addresses"]

# Never public: RFC 1918, loopback, link-local (169.254.169.254, the cloud metadata
# address), CGNAT, "this network", IETF protocol assignments, benchmarking, multicast and
# reserved. The documentation ranges stay reachable: they route nowhere on the internet.
PRIVATE_RANGES = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)


@dataclass(frozen=True)
class Member:
    slot: int
    policy: NetworkPolicy


class Firewall:
    def __init__(
        self,
        block: Block,
        proxy_port: int,
        lan: Sequence[str] = (),
        host_ips: Sequence[str] = (),
    ) -> None:
        self.block = block
        self.proxy_port = proxy_port
        # The host's own subnets (its LAN), refused like the private ranges.
        self.lan = tuple(lan)
        self._denied = [
            ipaddress.IPv4Network(n)
            for n in (*PRIVATE_RANGES, *self.lan, str(SANDBOX_SUPERNET), *host_ips)
        ]

    def forbidden(self, address: str) -> bool:
        """What the default policy refuses, for the egress proxy, which connects from the
        host and so is not subject to these rules itself. (nftables matches the host's
        addresses with ``fib daddr type local``; ``host_ips`` is the same list, read at
        start-up.)"""
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return True
        return any(ip in net for net in self._denied)

    async def install(self, members: Iterable[Member]) -> None:
        """Replace the whole table: the base chains plus the given sandboxes' policies.

        Used at start-up, so rules of sandboxes that ended while no server ran vanish.
        """
        await self._apply(self._table(members))

    async def remove_table(self) -> None:
        t = self.block.table
        await self._apply(f"table inet {t}\ndelete table inet {t}\n")

    async def add(self, slot: int, policy: NetworkPolicy) -> None:
        t, name = self.block.table, self.block.ifname(slot)
        await self._apply(
            f"add chain inet {t} sb_{slot}\n"
            f"add chain inet {t} rd_{slot}\n"
            + self._rules(slot, policy)
            + f'add element inet {t} sandbox_policy {{ "{name}" : jump sb_{slot} }}\n'
            f'add element inet {t} sandbox_divert {{ "{name}" : jump rd_{slot} }}\n'
        )

    async def update(self, slot: int, policy: NetworkPolicy) -> None:
        t = self.block.table
        await self._apply(
            f"flush chain inet {t} sb_{slot}\nflush chain inet {t} rd_{slot}\n"
            + self._rules(slot, policy)
        )

    async def remove(self, slot: int) -> None:
        """Forget a sandbox's rules; tolerates a sandbox that has none (any more)."""
        t, name = self.block.table, self.block.ifname(slot)
        stmts = [
            f'delete element inet {t} sandbox_policy {{ "{name}" }}',
            f'delete element inet {t} sandbox_divert {{ "{name}" }}',
            f"delete chain inet {t} sb_{slot}",
            f"delete chain inet {t} rd_{slot}",
        ]
        done = await proc.run(
            ["nft", "-f", "-"], input="\n".join(stmts).encode() + b"\n", check=False, timeout=30
        )
        if done.returncode != 0:
            # Partly gone already (a crash between steps): remove what is left, one by one.
            for stmt in stmts:
                await proc.run(["nft", stmt], check=False, timeout=30)

    # ------------------------------------------------------------------- rule text

    def _table(self, members: Iterable[Member]) -> str:
        t, b = self.block.table, self.block
        private = ", ".join((*PRIVATE_RANGES, *self.lan))
        out = [
            # Declaring the table first makes the delete valid when it does not exist yet.
            f"table inet {t}",
            f"delete table inet {t}",
            f"table inet {t} {{",
            "  set private { type ipv4_addr; flags interval; auto-merge;",
            f"    elements = {{ {private} }} }}",
            "  map sandbox_policy { type ifname : verdict; }",
            "  map sandbox_divert { type ifname : verdict; }",
            # TCP gets a reset, so connect() fails with ECONNREFUSED at once, and an open
            # connection that a new policy forbids breaks on its next packet.
            "  chain refuse { meta l4proto tcp reject with tcp reset; reject; }",
            "  chain input { type filter hook input priority filter; policy accept;",
            f'    iifname "{b.if_prefix}*" iifname vmap @sandbox_policy',
            f'    iifname "{b.if_prefix}*" goto refuse',
            "  }",
            "  chain forward { type filter hook forward priority filter; policy accept;",
            f'    oifname "{b.if_prefix}*" ct state established,related accept',
            f'    oifname "{b.if_prefix}*" goto refuse',
            f'    iifname "{b.if_prefix}*" iifname vmap @sandbox_policy',
            f'    iifname "{b.if_prefix}*" goto refuse',
            "  }",
            "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;",
            f'    iifname "{b.if_prefix}*" iifname vmap @sandbox_divert',
            "  }",
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;",
            f'    ip saddr {b.subnet} oifname != "{b.if_prefix}*" masquerade',
            "  }",
            "}",
        ]
        script = "\n".join(out) + "\n"
        for m in members:
            name = self.block.ifname(m.slot)
            script += (
                f"add chain inet {t} sb_{m.slot}\nadd chain inet {t} rd_{m.slot}\n"
                + self._rules(m.slot, m.policy)
                + f'add element inet {t} sandbox_policy {{ "{name}" : jump sb_{m.slot} }}\n'
                f'add element inet {t} sandbox_divert {{ "{name}" : jump rd_{m.slot} }}\n'
            )
        return script

    def _rules(self, slot: int, policy: NetworkPolicy) -> str:
        t, svc = self.block.table, self.block.services_ip
        sb, rd = f"add rule inet {t} sb_{slot}", f"add rule inet {t} rd_{slot}"
        if policy.mode == "blocked":
            return f"{sb} goto refuse\n"
        lines = [
            # Sandboxes have IPv4 only, and may not pose as another address: the resolver
            # and the egress proxy tell sandboxes apart by source address.
            f"{sb} meta nfproto ipv6 goto refuse",
            f"{sb} ip saddr != {self.block.sandbox_ip(slot)} goto refuse",
            f"{sb} ip daddr {svc} meta l4proto {{ tcp, udp }} th dport 53 accept",
        ]
        domains = policy.domain_allowlist is not None
        if domains:
            lines.append(f"{sb} ip daddr {svc} tcp dport {self.proxy_port} accept")
        lines += [
            # Replies to the host's own connections: the port proxy reaching a server in
            # the sandbox. (A blocked sandbox gets none: nothing reaches it.)
            f"{sb} fib daddr type local ct state established,related accept",
            f"{sb} fib daddr type local goto refuse",
            f"{sb} ip daddr {SANDBOX_SUPERNET} goto refuse",
        ]
        if policy.mode == "open":
            lines += [f"{sb} ip daddr @private goto refuse", f"{sb} accept"]
        else:
            cidrs = ", ".join(policy.cidr_allowlist or ())
            if cidrs:
                lines.append(f"{sb} ip daddr {{ {cidrs} }} accept")
            lines.append(f"{sb} goto refuse")
            if domains:
                # Allowed ranges go out directly; every other TCP connection goes to the
                # egress proxy, which checks the name it carries (SNI or Host).
                lines.append(f"{rd} ip daddr {svc} return")
                if cidrs:
                    lines.append(f"{rd} ip daddr {{ {cidrs} }} return")
                lines.append(f"{rd} meta l4proto tcp dnat ip to {svc}:{self.proxy_port}")
        return "\n".join(lines) + "\n"

    async def _apply(self, script: str) -> None:
        await proc.run(["nft", "-f", "-"], input=script.encode(), timeout=30)


async def host_addresses() -> list[str]:
    """The host's own IPv4 addresses."""
    result = await proc.run(["ip", "-j", "-4", "addr", "show"], check=False, timeout=30)
    try:
        links = json.loads(result.stdout or b"[]")
    except json.JSONDecodeError:
        return []
    return [str(a["local"]) for link in links for a in link.get("addr_info", []) if "local" in a]


async def connected_subnets(exclude_prefixes: Sequence[str]) -> list[str]:
    """The IPv4 subnets the host is directly attached to (its LAN), except ours."""
    result = await proc.run(
        ["ip", "-j", "-4", "route", "show", "table", "main", "scope", "link"],
        check=False,
        timeout=30,
    )
    try:
        routes = json.loads(result.stdout or b"[]")
    except json.JSONDecodeError:
        return []
    nets: list[str] = []
    for r in routes:
        dev, dst = str(r.get("dev", "")), str(r.get("dst", ""))
        if any(dev.startswith(p) for p in exclude_prefixes) or dst in ("", "default"):
            continue
        try:
            net = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if not net.is_loopback:
            nets.append(str(net))
    return nets
