"""Tenants' quotas: what a tenant may hold and how fast it may make sandboxes, checked
before anything is started or stored, so that a refused call leaves nothing behind.

The limits are a tenant's ``TenantRecord.quotas``, by name (absent: no limit):

- ``max_sandboxes``, ``max_cpu``, ``max_memory`` (MiB): over the tenant's live sandboxes
  (starting, running, paused; a warm pool's belong to nobody until handed out) plus the
  new ones. A create, a restore, a pooled sandbox handed out and each fork count alike.
- ``max_disk`` (MiB): the tenant's snapshots (their size on disk) and volumes (the size
  each may fill), checked when either is made. A snapshot's size is known only once it
  is taken: it is refused before when the tenant is at the limit already, and deleted
  after when it takes the tenant past it.
- ``max_timeout`` (seconds): the longest ``timeout`` a create or ``set_timeout`` may ask.
- ``creates_per_minute``: a token bucket per tenant, in memory (a restart fills it): it
  holds that many creates and refills continuously; each sandbox made takes one.

Quotas limit what a tenant owns, whoever asks: a fork that the operator makes of a
tenant's sandbox is that tenant's. The operator's own objects belong to the ``default``
tenant, which has no quotas unless the operator gives it some.

Concurrency: use from the event loop. Checking and counting a create are one step per
tenant (an asyncio.Lock): the check adds what the tenant's creates in progress will make
(an :class:`Admission` each, with the IDs of their sandboxes chosen ahead) to what the
store holds, and the admission is counted until its create ends, except for those of
its sandboxes the store holds already. Concurrent creates thus never slip under a limit
together, and are not serialised beyond the check. Snapshots and volumes of one tenant
are checked and recorded one at a time (another lock per tenant).

A tenant without quotas costs a dictionary lookup: no lock, no query.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from ...errors import QuotaExceededError, RateLimitedError
from ..state.ids import new_id
from ..state.records import SandboxRecord, SandboxStatus, SnapshotRecord, VolumeRecord
from ..state.store import Store
from .spec import CreateRequest

__all__ = [
    "CAPACITY",
    "LIVE",
    "QUOTAS",
    "Admission",
    "Quotas",
    "TokenBucket",
    "Usage",
    "check_capacity",
    "check_disk",
    "check_timeout",
    "disk_used_mib",
    "sandbox_usage",
]

# Every quota a tenant may have, with its flag of `stockade tenant set`.
QUOTAS: dict[str, str] = {
    "max_sandboxes": "--max-sandboxes N",
    "max_cpu": "--max-cpu CORES",
    "max_memory": "--max-memory MIB",
    "max_disk": "--max-disk MIB",
    "creates_per_minute": "--creates-per-minute N",
    "max_timeout": "--max-timeout SECONDS",
}
# The quotas over live sandboxes: those that need the store counted and the tenant's lock.
CAPACITY = ("max_sandboxes", "max_cpu", "max_memory")
# The statuses of a sandbox that counts against its tenant's quotas.
LIVE = (SandboxStatus.STARTING, SandboxStatus.RUNNING, SandboxStatus.PAUSED)
_MIB = 1024 * 1024
# Sums of fractional cores are not exact (0.1 + 0.2 > 0.3): a hair of slack.
_EPSILON = 1e-9


def _no_limits(tenant: str) -> Mapping[str, float]:
    return {}


def _raise_it(tenant: str, quota: str) -> str:
    return f"ask the operator to raise it (stockade tenant set {tenant} {QUOTAS[quota]})"


def _n(value: float) -> str:
    return f"{value:g}"


# ----------------------------------------------------------------------------- arithmetic


@dataclass(frozen=True)
class Usage:
    """What a tenant's live sandboxes hold."""

    sandboxes: int = 0
    cpu: float = 0.0
    memory: int = 0

    def plus(self, count: int, cpu: float, memory: int) -> Usage:
        """This usage with ``count`` more sandboxes of ``cpu`` cores and ``memory`` MiB."""
        return Usage(self.sandboxes + count, self.cpu + count * cpu, self.memory + count * memory)


