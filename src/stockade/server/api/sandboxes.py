"""Sandbox lifecycle routes: thin wrappers over SandboxService, and Creator for a create."""

from __future__ import annotations

import contextlib
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from ...errors import InvalidArgumentError
from ..network.policy import NetworkPolicy
from ..service.access import Principal
from ..service.names import NAME_PATTERN, check_name, holds_name
from ..service.readiness import Readiness, wait_ready
from ..service.sandboxes import CreateRequest
from ..service.spec import SandboxSpec
from ..service.stages import collect
from ..service.users import check_user
from ..state.records import EndReason, SandboxRecord
from .deps import Caller, Services, services, tenant_scope
from .limits import MAX_PORTS as _MAX_PORTS
from .limits import TIMEOUT_RANGE, check_create_ranges, check_range
from .params import PortP, SandboxIdP, documented, documented_optional
from .schemas import (
    CreateSandbox,
    NetworkIn,
    PortIn,
    SandboxList,
    SandboxOut,
    SandboxPatch,
    TimeoutIn,
)

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])


Svc = Annotated[Services, Depends(services)]


def _parse_tags(tags: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in tags:
        key, sep, value = t.partition("=")
        if not sep or not key:
            raise InvalidArgumentError(f"tag filter {t!r} must look like key=value")
        out[key] = value
    return out


@router.post("", status_code=201, response_model=SandboxOut, summary="Create a sandbox")
async def create_sandbox(
    body: CreateSandbox, svc: Svc, caller: Caller, response: Response, request: Request
) -> SandboxOut:
    if isinstance(body.readiness, list):
        # A readiness command runs in the sandbox like an exec: the create's audit entry
        # names it.
        request.state.audit_argv = list(body.readiness)
    # Server-Timing says where the create's time went (make bench prints the breakdown).
    with collect() as stages:
        out = await _create(body, svc, caller)
    response.headers["Server-Timing"] = stages.header()
    request.state.audit_sandbox = out.id  # the audit entry names the sandbox it made
    return out


async def _create(body: CreateSandbox, svc: Svc, caller: Principal) -> SandboxOut:
    check_create_ranges(body.cpu, body.memory, body.disk, body.timeout)
    if body.idle_timeout is not None:
        check_range("idle_timeout", body.idle_timeout, *TIMEOUT_RANGE, " seconds")
    if body.workdir is not None and not body.workdir.startswith("/"):
        raise InvalidArgumentError(f"workdir {body.workdir!r} must be an absolute path")
    if body.image_entrypoint and body.entrypoint is not None:
        raise InvalidArgumentError("pass either entrypoint or image_entrypoint=True, not both")
    if body.entrypoint is not None and not body.entrypoint:
        raise InvalidArgumentError(
            "entrypoint must be a non-empty list, e.g. ['python3', 'app.py']"
        )
    # 404 naming the images, or 422 for a bad reference.
    svc.images.check(body.image, caller.tenant)
    # A key restores and mounts only what its tenant owns (the operator: anything).
    owner = None if caller.operator else caller.tenant
    if body.snapshot is not None and owner is not None:
        await svc.snapshots.get_owned(body.snapshot, owner)
    policy = NetworkPolicy.parse(
        block_network=body.block_network,
        outbound_cidr_allowlist=body.outbound_cidr_allowlist,
        outbound_domain_allowlist=body.outbound_domain_allowlist,
    )
    req = CreateRequest(
        image=body.image, cpu=body.cpu, memory=body.memory, disk=body.disk,
        timeout=body.timeout, env=body.env, workdir=body.workdir, tags=body.tags,
        entrypoint=body.entrypoint, policy=policy, ports=_ports(body.ports),
        image_entrypoint=body.image_entrypoint,
        volumes=(
            await svc.volumes.resolve_mounts(body.volumes, tenant=owner) if body.volumes else {}
        ),
        idle_timeout=body.idle_timeout or SandboxSpec.idle_timeout, on_timeout=body.on_timeout,
        auto_resume=body.auto_resume, tenant=caller.tenant,
        name=check_name(body.name) if body.name is not None else None,
        user=check_user(body.user) if body.user is not None else None,
    )  # fmt: skip
    readiness = None
    if body.readiness is not None:
        readiness = Readiness.parse(body.readiness, body.readiness_timeout)
    elif body.readiness_timeout is not None:
        raise InvalidArgumentError("readiness_timeout needs readiness (a port, URL or command)")
    record = await svc.creator.create(req, snapshot=body.snapshot)
    if readiness is not None:
        try:
            await wait_ready(svc.execs, record.id, readiness)
        except BaseException:
            # A create that fails (or whose caller went away) leaves no sandbox behind.
            with contextlib.suppress(Exception):
                await svc.sandboxes.terminate(record.id, reason=EndReason.ERROR)
            raise
        record = await svc.sandboxes.get(record.id)
    return _out(svc, record)


def _out(svc: Services, record: SandboxRecord) -> SandboxOut:
    return SandboxOut.of(record, svc.config.tunnel_domain)


def _ports(ports: list[int | PortIn]) -> list[tuple[int, bool]]:
    out: dict[int, bool] = {}
    for p in ports:
        port, public = (p, False) if isinstance(p, int) else (p.port, p.public)
        out[port] = public
    if len(out) > _MAX_PORTS:
        raise InvalidArgumentError(f"at most {_MAX_PORTS} exposed ports per sandbox")
    return sorted(out.items())


@router.put("/{sandbox_id}/network", response_model=SandboxOut, summary="Change the network policy")
async def set_network(sandbox_id: SandboxIdP, body: NetworkIn, svc: Svc) -> SandboxOut:
    policy = NetworkPolicy.parse(
        block_network=body.block_network,
        outbound_cidr_allowlist=body.outbound_cidr_allowlist,
        outbound_domain_allowlist=body.outbound_domain_allowlist,
    )
    return _out(svc, await svc.sandboxes.set_network(sandbox_id, policy))


@router.post("/{sandbox_id}/ports", response_model=SandboxOut, summary="Expose a port")
async def expose_port(sandbox_id: SandboxIdP, body: PortIn, svc: Svc) -> SandboxOut:
    record = await svc.sandboxes.get_running(sandbox_id)
    if len(record.ports) >= _MAX_PORTS and record.exposed(body.port) is None:
        raise InvalidArgumentError(f"at most {_MAX_PORTS} exposed ports per sandbox")
    return _out(svc, await svc.sandboxes.expose(sandbox_id, body.port, body.public))


@router.delete(
    "/{sandbox_id}/ports/{port}", response_model=SandboxOut, summary="Stop exposing a port"
)
async def unexpose_port(sandbox_id: SandboxIdP, port: PortP, svc: Svc) -> SandboxOut:
    return _out(svc, await svc.sandboxes.unexpose(sandbox_id, port))


@router.post(
    "/{sandbox_id}/timeout", response_model=SandboxOut, summary="End the sandbox N seconds from now"
)
async def set_timeout(sandbox_id: SandboxIdP, body: TimeoutIn, svc: Svc) -> SandboxOut:
    check_range("timeout", body.timeout, *TIMEOUT_RANGE, " seconds")
    # The sandbox's tenant's max_timeout, whoever asks.
    svc.quotas.check_timeout((await svc.sandboxes.get(sandbox_id)).tenant, body.timeout)
    return _out(svc, await svc.sandboxes.set_timeout(sandbox_id, body.timeout))


@router.get("", response_model=SandboxList, summary="List sandboxes")
async def list_sandboxes(
    svc: Svc,
    caller: Caller,
    status: Annotated[
        Literal["starting", "running", "paused", "terminated", "failed"] | None,
        Query(description="Only sandboxes in this status."),
    ] = None,
    tag: Annotated[
        list[str],
        Query(
            description="key=value; repeat to require several.",
            # _parse_tags answers a malformed one itself, quoting it.
            json_schema_extra=documented(items={"type": "string", "pattern": "^[^=]+="}),
        ),
    ] = [],  # noqa: B006
    name: Annotated[
        str | None,
        Query(
            description="Only the live sandbox with this name.",
            json_schema_extra=documented_optional(pattern=NAME_PATTERN),
        ),
    ] = None,
) -> SandboxList:
    records = await svc.sandboxes.list(status=status, tags=_parse_tags(tag))
    if name is not None:
        check_name(name)
        records = [r for r in records if r.name == name and holds_name(r)]
    return SandboxList(sandboxes=[_out(svc, r) for r in records if caller.sees(r.tenant)])


@router.get(
    "/by-name/{name}", response_model=SandboxOut, summary="Get a live sandbox by its name"
)
async def get_by_name(
    name: Annotated[
        str,
        Path(
            description="A name given at create; the caller's tenant's (the operator: "
            "`tenant`'s, default the default tenant's).",
            json_schema_extra=documented(pattern=NAME_PATTERN),
        ),
    ],
    svc: Svc,
    caller: Caller,
    tenant: Annotated[str | None, Query(description="Operator only.")] = None,
) -> SandboxOut:
    owner = tenant_scope(caller, tenant) or caller.tenant
    return _out(svc, await svc.creator.names.get(owner, name))


@router.patch("/{sandbox_id}", response_model=SandboxOut, summary="Change a sandbox's tags")
async def patch_sandbox(sandbox_id: SandboxIdP, body: SandboxPatch, svc: Svc) -> SandboxOut:
    if body.tags is None:
        raise InvalidArgumentError("nothing to change: give tags")
    return _out(svc, await svc.sandboxes.set_tags(sandbox_id, body.tags))


@router.get("/{sandbox_id}", response_model=SandboxOut, summary="Get a sandbox")
async def get_sandbox(sandbox_id: SandboxIdP, svc: Svc) -> SandboxOut:
    return _out(svc, await svc.sandboxes.get(sandbox_id))


@router.delete("/{sandbox_id}", response_model=SandboxOut, summary="Terminate a sandbox")
async def terminate_sandbox(sandbox_id: SandboxIdP, svc: Svc) -> SandboxOut:
    return _out(svc, await svc.sandboxes.terminate(sandbox_id))


@router.get(
    "/{sandbox_id}/logs",
    summary="The entrypoint's output",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
async def sandbox_logs(sandbox_id: SandboxIdP, svc: Svc, follow: bool = False) -> StreamingResponse:
    await svc.sandboxes.get(sandbox_id)  # a 404 before the stream starts
    # Chunks of the capped log files (the service never holds more than one at a time).
    chunks = svc.sandboxes.logs(sandbox_id, follow=follow)
    return StreamingResponse(chunks, media_type="text/plain; charset=utf-8")
