"""Warm pool routes: see and resize the pools of started sandboxes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ..service.pools import MAX_POOL_SIZE, PoolSpec
from ..service.spec import SandboxSpec
from .deps import Services, services
from .limits import DISK_RANGE, MEMORY_RANGE, MIN_CPU, check_create_ranges, cpu_limit
from .params import ImageNameP, documented

router = APIRouter(prefix="/v1/pools", tags=["pools"])
Svc = Annotated[Services, Depends(services)]


class PoolOut(BaseModel):
    image: str
    size: int = Field(description="How many sandboxes the pool keeps started.")
    ready: int = Field(description="How many are started and waiting now.")
    cpu: float
    memory: int
    disk: int


class SparesOut(BaseModel):
    """Boot resources made ahead of need for cold creates (service/boot_reserve.py)."""

    disks: int = Field(description="Mounted disks of the default size, ready now.")
    network_slots: int = Field(description="Network namespaces with rules, ready now.")
    target: int = Field(description="How many of each the server keeps ready.")


class PoolList(BaseModel):
    pools: list[PoolOut]
    spares: SparesOut


class PoolRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # PoolManager.set_size and check_create_ranges check these, naming the allowed range.
    size: int = Field(
        description="Sandboxes to keep started; 0 empties the pool.",
        json_schema_extra=documented(minimum=0, maximum=MAX_POOL_SIZE),
    )
    cpu: float = Field(
        SandboxSpec.cpu, json_schema_extra=documented(minimum=MIN_CPU, maximum=cpu_limit())
    )
    memory: int = Field(
        SandboxSpec.memory,
        json_schema_extra=documented(minimum=MEMORY_RANGE[0], maximum=MEMORY_RANGE[1]),
    )
    disk: int = Field(
        SandboxSpec.disk,
        json_schema_extra=documented(minimum=DISK_RANGE[0], maximum=DISK_RANGE[1]),
    )


@router.get("", response_model=PoolList, summary="List the warm pools")
async def list_pools(svc: Svc) -> PoolList:
    disks, slots = svc.sandboxes.reserve.ready
    return PoolList(
        pools=[PoolOut.model_validate(p) for p in svc.pools.status()],
        spares=SparesOut(disks=disks, network_slots=slots, target=svc.sandboxes.reserve.count),
    )


@router.put("/{image}", response_model=PoolOut, summary="Create or resize a warm pool")
async def set_pool(image: ImageNameP, body: PoolRequest, svc: Svc) -> PoolOut:
    svc.images.info(image)  # 404 naming the images
    # A pooled sandbox's timeout is the one of the create that takes it: not the pool's.
    check_create_ranges(body.cpu, body.memory, body.disk, SandboxSpec.timeout)
    svc.pools.set_size(PoolSpec(image, body.size, body.cpu, body.memory, body.disk))
    return next(PoolOut.model_validate(p) for p in svc.pools.status() if p["image"] == image)