def sandbox_usage(records: Iterable[SandboxRecord], tenant: str) -> Usage:
    """What the live ones of ``records`` that belong to ``tenant`` hold."""
    mine = [r for r in records if r.tenant == tenant and r.status in LIVE]
    return Usage(len(mine), sum(r.cpu for r in mine), sum(r.memory for r in mine))


def disk_used_mib(
    snapshots: Iterable[SnapshotRecord], volumes: Iterable[VolumeRecord], tenant: str
) -> float:
    """MiB of ``tenant``'s snapshots (sizes in bytes) and volumes (sizes in MiB)."""
    snapped = sum(s.size for s in snapshots if s.tenant == tenant) / _MIB
    return snapped + sum(v.size for v in volumes if v.tenant == tenant)


def check_timeout(tenant: str, limits: Mapping[str, float], timeout: float) -> None:
    """Refuse a ``timeout`` (seconds) longer than the tenant's ``max_timeout``."""
    limit = limits.get("max_timeout")
    if limit is not None and timeout > limit:
        raise QuotaExceededError(
            f"timeout={_n(timeout)} is longer than tenant {tenant}'s max_timeout={_n(limit)} "
            f"seconds; ask for at most {_n(limit)}, or {_raise_it(tenant, 'max_timeout')}"
        )


def check_capacity(
    tenant: str,
    limits: Mapping[str, float],
    used: Usage,
    *,
    count: int = 1,
    cpu: float,
    memory: int,
) -> None:
    """Refuse ``count`` more sandboxes of ``cpu`` cores and ``memory`` MiB each when they
    would take the tenant, whose live sandboxes hold ``used``, past a limit."""
    after = used.plus(count, cpu, memory)
    more = "one more" if count == 1 else f"{count} more"
    fit = "does not fit" if count == 1 else "each, do not fit"
    limit = limits.get("max_sandboxes")
    if limit is not None and after.sandboxes > limit:
        these = "" if count == 1 else f", so {count} more do not fit"
        raise QuotaExceededError(
            f"tenant {tenant} has {used.sandboxes} live sandboxes of "
            f"max_sandboxes={_n(limit)}{these}; end one (stockade rm) or "
            f"{_raise_it(tenant, 'max_sandboxes')}"
        )
    limit = limits.get("max_cpu")
    if limit is not None and after.cpu > limit + _EPSILON:
        raise QuotaExceededError(
            f"tenant {tenant}'s live sandboxes use {used.cpu:.4g} cores of max_cpu="
            f"{_n(limit)}, so {more} with cpu={_n(cpu)} {fit}; end one (stockade rm), ask "
            f"for fewer cores, or {_raise_it(tenant, 'max_cpu')}"
        )
    limit = limits.get("max_memory")
    if limit is not None and after.memory > limit:
        raise QuotaExceededError(
            f"tenant {tenant}'s live sandboxes use {used.memory} MiB of max_memory="
            f"{_n(limit)} MiB, so {more} with memory={memory} {fit}; end one (stockade rm), "
            f"ask for less memory, or {_raise_it(tenant, 'max_memory')}"
        )


def check_disk(
    tenant: str, limits: Mapping[str, float], used_mib: float, adding_mib: float, what: str
) -> None:
    """Refuse ``what`` (``adding_mib`` more MiB) when it would take the tenant, whose
    snapshots and volumes hold ``used_mib``, past its ``max_disk``. With ``adding_mib`` 0
    (a snapshot, before its size is known): refuse when the tenant is at the limit."""
    limit = limits.get("max_disk")
    if limit is None:
        return
    over = used_mib + adding_mib > limit if adding_mib > 0 else used_mib >= limit
    if over:
        needs = f", and {what} needs {math.ceil(adding_mib)} MiB more" if adding_mib > 0 else ""
        raise QuotaExceededError(
            f"tenant {tenant}'s snapshots and volumes use {math.ceil(used_mib)} MiB of "
            f"max_disk={_n(limit)} MiB{needs}; delete some (stockade snapshot rm, stockade "
            f"volume rm) or {_raise_it(tenant, 'max_disk')}"
        )


