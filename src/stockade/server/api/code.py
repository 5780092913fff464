"""Code interpreter routes: run code in a kernel, and manage its contexts.

See docs/code-interpreter.md for the NDJSON events of a run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...errors import StockadeError
from ..service.code.kernel import LANGUAGES
from ..service.code.service import CodeContext
from . import ndjson
from .deps import Services, services
from .limits import check_range
from .params import ABS_PATH, CONTEXT_ID, ContextIdP, SandboxIdP, documented

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/code", tags=["code"])
Svc = Annotated[Services, Depends(services)]

_MAX_TIMEOUT = 86400.0
# Code is text typed or generated for one cell; the API's JSON body limit caps it too.
_MAX_CODE = 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# The code service checks the language and the working directory itself, with messages
# that list the languages or quote the path: the schema only states them.
_Language = Annotated[str, Field(json_schema_extra=documented(enum=list(LANGUAGES)))]


class RunCode(_Strict):
    code: str = Field(..., max_length=_MAX_CODE, description="The code of one cell.")
    language: _Language | None = Field(
        None, description="`python` or `bash`; default: the context's, else python."
    )
    # An ID that names no context is a 404, whatever its shape.
    context: Annotated[str, Field(json_schema_extra=documented(pattern=CONTEXT_ID))] | None = Field(
        None, description="A context ID (`ctx-…`); default: the language's."
    )
    timeout: (
        Annotated[float, Field(json_schema_extra=documented(minimum=0.001, maximum=_MAX_TIMEOUT))]
        | None
    ) = Field(None, description="Seconds; the cell is then interrupted (KeyboardInterrupt).")


class NewContext(_Strict):
    language: _Language = "python"
    workdir: Annotated[str, Field(json_schema_extra=documented(pattern=ABS_PATH))] | None = Field(
        None, description="The kernel's working directory (absolute); default: the sandbox's."
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_cwd(cls, data: Any) -> Any:
        # SDKs before the rename send "cwd" (null unless given): take it as workdir.
        if isinstance(data, dict) and "cwd" in data and "workdir" not in data:
            data = {**data, "workdir": data["cwd"]}
            del data["cwd"]
        return data


class ContextOut(BaseModel):
    id: str
    language: str
    workdir: str | None = Field(description="The kernel's working directory; null: the sandbox's.")
    default: bool
    status: Literal["starting", "idle", "busy", "dead"]


class ContextList(BaseModel):
    contexts: list[ContextOut]


def _out(ctx: CodeContext) -> ContextOut:
    return ContextOut.model_validate(ctx.to_json())


@router.post(
    "/run",
    summary="Run code in a stateful kernel, streaming its output as NDJSON events",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
async def run_code(sandbox_id: SandboxIdP, body: RunCode, svc: Svc) -> StreamingResponse:
    if body.timeout is not None:
        check_range("timeout", body.timeout, 0.001, _MAX_TIMEOUT, " seconds")
    ctx = await svc.code.prepare(sandbox_id, body.language, body.context)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for event in svc.code.run(ctx, body.code, timeout=body.timeout):
                yield ndjson.line(event)
        except StockadeError as err:
            # Headers are gone already: the error travels as the stream's last event.
            yield ndjson.line({"type": "error", **err.to_body()})

    return StreamingResponse(events(), media_type="application/x-ndjson")


@router.post("/contexts", status_code=201, response_model=ContextOut, summary="New context")
async def create_context(sandbox_id: SandboxIdP, body: NewContext, svc: Svc) -> ContextOut:
    return _out(await svc.code.create(sandbox_id, body.language, body.workdir))


@router.get("/contexts", response_model=ContextList, summary="List contexts")
async def list_contexts(sandbox_id: SandboxIdP, svc: Svc) -> ContextList:
    return ContextList(contexts=[_out(c) for c in await svc.code.list(sandbox_id)])


@router.post(
    "/contexts/{context_id}/restart",
    response_model=ContextOut,
    summary="Restart a context's kernel (its state is lost)",
)
async def restart_context(sandbox_id: SandboxIdP, context_id: ContextIdP, svc: Svc) -> ContextOut:
    return _out(await svc.code.restart(sandbox_id, context_id))


@router.delete(
    "/contexts/{context_id}", status_code=204, response_class=Response, summary="Remove context"
)
async def remove_context(sandbox_id: SandboxIdP, context_id: ContextIdP, svc: Svc) -> Response:
    await svc.code.remove(sandbox_id, context_id)
    return Response(status_code=204)
