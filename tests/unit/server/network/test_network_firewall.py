"""Sandbox network addressing, block claiming, and the nftables rule text.

The rule text is checked for its essential rules and also handed to the real ``nft``
parser in check mode (``nft -c -f FILE``): that parses the script and validates it against
the kernel inside a transaction that is always aborted, so nothing on the host changes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from stockade.server.network import addressing
from stockade.server.network.addressing import (
    SANDBOX_SUPERNET,
    Block,
    BlockBusyError,
    claim_block,
)
from stockade.server.network.firewall import PRIVATE_RANGES, Firewall, Member
from stockade.server.network.policy import NetworkPolicy
from stockade.server.runtime import proc

IFNAMSIZ = 16  # the kernel's limit on interface names, including the NUL

NFT = shutil.which("nft") or "/usr/sbin/nft"


# nft -c still talks to the kernel (netlink), which needs CAP_NET_ADMIN.
@pytest.fixture
def _nft() -> None:
    if not os.path.exists(NFT) or os.geteuid() != 0:
        pytest.fail("these tests need nft and root (apt-get install nftables; make test)")


needs_nft = pytest.mark.usefixtures("_nft")

OPEN = NetworkPolicy()
BLOCKED = NetworkPolicy.parse(block_network=True)
CIDRS = NetworkPolicy.parse(outbound_cidr_allowlist=["203.0.113.0/24", "198.51.100.7"])
DOMAINS = NetworkPolicy.parse(outbound_domain_allowlist=["example.com", "*.example.org"])
BOTH = NetworkPolicy.parse(
    outbound_cidr_allowlist=["203.0.113.0/24"], outbound_domain_allowlist=["example.com"]
)
PROXY_PORT = 3129


def nft_check(script: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.nft"
    path.write_text(script)
    done = subprocess.run(
        [NFT, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, f"nft rejected the script:\n{done.stderr}\n---\n{script}"


def rules_of(script: str, chain: str) -> list[str]:
    """The rules added to ``chain`` by ``add rule`` lines, without the prefix."""
    out: list[str] = []
    for line in script.splitlines():
        parts = line.split(" ", 5)
        if parts[:2] == ["add", "rule"] and len(parts) == 6 and parts[4] == chain:
            out.append(parts[5])
    return out


# -- Block addressing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "subnet"),
    [(0, "10.213.0.0/20"), (1, "10.213.16.0/20"), (2, "10.213.32.0/20"), (15, "10.213.240.0/20")],
)
def test_block_subnet(number: int, subnet: str) -> None:
    block = Block(number)
    assert block.subnet == ipaddress.IPv4Network(subnet)
    assert block.subnet.subnet_of(SANDBOX_SUPERNET)
    assert block.services_ip == str(block.subnet.network_address + 1)


def test_blocks_do_not_overlap() -> None:
    subnets = [Block(n).subnet for n in range(16)]
    for i, a in enumerate(subnets):
        for b in subnets[i + 1 :]:
            assert not a.overlaps(b)


def test_block_addresses_per_slot() -> None:
    block = Block(2)
    assert block.services_ip == "10.213.32.1"
    assert (block.host_ip(1), block.sandbox_ip(1)) == ("10.213.32.5", "10.213.32.6")
    assert (block.host_ip(2), block.sandbox_ip(2)) == ("10.213.32.9", "10.213.32.10")
    last = block.max_slot
    assert last == 1023
    assert (block.host_ip(last), block.sandbox_ip(last)) == ("10.213.47.253", "10.213.47.254")
    # Every slot's /30 lies inside the block and shares it with no other slot.
    seen: set[str] = {block.services_ip}
    for slot in range(1, last + 1):
        pair = {block.host_ip(slot), block.sandbox_ip(slot)}
        assert not pair & seen
        seen |= pair
        assert all(ipaddress.IPv4Address(a) in block.subnet for a in pair)


def test_block_names() -> None:
    block = Block(3)
    assert block.table == "stockade_3"
    assert block.dummy == "stockade3"
    assert block.ifname(17) == "sk3-17"
    assert block.ifname(17).startswith(block.if_prefix)
    assert block.netns(17) == "stockade-3-17"
    assert block.netns(17).startswith(block.netns_prefix)
    # Another block's names never start with this block's prefixes.
    assert not Block(31).ifname(1).startswith(block.if_prefix)
    assert not Block(13).ifname(1).startswith(Block(1).if_prefix)
    assert not Block(13).netns(1).startswith(Block(1).netns_prefix)


def test_interface_names_fit_the_kernel_limit() -> None:
    largest = Block(15)  # claim_block hands out blocks 0..15
    assert len(largest.ifname(largest.max_slot)) < IFNAMSIZ
    assert len(largest.dummy) < IFNAMSIZ


@pytest.mark.parametrize("slot", [1, 2, 511, 1023])
def test_slot_of_round_trip(slot: int) -> None:
    for number in (0, 7, 15):
        block = Block(number)
        assert block.slot_of(block.sandbox_ip(slot)) == slot


def test_slot_of_rejects_everything_but_sandbox_ends() -> None:
    block = Block(4)
    assert block.slot_of(block.services_ip) is None
    assert block.slot_of(block.host_ip(5)) is None
    assert block.slot_of(str(block.subnet.network_address)) is None
    assert block.slot_of(str(block.subnet.broadcast_address)) is None
    assert block.slot_of(str(block.subnet.network_address + 2)) is None  # slot 0's ".2"
    assert block.slot_of(str(block.subnet.network_address + 4 * 5 + 3)) is None
    assert block.slot_of(Block(5).sandbox_ip(5)) is None  # another block
    assert block.slot_of(Block(3).sandbox_ip(1023)) is None
    assert block.slot_of("203.0.113.6") is None
    for garbage in ("", "nope", "10.213.64.6/32", "::1", "10.213.64.256", " 10.213.64.6"):
        assert block.slot_of(garbage) is None, garbage


# -- claim_block --------------------------------------------------------------------------


@pytest.fixture
def lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run"
    monkeypatch.setattr(addressing, "_LOCK_DIR", path)
    return path


@pytest.fixture
def data_dirs(tmp_path: Path) -> Iterator[list[Path]]:
    dirs = [tmp_path / f"data{i}" for i in range(17)]
    for d in dirs:
        d.mkdir()
    yield dirs


def test_claim_gives_different_data_dirs_different_blocks(
    lock_dir: Path, data_dirs: list[Path]
) -> None:
    a, lock_a = claim_block(data_dirs[0])
    b, lock_b = claim_block(data_dirs[1])
    try:
        assert a != b
        assert {a.number, b.number} == {0, 1}
        assert json.loads((data_dirs[0] / "network.json").read_text()) == {"block": a.number}
        assert json.loads((data_dirs[1] / "network.json").read_text()) == {"block": b.number}
        owner = lock_dir / f"network-block-{b.number}.owner"
        assert owner.read_text() == str(data_dirs[1])
    finally:
        lock_a.close()
        lock_b.close()


def test_claim_returns_the_stored_block_after_release(
    lock_dir: Path, data_dirs: list[Path]
) -> None:
    a, lock_a = claim_block(data_dirs[0])
    b, lock_b = claim_block(data_dirs[1])
    lock_a.close()
    lock_b.close()
    # In the other order: each data directory still gets its own block back.
    again_b, lock_b = claim_block(data_dirs[1])
    again_a, lock_a = claim_block(data_dirs[0])
    try:
        assert (again_a, again_b) == (a, b)
    finally:
        lock_a.close()
        lock_b.close()


def test_second_claim_of_a_held_block_is_busy(lock_dir: Path, data_dirs: list[Path]) -> None:
    block, lock = claim_block(data_dirs[0])
    try:
        with pytest.raises(BlockBusyError, match=f"block {block.number} of .*data0"):
            claim_block(data_dirs[0])
    finally:
        lock.close()
    # The lock died with its file: the block can be claimed again.
    again, lock = claim_block(data_dirs[0])
    lock.close()
    assert again == block


def test_claim_when_every_block_is_held(lock_dir: Path, data_dirs: list[Path]) -> None:
    held = [claim_block(d) for d in data_dirs[:16]]
    try:
        assert sorted(b.number for b, _ in held) == list(range(16))
        with pytest.raises(BlockBusyError, match="all 16"):
            claim_block(data_dirs[16])
        assert not (data_dirs[16] / "network.json").exists()
    finally:
        for _, lock in held:
            lock.close()


def test_claim_ignores_a_corrupt_state_file(lock_dir: Path, data_dirs: list[Path]) -> None:
    for text in ("not json", "{}", '{"block": "x"}', "[1]"):
        (data_dirs[0] / "network.json").write_text(text)
        block, lock = claim_block(data_dirs[0])
        lock.close()
        assert block == Block(0), text
        assert json.loads((data_dirs[0] / "network.json").read_text()) == {"block": 0}


@pytest.mark.parametrize("stored", [16, 99, -3])
def test_claim_rejects_a_stored_block_out_of_range(
    stored: int, lock_dir: Path, data_dirs: list[Path]
) -> None:
    (data_dirs[0] / "network.json").write_text(json.dumps({"block": stored}))
    try:
        block, lock = claim_block(data_dirs[0])
    except (BlockBusyError, ValueError):
        return  # refusing the corrupt state is a fix too
    lock.close()
    assert 0 <= block.number < 16
    assert block.subnet.subnet_of(SANDBOX_SUPERNET)


# -- Firewall.forbidden -------------------------------------------------------------------


def test_forbidden_addresses() -> None:
    fw = Firewall(Block(1), PROXY_PORT, lan=["198.51.100.0/24"], host_ips=["203.0.113.5"])
    for address in (
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "127.0.0.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "10.213.16.1",  # this block's services address
        "10.213.0.6",  # a sandbox of another server
        "198.51.100.20",  # the LAN
        "203.0.113.5",  # the host itself
        "not an address",
        "::1",
    ):
        assert fw.forbidden(address), address
    for address in ("93.184.216.34", "1.1.1.1", "8.8.8.8", "203.0.113.6", "192.0.2.1"):
        assert not fw.forbidden(address), address
    assert not Firewall(Block(1), PROXY_PORT).forbidden("198.51.100.20")


def test_private_ranges_leave_documentation_ranges_public() -> None:
    nets = [ipaddress.IPv4Network(n) for n in PRIVATE_RANGES]
    for doc in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"):
        assert not any(ipaddress.IPv4Network(doc).overlaps(n) for n in nets)


# -- Firewall rule text -------------------------------------------------------------------


def firewall() -> Firewall:
    return Firewall(Block(9), PROXY_PORT, lan=["192.168.77.0/24"], host_ips=["203.0.113.5"])


def test_table_base_chains() -> None:
    script = firewall()._table([])
    assert script.startswith("table inet stockade_9\ndelete table inet stockade_9\n")
    assert "192.168.77.0/24" in script  # the LAN is in the private set
    assert "169.254.0.0/16" in script
    assert 'iifname "sk9-*" iifname vmap @sandbox_policy' in script
    assert 'oifname "sk9-*" goto refuse' in script
    assert 'iifname "sk9-*" iifname vmap @sandbox_divert' in script
    assert 'ip saddr 10.213.144.0/20 oifname != "sk9-*" masquerade' in script
    assert "add rule" not in script


DNS = "ip daddr 10.213.144.1 meta l4proto { tcp, udp } th dport 53 accept"
PROXY = f"ip daddr 10.213.144.1 tcp dport {PROXY_PORT} accept"
NO_IPV6 = "meta nfproto ipv6 goto refuse"
NO_HOST = "fib daddr type local goto refuse"
# Replies to connections the host (the port proxy) opened into the sandbox.
HOST_REPLIES = "fib daddr type local ct state established,related accept"
NO_SANDBOXES = "ip daddr 10.213.0.0/16 goto refuse"
NO_PRIVATE = "ip daddr @private goto refuse"


def no_spoofing(slot: int) -> str:
    return f"ip saddr != {Block(9).sandbox_ip(slot)} goto refuse"


def assert_in_order(rules: list[str], expected: list[str]) -> None:
    """``expected`` occur in ``rules`` in this order (other rules may lie between)."""
    positions = []
    for rule in expected:
        assert rule in rules, f"missing {rule!r} in {rules}"
        positions.append(rules.index(rule))
    assert positions == sorted(positions), f"{expected} out of order in {rules}"


def assert_guards_first(rules: list[str], slot: int) -> None:
    """Nothing is accepted before IPv6 and spoofed sources are refused."""
    first_accept = min(i for i, r in enumerate(rules) if r.endswith("accept"))
    assert rules.index(NO_IPV6) < first_accept
    assert rules.index(no_spoofing(slot)) < first_accept


def test_open_rules() -> None:
    script = firewall()._table([Member(4, OPEN)])
    sb = rules_of(script, "sb_4")
    assert_in_order(sb, [DNS, NO_HOST, NO_SANDBOXES, NO_PRIVATE, "accept"])
    assert_guards_first(sb, 4)
    assert sb[-1] == "accept"
    assert PROXY not in sb  # no egress proxy without names
    assert rules_of(script, "rd_4") == []


def test_blocked_rules() -> None:
    script = firewall()._table([Member(4, BLOCKED)])
    assert rules_of(script, "sb_4") == ["goto refuse"]  # not even DNS
    assert rules_of(script, "rd_4") == []
    assert 'add element inet stockade_9 sandbox_policy { "sk9-4" : jump sb_4 }' in script


def test_cidr_only_rules() -> None:
    script = firewall()._table([Member(4, CIDRS)])
    sb = rules_of(script, "sb_4")
    allowed = "ip daddr { 203.0.113.0/24, 198.51.100.7/32 } accept"
    # The host and other sandboxes are refused before the allowlist can accept them.
    assert_in_order(sb, [DNS, NO_HOST, NO_SANDBOXES, allowed, "goto refuse"])
    assert_guards_first(sb, 4)
    assert sb[-1] == "goto refuse"
    assert NO_PRIVATE not in sb and "accept" not in sb  # no unconditional accept
    assert f"tcp dport {PROXY_PORT}" not in script
    assert rules_of(script, "rd_4") == []


def test_domain_only_rules() -> None:
    script = firewall()._table([Member(4, DOMAINS)])
    sb = rules_of(script, "sb_4")
    assert_in_order(sb, [DNS, PROXY, NO_HOST, NO_SANDBOXES, "goto refuse"])
    assert_guards_first(sb, 4)
    assert sb[-1] == "goto refuse"
    assert [r for r in sb if r.endswith("accept")] == [DNS, PROXY, HOST_REPLIES]
    assert rules_of(script, "rd_4") == [
        "ip daddr 10.213.144.1 return",
        f"meta l4proto tcp dnat ip to 10.213.144.1:{PROXY_PORT}",
    ]


def test_cidr_and_domain_rules() -> None:
    script = firewall()._table([Member(4, BOTH)])
    sb = rules_of(script, "sb_4")
    allowed = "ip daddr { 203.0.113.0/24 } accept"
    assert_in_order(sb, [DNS, PROXY, NO_HOST, NO_SANDBOXES, allowed, "goto refuse"])
    assert_guards_first(sb, 4)
    assert sb[-1] == "goto refuse"
    assert [r for r in sb if r.endswith("accept")] == [DNS, PROXY, HOST_REPLIES, allowed]
    # Allowed ranges bypass the proxy; every other TCP connection is sent to it.
    assert rules_of(script, "rd_4") == [
        "ip daddr 10.213.144.1 return",
        "ip daddr { 203.0.113.0/24 } return",
        f"meta l4proto tcp dnat ip to 10.213.144.1:{PROXY_PORT}",
    ]


def test_each_member_gets_its_own_chains_and_map_entries() -> None:
    script = firewall()._table([Member(1, OPEN), Member(1023, DOMAINS)])
    for slot in (1, 1023):
        assert f"add chain inet stockade_9 sb_{slot}\n" in script
        assert f"add chain inet stockade_9 rd_{slot}\n" in script
        assert f'sandbox_divert {{ "sk9-{slot}" : jump rd_{slot} }}' in script
    assert rules_of(script, "sb_1")[-1] == "accept"
    assert rules_of(script, "sb_1023")[-1] == "goto refuse"


# -- the real nft parser ------------------------------------------------------------------

ALL_POLICIES = [
    OPEN,
    BLOCKED,
    CIDRS,
    DOMAINS,
    BOTH,
    NetworkPolicy.parse(outbound_cidr_allowlist=[]),
    NetworkPolicy.parse(outbound_domain_allowlist=[]),
    NetworkPolicy.parse(outbound_cidr_allowlist=["10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0"]),
]


@needs_nft
@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: repr(p.to_dict()))
def test_nft_accepts_each_mode(policy: NetworkPolicy, tmp_path: Path) -> None:
    script = firewall()._table([Member(5, policy)])
    nft_check(script, tmp_path)


@needs_nft
def test_nft_accepts_a_full_table(tmp_path: Path) -> None:
    members = [Member(slot, p) for slot, p in enumerate(ALL_POLICIES, start=1)]
    members.append(Member(1023, BOTH))
    nft_check(Firewall(Block(15), 65535)._table(members), tmp_path)


@needs_nft
def test_nft_check_does_reject_a_broken_script(tmp_path: Path) -> None:
    """The check is not vacuous: a rule jumping to a missing chain fails it."""
    script = firewall()._table([]) + "add rule inet stockade_9 forward goto sb_77\n"
    with pytest.raises(AssertionError, match="nft rejected"):
        nft_check(script, tmp_path)


@needs_nft
async def test_nft_accepts_add_update_and_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The incremental scripts, applied in order after the table, as one checked batch."""
    fw = firewall()
    scripts: list[str] = []

    async def record(script: str) -> None:
        scripts.append(script)

    async def record_run(
        argv: Sequence[str],
        *,
        check: bool = True,
        input: bytes | None = None,
        timeout: float | None = 120.0,
    ) -> proc.Completed:
        assert list(argv) == ["nft", "-f", "-"]
        assert input is not None
        scripts.append(input.decode())
        return proc.Completed(0, b"", b"")

    monkeypatch.setattr(fw, "_apply", record)
    monkeypatch.setattr(proc, "run", record_run)
    await fw.install([Member(1, OPEN)])
    await fw.add(2, DOMAINS)
    await fw.add(3, BLOCKED)
    await fw.update(2, BOTH)
    await fw.update(3, CIDRS)
    await fw.remove(1)
    await fw.remove(2)
    assert len(scripts) == 7
    assert "flush chain inet stockade_9 sb_2\n" in scripts[3]
    assert 'delete element inet stockade_9 sandbox_policy { "sk9-1" }' in scripts[5]
    nft_check("".join(scripts), tmp_path)