class TokenBucket:
    """``rate`` creates a minute: holds up to ``rate`` tokens, refilled continuously.

    ``clock``: seconds from a monotonic clock (a fake one in tests).

    Example::

        bucket = TokenBucket(2, time.monotonic)
        assert bucket.take() == 0.0 and bucket.take() == 0.0
        wait = bucket.take()  # 30.0: the seconds until a token is back
    """

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = float(rate)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate / 60)
        self._at = now

    def set_rate(self, rate: float) -> None:
        """A changed quota: what the bucket holds stays, up to the new capacity."""
        self._refill()
        self.rate = rate
        self._tokens = min(self._tokens, float(rate))

    def take(self, count: int = 1) -> float:
        """Take ``count`` tokens and return 0.0; or take none and return the seconds until
        there are ``count`` (``count`` must be at most the rate, and the rate above 0)."""
        self._refill()
        if self._tokens + _EPSILON >= count:
            self._tokens = max(0.0, self._tokens - count)
            return 0.0
        return (count - self._tokens) * 60 / self.rate


# ----------------------------------------------------------------------------- the service


@dataclass
class Admission:
    """One create let in: the IDs its sandboxes will have (chosen ahead, so that its
    sandboxes are told from others in the store), counted against the tenant's quotas
    until the create ends."""

    tenant: str
    ids: list[str]
    cpu: float = 0.0
    memory: int = 0
    # The IDs its sandboxes may have: ``ids`` and any pooled sandbox it is handed.
    claimed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.claimed.update(self.ids)

    @property
    def count(self) -> int:
        return len(self.ids)

    def claim(self, sandbox_id: str) -> None:
        """A pooled sandbox (of another ID) is about to be handed out for this create."""
        self.claimed.add(sandbox_id)

    def request(self, req: CreateRequest) -> CreateRequest:
        """``req`` for this admission's (first) sandbox."""
        return replace(req, sandbox_id=self.ids[0])

    def pending(self, live_ids: set[str]) -> int:
        """How many of its sandboxes the store does not hold live yet."""
        return max(0, self.count - len(self.claimed & live_ids))


