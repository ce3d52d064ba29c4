"""Batches under /v1 (docs/api.md, "Batches"): submit many jobs in one request, then follow,
list, wait on and cancel them together; and wait on any set of jobs in one request."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from deepexec_sdk.types import (
    IDEMPOTENCY_HEADER,
    MAX_BATCH_JOBS,
    MAX_WAIT_SECONDS,
    BatchCancelRequest,
    BatchSubmitRequest,
    JobStatus,
    JobsWaitRequest,
    MCPBatchCancelResponse,
    MCPBatchResponse,
    MCPBatchStatusResponse,
    MCPJobListResponse,
    MCPJobsWaitResponse,
)

from ..views import batch_answer, batch_status, job_list_item, job_status
from .errors import validation_details, validation_failure
from .jobs import check_idempotency_key
from .routes import _ERRORS, Svc, Tenant, require_json

#: The path of a batch submit (the body cap may differ there: ``max_batch_body_bytes``).
BATCH_PATH = "/v1/jobs/batch"
_SCHEMA_REF = "#/components/schemas/{model}"
_BODY_REF = {"$ref": _SCHEMA_REF.format(model="BatchSubmitRequest")}
_BATCH_JSON = TypeAdapter(MCPBatchResponse)


class _Envelope(BaseModel):
    """A batch submit's body as the door reads it; the items are the engine's to check."""

    model_config = ConfigDict(extra="forbid")

    #: Anything: an item that is not even an object is named by the engine, as the others.
    jobs: list[Any] = Field(min_length=1, max_length=MAX_BATCH_JOBS)


_ENVELOPE = TypeAdapter(_Envelope)

router = APIRouter(prefix="/v1", responses=_ERRORS)


def parse_batch(body: bytes) -> list[Any]:
    """The items of a batch submit's body, each still to validate (by the engine, which
    names every bad item at once), or the 400/422 of a body that is not ``{"jobs": [...]}``
    with 1 to 1,000 objects."""
    try:
        return _ENVELOPE.validate_json(body or b"{}").jobs
    except ValidationError as exc:
        raise validation_failure(validation_details(exc.errors(), ("body",))) from None


def declare_batch_body(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the batch submit's body (read by the route itself) to an OpenAPI ``schema``."""
    body = BatchSubmitRequest.model_json_schema(ref_template=_SCHEMA_REF)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(body.pop("$defs", {}))
    components["BatchSubmitRequest"] = body
    return schema


@router.post(
    "/jobs/batch",
    status_code=201,
    response_model=MCPBatchResponse,
    dependencies=[Depends(require_json)],
    summary="Submit a batch of jobs",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": _SCHEMA_REF.format(model="BatchSubmitRequest")}
                }
            },
        }
    },
)
async def submit_batch(
    request: Request,
    tenant_id: Tenant,
    svc: Svc,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> Response:
    """Queue up to 1,000 jobs in one transaction, all or none: an invalid item is a 422
    listing every bad item and storing nothing. Each item may carry its own
    `idempotency_key`; the request's `Idempotency-Key` makes the whole batch idempotent.
    201 with the batch id and its jobs in request order; 200 for a replayed batch key."""
    check_idempotency_key(idempotency_key)
    items = parse_batch(await request.body())
    made = await svc.engine.submit_batch(tenant_id, items, idempotency_key)
    body = _BATCH_JSON.dump_json(batch_answer(made))
    return Response(body, status_code=200 if made.replayed else 201, media_type="application/json")


@router.post(
    "/jobs/wait",
    response_model=MCPJobsWaitResponse,
    dependencies=[Depends(require_json)],
    summary="Wait for any of many jobs",
)
async def wait_jobs(body: JobsWaitRequest, tenant_id: Tenant, svc: Svc) -> MCPJobsWaitResponse:
    """The named jobs that have ended, in full, as soon as one has (or after `wait`
    seconds), and the ids of the others; call again with those. An answer carries up to
    8 MiB of results: the rest stay in `pending` for the next call. 404 names an unknown id."""
    wait = min(body.wait, svc.settings.max_wait_seconds)
    jobs, pending = await svc.engine.wait_jobs(tenant_id, body.job_ids, wait)
    return MCPJobsWaitResponse(jobs=[job_status(j) for j in jobs], pending=pending)


@router.get("/batches/{batch_id}", response_model=MCPBatchStatusResponse, summary="Get a batch")
async def get_batch(
    batch_id: str,
    tenant_id: Tenant,
    svc: Svc,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Hold the request until every job of the batch has ended or this "
            "many seconds pass (long-poll).",
        ),
    ] = 0,
) -> MCPBatchStatusResponse:
    """The batch's progress: its jobs counted by status, and whether all have ended."""
    wait = min(wait, svc.settings.max_wait_seconds)
    return batch_status(*await svc.engine.batch_status(tenant_id, batch_id, wait))


@router.get(
    "/batches/{batch_id}/jobs", response_model=MCPJobListResponse, summary="List a batch's jobs"
)
async def list_batch_jobs(
    batch_id: str,
    tenant_id: Tenant,
    svc: Svc,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
) -> MCPJobListResponse:
    """The batch's jobs in request order (optionally of one status), as summaries without
    their results; `next_cursor` continues the page."""
    jobs, next_cursor = await svc.engine.list_batch_jobs(tenant_id, batch_id, status, limit, cursor)
    return MCPJobListResponse(jobs=[job_list_item(j) for j in jobs], next_cursor=next_cursor)


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=MCPBatchCancelResponse,
    dependencies=[Depends(require_json)],
    summary="Cancel a batch",
)
async def cancel_batch(
    batch_id: str, tenant_id: Tenant, svc: Svc, body: BatchCancelRequest | None = None
) -> MCPBatchCancelResponse:
    """Cancel every pending job of the batch and ask its running ones to stop (they end
    `CANCELED` shortly; wait on the batch to see them). Jobs that already ended keep their
    status. `canceled` counts the jobs this request changed."""
    reason = body.reason if body else None
    canceled, (batch, counts) = await svc.engine.cancel_batch(tenant_id, batch_id, reason)
    status = batch_status(batch, counts)
    return MCPBatchCancelResponse(**status.model_dump(), canceled=canceled)
