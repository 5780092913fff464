"""The audit log at the HTTP edge: the middleware that records every mutating call, the
entry an exec leaves, and ``GET /v1/audit``.

The tenant of an entry is the caller's (the operator's token: ``default``, with no key
ID): a tenant reads what its own keys did.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..service.access import Principal
from ..service.audit import AuditLog
from ..service.execs import ExecSession
from ..state.records import AuditRecord
from .deps import Caller, Services, services, tenant_scope
from .params import SandboxIdQ, TimeQ, parse_time

__all__ = ["AuditTrail", "exec_entry", "router"]

router = APIRouter(tags=["audit"])
Svc = Annotated[Services, Depends(services)]

_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# What of a caller's argv and path an entry keeps: enough to tell what ran, never a
# megabyte a caller chose (each read of the log loads its entries).
_MAX_ARGV_CHARS = 4096
_MAX_PATH_CHARS = 1024


def capped_argv(argv: list[str] | None) -> list[str] | None:
    """``argv`` with at most _MAX_ARGV_CHARS characters in all; what is cut is named."""
    if argv is None:
        return None
    out: list[str] = []
    left = _MAX_ARGV_CHARS
    for i, arg in enumerate(argv):
        if len(arg) > left:
            cut = sum(len(a) for a in argv[i:]) - left
            out.append(arg[:left] + f"…[{cut} more characters, {len(argv) - i - 1} more args]")
            break
        out.append(arg)
        left -= len(arg)
    return out


class AuditTrail:
    """Pure ASGI middleware: one audit entry for each mutating API call a caller made.

    Only calls whose credential was accepted are recorded (the tenant is known only then;
    refusals are the server log's). A handler that records a call itself (an exec, whose
    entry says more) sets ``request.state.audited``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in _READS
            or not scope["path"].startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        started, wall = time.perf_counter(), time.time()
        got = 0
        status = 500

        async def counted() -> Message:
            nonlocal got
            message = await receive()
            if message["type"] == "http.request":
                got += len(message.get("body", b""))
            return message

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, counted, watched)
        finally:
            state: dict[str, Any] = scope.get("state") or {}
            who = state.get("principal")
            log = _audit_log(scope)
            if isinstance(who, Principal) and log is not None and not state.get("audited"):
                sandbox = (scope.get("path_params") or {}).get("sandbox_id")
                log.record(
                    AuditRecord(
                        at=wall, tenant=who.tenant, kind="api", key_id=who.key_id,
                        request_id=state.get("request_id"), method=scope["method"],
                        path=scope["path"][:_MAX_PATH_CHARS], status=status,
                        argv=capped_argv(state.get("audit_argv")),
                        sandbox=sandbox or state.get("audit_sandbox"),
                        duration=time.perf_counter() - started, bytes_in=got,
                    )
                )  # fmt: skip


def _audit_log(scope: Scope) -> AuditLog | None:
    svc = getattr(getattr(scope.get("app"), "state", None), "services", None)
    log = getattr(svc, "audit", None)
    return log if isinstance(log, AuditLog) else None


def exec_entry(
    who: Principal,
    session: ExecSession,
    *,
    request_id: str | None,
    transport: str,
    duration: float,
) -> AuditRecord:
    """The audit entry of one exec, once it is over (its exit code: None if it never
    finished, e.g. its client left)."""
    return AuditRecord(
        at=session.started_at, tenant=who.tenant, kind="exec", key_id=who.key_id,
        request_id=request_id, method=transport, sandbox=session.sandbox_id,
        argv=capped_argv(session.argv), workdir=session.workdir[:_MAX_PATH_CHARS],
        user=session.user, duration=duration,
        exit_code=session.exit.exit_code if session.exit is not None else None,
        bytes_in=session.bytes_in, bytes_out=session.bytes_out,
    )  # fmt: skip


# ----------------------------------------------------------------------------- reading


class AuditEntry(BaseModel):
    seq: int
    at: str
    tenant: str
    kind: str
    key_id: str | None
    request_id: str | None
    method: str | None
    path: str | None
    status: int | None
    sandbox: str | None
    argv: list[str] | None
    workdir: str | None
    user: str | None
    duration: float
    exit_code: int | None
    bytes_in: int
    bytes_out: int

    @classmethod
    def of(cls, r: AuditRecord) -> AuditEntry:
        at = dt.datetime.fromtimestamp(r.at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return cls(
            seq=r.seq, at=at, tenant=r.tenant, kind=r.kind, key_id=r.key_id,
            request_id=r.request_id, method=r.method, path=r.path, status=r.status,
            sandbox=r.sandbox, argv=r.argv, workdir=r.workdir, user=r.user,
            duration=round(r.duration, 6), exit_code=r.exit_code, bytes_in=r.bytes_in,
            bytes_out=r.bytes_out,
        )  # fmt: skip


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next: int  # pass as `after` to read on from here (what `stockade audit --follow` does)


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    summary="Read the audit log, oldest first",
    description=(
        "Every mutating API call and every exec. A key reads only its own tenant's "
        "entries; the server's admin token reads every tenant's, or the one named."
    ),
)
async def read_audit(
    svc: Svc,
    caller: Caller,
    tenant: Annotated[str | None, Query(max_length=63, description="Only this tenant's.")] = None,
    sandbox: SandboxIdQ = None,
    since: TimeQ = None,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="Only entries after this `seq`.")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    scope = tenant_scope(caller, tenant)
    entries = await svc.audit.read(
        tenant=scope, sandbox=sandbox, since=parse_time("since", since), after=after, limit=limit
    )
    return AuditPage(
        entries=[AuditEntry.of(e) for e in entries],
        next=entries[-1].seq if entries else after,
    )
