"""Signed file URLs: minting them (behind the API key) and serving them (without it).

``GET /v1/sandboxes/{id}/files/download-url`` and ``POST …/files/upload-url`` mint a URL
for one path and one direction; ``GET``/``PUT /v1/signed/sandboxes/{id}/files?…`` serve
it. Those two take no bearer token: the signature is the credential, checked before
anything else (service/signed_urls.py), and then the key that minted the URL, which must
still be valid and hold the role the direction needs. Bodies stream both ways through the
same file service as the API's own file routes, never held whole; a transfer neither
resumes nor wakes the sandbox nor counts as its activity (the holder of a URL is not its
owner), and each one leaves an audit entry under the minting key.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictInt
from starlette.types import Message, Receive, Scope, Send

from ...errors import ForbiddenError, StockadeError
from ..service.access import Principal
from ..service.signed_urls import DEFAULT_EXPIRES_S, MAX_EXPIRES_S, UrlSigner
from ..state.records import AuditRecord
from .deps import Caller, Services, services
from .params import ABS_PATH, MAX_PATH, AbsPathQ, SandboxIdP, documented
from .schemas import FileInfoOut, _Strict

__all__ = ["router", "signed_router"]

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])
signed_router = APIRouter(prefix="/v1/signed/sandboxes/{sandbox_id}/files", tags=["files"])
Svc = Annotated[Services, Depends(services)]
ExpiresQ = Annotated[
    int,
    Query(ge=1, le=MAX_EXPIRES_S, description="Lifetime in seconds (1 s to 7 days)."),
]


class SignedUrl(BaseModel):
    url: str = Field(..., description="The whole URL, as this server was reached.")
    path: str = Field(..., description="The URL's path and query, to join to another base.")
    method: Literal["GET", "PUT"]
    expires_at: int = Field(..., description="Unix seconds after which the URL fails (410).")


class UploadUrlRequest(_Strict):
    path: str = Field(
        ..., description="Absolute path the URL may write (parents are created).",
        json_schema_extra=documented(pattern=ABS_PATH, maxLength=MAX_PATH),
    )  # fmt: skip
    expires: StrictInt = Field(
        DEFAULT_EXPIRES_S, ge=1, le=MAX_EXPIRES_S, description="Lifetime in seconds (≤ 7 days)."
    )


def _signer(svc: Services) -> UrlSigner:
    return UrlSigner.for_data_dir(svc.config.data_dir)


async def _mint(
    request: Request, svc: Svc, who: Principal, sandbox_id: str, path: str, op: str,
    expires: int,
) -> SignedUrl:  # fmt: skip
    # The URL is bound to the sandbox's tenant (the operator may mint one for any), and to
    # the key minting it: it stops working when that key does.
    record = await svc.sandboxes.get(sandbox_id)
    query, expires_at = _signer(svc).sign(
        sandbox_id, path, op, record.tenant, expires, key_id=who.key_id
    )
    relative = f"/v1/signed/sandboxes/{sandbox_id}/files?{query}"
    base = str(request.base_url).rstrip("/")
    method: Literal["GET", "PUT"] = "GET" if op == "download" else "PUT"
    return SignedUrl(url=base + relative, path=relative, method=method, expires_at=expires_at)


# A GET, so that a readonly key, which may read the file anyway, may share it too.
@router.get(
    "/download-url",
    response_model=SignedUrl,
    summary="A time-limited URL that downloads one file with no API key (GET)",
)
async def download_url(
    sandbox_id: SandboxIdP, path: AbsPathQ, request: Request, svc: Svc, who: Caller,
    expires: ExpiresQ = DEFAULT_EXPIRES_S,
) -> SignedUrl:  # fmt: skip
    return await _mint(request, svc, who, sandbox_id, path, "download", expires)


@router.post(
    "/upload-url",
    response_model=SignedUrl,
    summary="A time-limited URL that uploads one file with no API key (PUT)",
)
async def upload_url(
    sandbox_id: SandboxIdP, body: UploadUrlRequest, request: Request, svc: Svc, who: Caller
) -> SignedUrl:
    return await _mint(request, svc, who, sandbox_id, body.path, "upload", body.expires)


# The role a URL's minting key must still hold for each direction, as for the routes that
# mint them (a download URL: readonly; an upload URL: user).
_NEEDS = {"download": "readonly", "upload": "user"}
# What an audit entry keeps of the path (the route's path alone: never the query, whose
# signature would make the log a store of working URLs).
_MAX_PATH_CHARS = 1024


class _Use:
    """One use of a signed URL, known once its signature holds: who it stands for, and
    its audit entry, written once when it is over (:meth:`done`)."""

    def __init__(self, svc: Services, request: Request, who: Principal, sandbox_id: str):
        self.svc, self.request, self.who, self.sandbox_id = svc, request, who, sandbox_id
        self.at, self.started = time.time(), time.perf_counter()
        self.bytes_in = 0
        self._recorded = False

    def done(self, status: int, bytes_out: int = 0) -> None:
        if self._recorded:
            return
        self._recorded = True
        scope = self.request.scope
        self.svc.audit.record(
            AuditRecord(
                at=self.at, tenant=self.who.tenant, kind="api", key_id=self.who.key_id,
                request_id=(scope.get("state") or {}).get("request_id"),
                method=scope["method"], path=scope["path"][:_MAX_PATH_CHARS], status=status,
                sandbox=self.sandbox_id, duration=time.perf_counter() - self.started,
                bytes_in=self.bytes_in, bytes_out=bytes_out,
            )
        )  # fmt: skip


async def _granted(request: Request, svc: Services, sandbox_id: str, op: str) -> tuple[str, _Use]:
    """The path a signed URL grants ``op`` on, once its signature, direction and expiry
    hold, the key that minted it is still valid with the role ``op`` needs, and its
    tenant still owns the sandbox; and the use's audit entry to complete."""
    params = dict(request.query_params)
    grant = _signer(svc).verify(sandbox_id, params, op)
    # Refused as that key itself would be (not audited, as a wrong token is not) ...
    who = svc.access.holder(grant.key_id)
    use = _Use(svc, request, who, sandbox_id)
    try:
        # ... from here on the caller is known: refusals are audited too, as for a key.
        if not who.operator and who.tenant != grant.tenant:
            # Never minted so (a key mints only for its tenant's sandboxes): refuse anyway.
            raise ForbiddenError(f"this URL's key {who.key_id} is not of the URL's tenant")
        who.check(_NEEDS[op], f"using a signed {op} URL")
        await svc.sandboxes.check_owner(sandbox_id, grant.tenant)
    except StockadeError as err:
        use.done(err.status)
        raise
    return grant.path, use


