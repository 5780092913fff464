"""Signed file URLs: minting them (behind the API key) and serving them (without it).

``GET /v1/sandboxes/{id}/files/download-url`` and ``POST …/files/upload-url`` mint a URL
for one path and one direction; ``GET``/``PUT /v1/signed/sandboxes/{id}/files?…`` serve
it. Those two take no bearer token: the signature is the credential, checked before
anything else (service/signed_urls.py). Bodies stream both ways through the same file
service as the API's own file routes, never held whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictInt

from ..service.signed_urls import DEFAULT_EXPIRES_S, MAX_EXPIRES_S, UrlSigner
from .deps import Services, services
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
    request: Request, svc: Svc, sandbox_id: str, path: str, op: str, expires: int
) -> SignedUrl:
    # The URL is bound to the sandbox's tenant (the operator may mint one for any).
    record = await svc.sandboxes.get(sandbox_id)
    query, expires_at = _signer(svc).sign(sandbox_id, path, op, record.tenant, expires)
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
    sandbox_id: SandboxIdP, path: AbsPathQ, request: Request, svc: Svc,
    expires: ExpiresQ = DEFAULT_EXPIRES_S,
) -> SignedUrl:  # fmt: skip
    return await _mint(request, svc, sandbox_id, path, "download", expires)


@router.post(
    "/upload-url",
    response_model=SignedUrl,
    summary="A time-limited URL that uploads one file with no API key (PUT)",
)
async def upload_url(
    sandbox_id: SandboxIdP, body: UploadUrlRequest, request: Request, svc: Svc
) -> SignedUrl:
    return await _mint(request, svc, sandbox_id, body.path, "upload", body.expires)


async def _granted(request: Request, svc: Services, sandbox_id: str, op: str) -> str:
    """The path a signed URL grants ``op`` on, once its signature, direction and expiry
    hold and its tenant still owns the sandbox."""
    params = dict(request.query_params)
    grant = _signer(svc).verify(sandbox_id, params, op)
    await svc.sandboxes.check_owner(sandbox_id, grant.tenant)
    return grant.path


@signed_router.get(
    "",
    summary="Download through a signed URL (no token: the signature is the credential)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def signed_download(sandbox_id: str, request: Request, svc: Svc) -> StreamingResponse:
    path = await _granted(request, svc, sandbox_id, "download")
    chunks = await svc.files.read(sandbox_id, path)
    return StreamingResponse(chunks, media_type="application/octet-stream")


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
    path = await _granted(request, svc, sandbox_id, "upload")

    async def body() -> AsyncIterator[bytes]:
        async for chunk in request.stream():
            if chunk:
                yield chunk

    return FileInfoOut.of(await svc.files.write(sandbox_id, path, body()))
