"""Tenants and API keys: ``/v1/tenants`` (the operator's) and ``/v1/keys``."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from ..service.access import Principal
from ..state.records import KeyRecord, Role, TenantRecord
from .deps import Caller, Services, services
from .params import documented

router = APIRouter(tags=["access"])

Svc = Annotated[Services, Depends(services)]
_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
TenantP = Annotated[
    str,
    Path(description="A tenant's name.", json_schema_extra=documented(pattern=_NAME)),
]
KeyIdP = Annotated[
    str,
    Path(
        description="An API key's ID (`key-…`).",
        json_schema_extra=documented(pattern=r"^key-[0-9a-f]{16}$"),
    ),
]


class Quotas(BaseModel):
    """A tenant's limits; an absent or null one is no limit."""

    model_config = ConfigDict(extra="forbid")

    max_sandboxes: int | None = Field(None, ge=0, le=100_000, description="Live sandboxes.")
    max_cpu: float | None = Field(None, ge=0, le=100_000, description="Cores, all live sandboxes.")
    max_memory: int | None = Field(None, ge=0, le=1 << 30, description="MiB, all live sandboxes.")
    max_disk: int | None = Field(
        None, ge=0, le=1 << 40, description="MiB of snapshots and volumes."
    )
    creates_per_minute: int | None = Field(None, ge=0, le=100_000)
    max_timeout: float | None = Field(None, gt=0, le=30 * 86400, description="Seconds.")

    def given(self) -> dict[str, float | None]:
        """The limits the body names (null included: that one is removed)."""
        return {k: getattr(self, k) for k in self.model_fields_set}


class NewTenant(Quotas):
    name: str = Field(pattern=_NAME, max_length=63)


class TenantOut(BaseModel):
    name: str
    created_at: str
    quotas: dict[str, float]

    @classmethod
    def of(cls, r: TenantRecord) -> TenantOut:
        return cls(name=r.name, created_at=_iso(r.created_at), quotas=r.quotas)


class TenantList(BaseModel):
    tenants: list[TenantOut]


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(
        None, pattern=_NAME, max_length=63,
        description="The operator names it; a tenant admin's key makes keys of its own.",
    )  # fmt: skip
    role: Role = "user"
    name: str | None = Field(None, max_length=200)
    expires_in: float | None = Field(None, gt=0, le=10 * 365 * 86400, description="Seconds.")


class KeyOut(BaseModel):
    id: str
    tenant: str
    role: Role
    name: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None

    @classmethod
    def of(cls, r: KeyRecord) -> KeyOut:
        return cls(
            id=r.id, tenant=r.tenant, role=r.role, name=r.name, created_at=_iso(r.created_at),
            expires_at=_iso_or_none(r.expires_at), revoked_at=_iso_or_none(r.revoked_at),
        )  # fmt: skip


class CreatedKey(KeyOut):
    key: str = Field(description="The key itself: shown only in this answer.")


class KeyList(BaseModel):
    keys: list[KeyOut]


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_or_none(t: float | None) -> str | None:
    return None if t is None else _iso(t)


def _operator(caller: Principal, doing: str) -> None:
    caller.check("operator", doing)


# ----------------------------------------------------------------------------- tenants


@router.post("/v1/tenants", status_code=201, response_model=TenantOut, summary="New tenant")
async def create_tenant(body: NewTenant, svc: Svc, caller: Caller) -> TenantOut:
    _operator(caller, "creating a tenant")
    quotas = {k: v for k, v in body.given().items() if k != "name" and v is not None}
    return TenantOut.of(await svc.access.create_tenant(body.name, quotas))


@router.get("/v1/tenants", response_model=TenantList, summary="List tenants")
async def list_tenants(svc: Svc, caller: Caller) -> TenantList:
    _operator(caller, "listing tenants")
    return TenantList(tenants=[TenantOut.of(t) for t in await svc.access.tenants()])


@router.get("/v1/tenants/{name}", response_model=TenantOut, summary="Get a tenant")
async def get_tenant(name: TenantP, svc: Svc, caller: Caller) -> TenantOut:
    if name != caller.tenant:
        _operator(caller, "reading another tenant")
    return TenantOut.of(await svc.access.tenant(name))


@router.patch("/v1/tenants/{name}", response_model=TenantOut, summary="Change quotas")
async def set_quotas(name: TenantP, body: Quotas, svc: Svc, caller: Caller) -> TenantOut:
    _operator(caller, "changing a tenant's quotas")
    return TenantOut.of(await svc.access.set_quotas(name, body.given()))


@router.delete("/v1/tenants/{name}", status_code=204, summary="Remove a tenant")
async def delete_tenant(name: TenantP, svc: Svc, caller: Caller) -> Response:
    _operator(caller, "removing a tenant")
    await svc.access.delete_tenant(name)
    return Response(status_code=204)


# ----------------------------------------------------------------------------- keys


@router.post("/v1/keys", status_code=201, response_model=CreatedKey, summary="New API key")
async def create_key(body: NewKey, svc: Svc, caller: Caller) -> CreatedKey:
    tenant = body.tenant or caller.tenant
    if tenant != caller.tenant:
        _operator(caller, "making a key of another tenant")
    caller.check("admin", "making an API key")
    record, key = await svc.access.create_key(
        tenant, body.role, name=body.name, expires_in=body.expires_in
    )
    return CreatedKey(**KeyOut.of(record).model_dump(), key=key)


@router.get("/v1/keys", response_model=KeyList, summary="List API keys")
async def list_keys(
    svc: Svc,
    caller: Caller,
    tenant: Annotated[str | None, Query(pattern=_NAME, max_length=63)] = None,
) -> KeyList:
    caller.check("admin", "listing API keys")
    if tenant is not None and tenant != caller.tenant:
        _operator(caller, "listing another tenant's keys")
    scope = tenant if tenant is not None or caller.operator else caller.tenant
    return KeyList(keys=[KeyOut.of(k) for k in svc.access.keys(scope)])


@router.delete("/v1/keys/{key_id}", response_model=KeyOut, summary="Revoke an API key")
async def revoke_key(key_id: KeyIdP, svc: Svc, caller: Caller) -> KeyOut:
    caller.check("admin", "revoking an API key")
    tenant = None if caller.operator else caller.tenant
    return KeyOut.of(await svc.access.revoke_key(key_id, tenant=tenant))