class _AuditedStream(StreamingResponse):
    """A streamed answer that completes its use's audit entry once it is over: sent
    whole, cut by the client, or failed midway (with the bytes that went out)."""

    def __init__(self, content: AsyncIterator[bytes], on_done: Callable[[int, int], None]):
        super().__init__(content, media_type="application/octet-stream")
        self._on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0

        async def counted(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await super().__call__(scope, receive, counted)
        finally:
            self._on_done(self.status_code, sent)


@signed_router.get(
    "",
    summary="Download through a signed URL (no token: the signature is the credential)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def signed_download(sandbox_id: str, request: Request, svc: Svc) -> StreamingResponse:
    path, use = await _granted(request, svc, sandbox_id, "download")
    try:
        chunks = await svc.files.read(sandbox_id, path, activity=False)
    except StockadeError as err:
        use.done(err.status)
        raise
    except BaseException:
        use.done(500)
        raise
    return _AuditedStream(chunks, use.done)


@signed_router.put(
    "",
    response_model=FileInfoOut,
    summary="Upload through a signed URL (no token: the signature is the credential)",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        }
    },
)
async def signed_upload(sandbox_id: str, request: Request, svc: Svc) -> FileInfoOut:
    path, use = await _granted(request, svc, sandbox_id, "upload")

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                use.bytes_in += len(chunk)
                yield chunk

    status = 500
    try:
        info = await svc.files.write(sandbox_id, path, body(), activity=False)
        status = 200
    except StockadeError as err:
        status = err.status
        raise
    finally:
        use.done(status)
    return FileInfoOut.of(info)
