"""`GET /api/v1/recommendations` and `POST /api/v1/recommendations/{id}/status`.

The status route answers 401 without a bearer token and 403 with a wrong one (when
ORCHESTRATOR_TOKEN is set; checked before the body is read), 413 for a body over 64 KiB, 422 for
a bad body, 404 for an unknown id, 409 for an illegal transition, and 200 with the row.
A database failure is 503 (`perf_pipelines.sidecar.errors`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from perf_pipelines.sidecar.dependencies import EngineDep
from perf_pipelines.sidecar.errors import DATABASE_DOWN, Responses, error_doc
from perf_pipelines.sidecar.security import require_orchestrator_token
from perf_pipelines.storage.recommendation_status import (
    IllegalTransition,
    RecommendationNotFound,
    list_recommendations,
    set_status,
)
from perf_pipelines.storage.schema import RECOMMENDATION_STATUSES

MAX_LIST_LIMIT = 1000
MAX_BODY_BYTES = 64 * 1024

RecommendationStatus = Literal["open", "superseded", "applied", "rejected", "expired"]
assert set(get_args(RecommendationStatus)) == set(RECOMMENDATION_STATUSES)


class StatusUpdate(BaseModel):
    """The orchestrator's answer to a recommendation."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["applied", "rejected"]
    note: str | None = Field(None, max_length=2000)


async def read_capped(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes before more of it is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, "request body too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, "request body too large")
    return bytes(body)


async def status_update(request: Request) -> StatusUpdate:
    """The body as a `StatusUpdate`, read with a cap; 422 without echoing the input.

    Read by hand rather than as a body parameter: FastAPI would read the whole body before the
    token is checked and without a cap.
    """
    body = await read_capped(request, MAX_BODY_BYTES)
    try:
        return StatusUpdate.model_validate_json(body)
    except ValidationError as exc:
        # Without the input: bytes that are not UTF-8 cannot be encoded into the 422 body
        # (a 500 before), and a body is not echoed back (it may quote a token).
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError(errors) from None


STATUS_RESPONSES: Responses = {
    401: error_doc("ORCHESTRATOR_TOKEN is set and no bearer token was sent"),
    403: error_doc("wrong bearer token"),
    404: error_doc("unknown recommendation id"),
    409: error_doc("the recommendation is no longer open"),
    413: error_doc("request body over 64 KiB"),
    **DATABASE_DOWN,
}

router = APIRouter(prefix="/api/v1")


@router.get("/recommendations", responses=DATABASE_DOWN)
def recommendations(
    engine: EngineDep,
    status: RecommendationStatus = "open",
    target: str | None = Query(None, max_length=128),
    limit: int = Query(100, ge=1, le=MAX_LIST_LIMIT),
) -> dict[str, Any]:
    """`open`: the newest open advice per (target, parameter); else the table by status."""
    with engine.connect() as connection:
        rows = list_recommendations(connection, status, target, limit)
    return {"status": status, "count": len(rows), "recommendations": rows}


@router.post(
    "/recommendations/{rec_id}/status",
    response_model=None,
    responses=STATUS_RESPONSES,
    # The token before the body: `status_update` runs after this one.
    dependencies=[Depends(require_orchestrator_token)],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": StatusUpdate.model_json_schema()}},
        }
    },
)
async def answer_recommendation(
    rec_id: str,
    engine: EngineDep,
    answer: Annotated[StatusUpdate, Depends(status_update)],
) -> dict[str, Any] | JSONResponse:
    """The orchestrator applied or rejected a recommendation."""

    def apply() -> dict[str, Any]:
        with engine.begin() as connection:
            return set_status(
                connection, rec_id, answer.status, datetime.now(UTC), note=answer.note
            )

    try:
        return await run_in_threadpool(apply)
    except RecommendationNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except IllegalTransition as exc:
        return JSONResponse(
            {
                "detail": str(exc),
                "current_status": exc.current,
                "requested_status": exc.requested,
            },
            status_code=409,
        )
