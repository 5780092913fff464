"""``GET /v1/usage``: what each tenant used over a window, to bill from (service/usage.py)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from ..state.records import UsageRecord
from .deps import Caller, Services, services, tenant_scope
from .params import TimeQ, parse_time

__all__ = ["router"]

router = APIRouter(tags=["usage"])
Svc = Annotated[Services, Depends(services)]


class TenantUsage(BaseModel):
    tenant: str
    sandbox_seconds: float = Field(description="Wall time its sandboxes ran.")
    cpu_seconds: float = Field(description="CPU time the host charged to its sandboxes.")
    memory_gib_seconds: float = Field(description="Memory limit (GiB) × time it ran.")
    snapshot_gib_hours: float = Field(description="Snapshot size on disk (GiB) × time kept.")
    volume_gib_hours: float = Field(description="Volume size (GiB) × time kept.")
    execs: int = Field(description="Commands run in its sandboxes.")

    @classmethod
    def of(cls, r: UsageRecord) -> TenantUsage:
        return cls(
            tenant=r.tenant, sandbox_seconds=r.sandbox_seconds, cpu_seconds=r.cpu_seconds,
            memory_gib_seconds=r.memory_gib_seconds, snapshot_gib_hours=r.snapshot_gib_hours,
            volume_gib_hours=r.volume_gib_hours, execs=r.execs,
        )  # fmt: skip


class UsageOut(BaseModel):
    since: str = Field(description="The start of the first minute counted.")
    until: str
    tenants: list[TenantUsage]


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@router.get(
    "/v1/usage",
    response_model=UsageOut,
    summary="What each tenant used over a window",
    description=(
        "Per tenant: sandbox, CPU and memory time, snapshot and volume storage, and execs, "
        "summed over the whole minutes that start in [since, until). `since` defaults to "
        "the start of this month (UTC), `until` to now. A key reads only its own tenant's "
        "usage; the server's admin token reads every tenant's, or the one named."
    ),
)
async def read_usage(
    svc: Svc,
    caller: Caller,
    tenant: Annotated[str | None, Query(max_length=63, description="Only this tenant's.")] = None,
    since: TimeQ = None,
    until: TimeQ = None,
) -> UsageOut:
    report = await svc.usage.usage(
        tenant_scope(caller, tenant), parse_time("since", since), parse_time("until", until)
    )
    return UsageOut(
        since=_iso(report.since),
        until=_iso(report.until),
        tenants=[TenantUsage.of(r) for r in report.tenants],
    )
