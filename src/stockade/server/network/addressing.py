"""Addresses and names of one server's sandbox networks.

Every server claims one *block* of ``10.213.0.0/16`` (a /20, so 16 servers per host and 1023
sandboxes per server). Slot 0 of the block holds the services address (the DNS forwarder
and the egress proxy, on a dummy interface); slot ``s`` is a /30 point-to-point link:
``.1`` on the host's veth end, ``.2`` inside the sandbox.

The block number is part of every kernel object's name (``sk<block>-<slot>`` interfaces,
``stockade-<block>-<slot>`` namespaces, the ``stockade_<block>`` nft table), so servers
with different data directories on one host never touch each other's objects. A server
keeps its block across restarts (it is stored in the data directory) because its
sandboxes keep running, with their addresses, while it is down.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["SANDBOX_SUPERNET", "Block", "BlockBusyError", "claim_block"]

SANDBOX_SUPERNET = ipaddress.IPv4Network("10.213.0.0/16")
_BLOCKS = 16
_SLOTS = 1024
_LOCK_DIR = Path("/run/stockade")


class BlockBusyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Block:
    number: int

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        base = int(SANDBOX_SUPERNET.network_address) + self.number * _SLOTS * 4
        return ipaddress.IPv4Network((base, 20))

    @property
    def max_slot(self) -> int:
        return _SLOTS - 1

    @property
    def services_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def table(self) -> str:
        return f"stockade_{self.number}"

    @property
    def dummy(self) -> str:
        return f"stockade{self.number}"

    @property
    def if_prefix(self) -> str:
        return f"sk{self.number}-"

    @property
    def netns_prefix(self) -> str:
        return f"stockade-{self.number}-"

    def host_ip(self, slot: int) -> str:
        return str(self.subnet.network_address + slot * 4 + 1)

    def sandbox_ip(self, slot: int) -> str:
        return str(self.subnet.network_address + slot * 4 + 2)

    def ifname(self, slot: int) -> str:
        return f"{self.if_prefix}{slot}"

    def netns(self, slot: int) -> str:
        return f"{self.netns_prefix}{slot}"

    def slot_of(self, ip: str) -> int | None:
        """The slot whose sandbox address is ``ip``, or None."""
        try:
            addr = ipaddress.IPv4Address(ip)
        except ValueError:
            return None
        if addr not in self.subnet:
            return None
        offset = int(addr) - int(self.subnet.network_address)
        slot, host = divmod(offset, 4)
        return slot if host == 2 and slot > 0 else None


def claim_block(data_dir: Path) -> tuple[Block, IO[str]]:
    """This data directory's block, locked for this process (the lock dies with it).

    Returns the block and the open lock file, which the caller keeps open.
    """
    _LOCK_DIR.mkdir(parents=True, exist_ok=True)
    state = data_dir / "network.json"
    preferred: int | None = None
    try:
        preferred = int(json.loads(state.read_text())["block"])
    except (OSError, ValueError, KeyError, TypeError):
        preferred = None
    if preferred is not None and not 0 <= preferred < _BLOCKS:
        preferred = None  # a damaged file: claim a block afresh
    order = [preferred] if preferred is not None else list(range(_BLOCKS))
    for number in order:
        lock = open(_LOCK_DIR / f"network-block-{number}.lock", "a")  # noqa: SIM115
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        if preferred is None and _block_in_use_elsewhere(number, data_dir):
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
            continue
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"block": number}))
        os.replace(tmp, state)
        (_LOCK_DIR / f"network-block-{number}.owner").write_text(str(data_dir))
        return Block(number), lock
    if preferred is not None:
        raise BlockBusyError(
            f"network block {preferred} of {data_dir} is held by another running server; "
            "two servers cannot share a data directory"
        )
    raise BlockBusyError(f"all {_BLOCKS} sandbox network blocks are held by other servers")


def _block_in_use_elsewhere(number: int, data_dir: Path) -> bool:
    """A block first claimed by another data directory stays theirs while it is set up (its
    dummy interface exists): that server may be down for a restart with its sandboxes
    still running. A server that stops with no sandboxes left releases its block."""
    owner = _LOCK_DIR / f"network-block-{number}.owner"
    try:
        other = owner.read_text().strip()
    except OSError:
        return False
    return (
        other != str(data_dir)
        and Path(other, "network.json").exists()
        and Path("/sys/class/net", Block(number).dummy).exists()
    )