class Quotas:
    """Checks and counts what tenants make against their quotas (module docstring).

    ``limits``: a tenant's quotas by name (AccessService.quotas); ``store``: where what
    they hold is counted (None only for parts that no tenant has limits for: tests).
    """

    def __init__(
        self,
        store: Store | None = None,
        limits: Callable[[str], Mapping[str, float]] = _no_limits,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.limits = limits
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._disk_locks: dict[str, asyncio.Lock] = {}
        self._admitted: dict[str, list[Admission]] = {}

    def _store(self) -> Store:
        if self.store is None:
            raise RuntimeError("quotas counted without a store")
        return self.store

    # ------------------------------------------------------------------ sandboxes

    @contextlib.asynccontextmanager
    async def admit(
        self,
        tenant: str,
        *,
        count: int = 1,
        cpu: float,
        memory: int,
        timeout: float | None,
    ) -> AsyncIterator[Admission]:
        """Let ``count`` new sandboxes of ``tenant`` in, of ``cpu`` cores, ``memory`` MiB
        and ``timeout`` seconds each (None: not checked), or raise QuotaExceededError or
        RateLimitedError; they count until the block ends, which must make them (or fail).

        Example::

            async with quotas.admit("acme", cpu=1, memory=512, timeout=300) as admitted:
                record = await sandboxes.create(admitted.request(req))
        """
        admitted = Admission(tenant, [new_id("sb") for _ in range(count)], cpu, memory)
        limits = self.limits(tenant)
        if not limits:
            yield admitted
            return
        if timeout is not None:
            check_timeout(tenant, limits, timeout)
        if not any(q in limits for q in CAPACITY):
            self._take_tokens(tenant, limits, count)
            yield admitted
            return
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            used, live_ids = await self._usage(tenant)
            for other in self._admitted.get(tenant, []):
                used = used.plus(other.pending(live_ids), other.cpu, other.memory)
            check_capacity(tenant, limits, used, count=count, cpu=cpu, memory=memory)
            # Last: a create refused for another limit takes no token.
            self._take_tokens(tenant, limits, count)
            self._admitted.setdefault(tenant, []).append(admitted)
        try:
            yield admitted
        finally:
            mine = self._admitted[tenant]
            mine.remove(admitted)
            if not mine:
                del self._admitted[tenant]

    async def _usage(self, tenant: str) -> tuple[Usage, set[str]]:
        """What the tenant's live sandboxes hold, and their IDs."""
        store = self._store()
        # Per live status: ended sandboxes pile up in the store and must not cost a scan.
        records = [r for status in LIVE for r in await store.list_sandboxes(status)]
        mine = [r for r in records if r.tenant == tenant]
        return sandbox_usage(mine, tenant), {r.id for r in mine}

    def _take_tokens(self, tenant: str, limits: Mapping[str, float], count: int) -> None:
        rate = limits.get("creates_per_minute")
        if rate is None:
            return
        if rate <= 0:
            raise QuotaExceededError(
                f"tenant {tenant}'s creates_per_minute=0 lets it make no sandboxes; "
                f"{_raise_it(tenant, 'creates_per_minute')}"
            )
        if count > rate:
            raise QuotaExceededError(
                f"tenant {tenant}'s creates_per_minute={_n(rate)} never lets {count} "
                f"sandboxes be made at once; make fewer at a time, or "
                f"{_raise_it(tenant, 'creates_per_minute')}"
            )
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = TokenBucket(rate, self._clock)
        elif bucket.rate != rate:
            bucket.set_rate(rate)
        wait = bucket.take(count)
        if wait > 0:
            raise RateLimitedError(
                f"tenant {tenant} makes sandboxes faster than its creates_per_minute="
                f"{_n(rate)}; try again in {math.ceil(wait)} s, or "
                f"{_raise_it(tenant, 'creates_per_minute')}",
                retry_after=wait,
            )

    def check_timeout(self, tenant: str, timeout: float) -> None:
        """Refuse a ``set_timeout`` longer than the tenant's ``max_timeout``."""
        limits = self.limits(tenant)
        if limits:
            check_timeout(tenant, limits, timeout)

    # ------------------------------------------------------------------ disk

    async def disk_room(self, tenant: str, what: str) -> None:
        """Refuse ``what`` (a snapshot, whose size is not known yet) when the tenant's
        snapshots and volumes are at its ``max_disk`` already."""
        limits = self.limits(tenant)
        if "max_disk" in limits:
            check_disk(tenant, limits, await self._disk_used(tenant), 0, what)

    @contextlib.asynccontextmanager
    async def storing(self, tenant: str, adding_mib: float, what: str) -> AsyncIterator[None]:
        """Around making and recording ``what`` (a snapshot or volume of ``adding_mib``
        MiB): refuse it when it would take the tenant past its ``max_disk``; the tenant's
        other snapshots and volumes wait until the block ends, which must record it."""
        limits = self.limits(tenant)
        if "max_disk" not in limits:
            yield
            return
        async with self._disk_locks.setdefault(tenant, asyncio.Lock()):
            check_disk(tenant, limits, await self._disk_used(tenant), adding_mib, what)
            yield

    async def _disk_used(self, tenant: str) -> float:
        store = self._store()
        return disk_used_mib(await store.list_snapshots(), await store.list_volumes(), tenant)
