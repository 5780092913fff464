"""One server's sandbox networking, as the sandbox service sees it.

Lifecycle:
1. :meth:`NetworkManager.start` claims the server's address block and checks that the
   host can provide networking (root, ``ip``, ``nft``, IPv4 forwarding). When it cannot,
   ``available`` is False, ``reason`` says why, and every sandbox runs with loopback only.
2. The sandbox service reconciles its records, then calls :meth:`install` with the
   surviving sandboxes: the nft table is rebuilt from them, leftover namespaces are
   removed, and the DNS forwarder and egress proxy start on the services address.
3. Per sandbox: :meth:`reserve` a slot, :meth:`attach` (namespace, veth, rules) before
   ``runsc run``, :meth:`set_policy` any time, :meth:`release` after the sandbox is gone.
   :meth:`make_spare` sets a slot up ahead of need (service/boot_reserve.py); ``reserve`` hands
   out such a spare first, and ``attach`` then only changes its policy if it must.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..agent.build import netexec_binary
from .addressing import Block, BlockBusyError, claim_block
from .dns import DnsForwarder, parse_upstream, system_upstreams
from .egress import AnswerLog, EgressProxy, upstream_resolver
from .firewall import Firewall, Member, connected_subnets, host_addresses
from .links import Links
from .policy import NetworkPolicy

__all__ = ["EGRESS_PROXY_PORT", "NetworkManager", "SandboxNet"]

log = logging.getLogger(__name__)

EGRESS_PROXY_PORT = 15001
_DNS_PORT = 53


@dataclass(frozen=True)
class SandboxNet:
    """What a networked sandbox needs to boot: its namespace and resolver."""

    slot: int
    ip: str
    netns: Path
    nameserver: str


class NetworkManager:
    def __init__(
        self,
        data_dir: Path,
        cache_dir: Path,
        *,
        enabled: bool = True,
        dns_upstreams: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.cache_dir = cache_dir
        self.enabled = enabled
        self.available = False
        self.reason: str | None = "networking has not started"
        self.block: Block | None = None
        self._lock_file: IO[str] | None = None
        self._dns_upstreams = list(dns_upstreams)
        self._links: Links | None = None
        self._firewall: Firewall | None = None
        self._policies: dict[int, NetworkPolicy] = {}
        self._reserved: set[int] = set()
        # Slots made ahead (namespace, veth, default rules) that no sandbox has yet.
        self._spares: list[int] = []
        # The slot handed out last: slots go round, so that a sandbox's address is not
        # given to the next sandbox right after it ended.
        self._last_slot = 0
        self._netexec: Path | None = None
        self.answers = AnswerLog()
        self._dns: DnsForwarder | None = None
        self._egress: EgressProxy | None = None

    # -------------------------------------------------------------------- start/stop

    async def start(self) -> None:
        if not self.enabled:
            self.reason = "networking is disabled on this server (--no-network)"
            return
        try:
            await self._prepare()
        except Exception as exc:
            self.reason = f"the host cannot provide sandbox networking: {exc}"
            log.warning("%s; sandboxes get loopback only", self.reason)
            await self._release_block()
            return
        self.available, self.reason = True, None

    async def _prepare(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the server does not run as root")
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"`{tool}` is not installed (apt-get install iproute2 nftables)")
        upstreams = [parse_upstream(u) for u in self._dns_upstreams] or system_upstreams()
        if not upstreams:
            raise RuntimeError("no DNS server in /etc/resolv.conf; pass --dns-upstream")
        self._upstreams = upstreams
        self._netexec = await asyncio.to_thread(netexec_binary, self.cache_dir)
        try:
            block, self._lock_file = await asyncio.to_thread(claim_block, self.data_dir)
        except BlockBusyError as exc:
            raise RuntimeError(str(exc)) from None
        self.block = block
        self._links = Links(block)
        await self._links.ensure_services()
        # Forwarding is what lets a sandbox's packets leave through the host; the nft
        # table decides which may.
        await asyncio.to_thread(Path("/proc/sys/net/ipv4/ip_forward").write_text, "1\n")
        lan = await connected_subnets((block.if_prefix, block.dummy))
        self._firewall = Firewall(block, EGRESS_PROXY_PORT, lan, await host_addresses())
        await self._firewall.install(())

    async def install(
        self, live: Iterable[tuple[int, NetworkPolicy]], *, last_slot: int = 0
    ) -> None:
        """Rebuild the rules for the sandboxes that survived a restart; drop the rest;
        start the resolver and the egress proxy. New slots are handed out after
        ``last_slot`` (the highest any sandbox on record had)."""
        if not self.available:
            return
        assert self._firewall is not None and self._links is not None and self.block is not None
        self._policies = dict(live)
        self._last_slot = last_slot % self.block.max_slot
        await self._firewall.install(Member(s, p) for s, p in self._policies.items())
        leftovers = await self._links.existing_slots() - set(self._policies)
        if leftovers:
            log.info("removing %d leftover sandbox network(s)", len(leftovers))
            await self._links.destroy_many(leftovers)
        self._dns = DnsForwarder(self.policy_for, self._upstreams, self.answers)
        await self._dns.start(self.block.services_ip, _DNS_PORT)
        self._egress = EgressProxy(
            self.policy_for,
            self.answers,
            upstream_resolver(self._upstreams),
            forbidden=self._firewall.forbidden,
        )
        await self._egress.start(self.block.services_ip, EGRESS_PROXY_PORT)

    async def stop(self) -> None:
        """Stop serving DNS and the proxy. Rules and namespaces stay for the running
        sandboxes; with none left, the whole block is released."""
        for server in (self._dns, self._egress):
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.close()
        await self.drop_spares()
        if self.available and not self._policies and not self._reserved:
            assert self._firewall is not None and self._links is not None
            with contextlib.suppress(Exception):
                await self._firewall.remove_table()
                await self._links.remove_services()
        await self._release_block()

    async def _release_block(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # ------------------------------------------------------------------ per sandbox

    def reserve(self) -> int:
        """A free slot, held until :meth:`release`: a spare one if there is one."""
        if self._spares:
            slot = self._spares.pop()
            self._reserved.add(slot)
            return slot
        return self.reserve_new()

    def reserve_new(self) -> int:
        """A free slot that has nothing set up yet, held until :meth:`release`."""
        assert self.block is not None
        used = self._reserved | set(self._policies)
        for step in range(1, self.block.max_slot + 1):
            slot = (self._last_slot + step - 1) % self.block.max_slot + 1
            if slot not in used:
                self._reserved.add(slot)
                self._last_slot = slot
                return slot
        raise RuntimeError(f"all {self.block.max_slot} sandbox network slots are in use")

    async def attach(self, slot: int, policy: NetworkPolicy) -> SandboxNet:
        assert self._links is not None and self._firewall is not None and self.block is not None
        if slot in self._policies:  # a spare: made already, with the default policy
            await self.set_policy(slot, policy)
            return self.describe(slot)
        await self._links.create(slot)
        await self._firewall.add(slot, policy)
        self._policies[slot] = policy
        return self.describe(slot)

    def describe(self, slot: int) -> SandboxNet:
        assert self._links is not None and self.block is not None
        return SandboxNet(
            slot=slot,
            ip=self.block.sandbox_ip(slot),
            netns=self._links.netns_path(slot),
            nameserver=self.block.services_ip,
        )

    async def set_policy(self, slot: int, policy: NetworkPolicy) -> None:
        assert self._firewall is not None
        if slot not in self._policies:
            raise KeyError(slot)
        if self._policies[slot] == policy:
            return  # a pooled sandbox handed out with the policy it booted with: no nft run
        await self._firewall.update(slot, policy)
        self._policies[slot] = policy

    @property
    def spares(self) -> int:
        return len(self._spares)

    async def make_spare(self) -> None:
        """Set up one slot ahead of need (namespace, veth, the default policy's rules), so
        that a sandbox booting later skips the three processes that takes (~15 ms)."""
        if not self.available:
            return
        slot = self.reserve_new()
        try:
            await self.attach(slot, NetworkPolicy())
        except BaseException:
            await self.release(slot)
            raise
        self._reserved.discard(slot)
        self._spares.append(slot)

    async def drop_spares(self) -> None:
        while self._spares:
            slot = self._spares.pop()
            self._reserved.add(slot)
            await self.release(slot)

    async def release(self, slot: int) -> None:
        """Remove a sandbox's rules, veth and namespace (after runsc let go of it)."""
        if self._firewall is not None and self._links is not None and self.block is not None:
            await self._firewall.remove(slot)
            await self._links.destroy(slot)
            self.answers.forget(self.block.sandbox_ip(slot))
        self._policies.pop(slot, None)
        self._reserved.discard(slot)

    def policy_for(self, ip: str) -> NetworkPolicy | None:
        """The policy of the sandbox at ``ip`` (for the resolver and the egress proxy)."""
        if self.block is None:
            return None
        slot = self.block.slot_of(ip)
        return self._policies.get(slot) if slot is not None else None

    def runsc_prefix(self, scratch: Path) -> list[str]:
        """The argv prefix that lets runsc start a networked sandbox (stockade-netexec.c)."""
        assert self._netexec is not None
        return [str(self._netexec), str(scratch)]
