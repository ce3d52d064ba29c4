"""The REST API under /v1 (docs/api.md), plus health, readiness and metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from deepexec_sdk.types import (
    IDEMPOTENCY_HEADER,
    CancelRequest,
    ErrorEnvelope,
    JobStatus,
    JobSubmitRequest,
    LanguageListResponse,
    MCPCancelJobResponse,
    MCPJobEvent,
    MCPJobListResponse,
    MCPJobResponse,
    MCPJobStatusResponse,
    ModelListResponse,
)

from ..domain import JobFilter
from ..errors import Unavailable
from ..views import job_list_item
from ..web.asgi import scope_tenant
from ..web.services import Services
from .jobs import check_json_media, status_body, submit_body

BEARER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key: `Authorization: Bearer dxk_...`",
}


def declare_bearer_auth(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the API-key scheme to an OpenAPI ``schema`` and require it on every /v1 operation.
    Declared here rather than by a ``HTTPBearer`` dependency, which would cost every request
    an extra dependency to solve (≈18 µs of ≈170)."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = BEARER_SCHEME
    for path, operations in schema.get("paths", {}).items():
        if path.startswith(router.prefix + "/"):
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
    return schema


_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorEnvelope, "description": desc}
    for code, desc in {
        400: "Malformed request",
        401: "Missing or invalid API key",
        404: "No such job for this API key",
        409: "Conflicts with the job's state",
        413: "Body too large",
        415: "Body is not JSON",
        422: "Invalid job or parameters",
    }.items()
}


# Dependencies are ``async def`` even when they never await: FastAPI runs a plain ``def``
# dependency in a worker thread, two thread hops per request for nothing.
async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def tenant(request: Request) -> str:
    # Normally authenticated already, before the body was read (``middleware.ApiKeyMiddleware``).
    known = scope_tenant(request.scope)
    if known is not None:
        return known
    svc: Services = request.app.state.services
    return await svc.auth.tenant_for(request.headers.get("authorization"))


async def require_json(request: Request) -> None:
    check_json_media(request.headers.get("content-type"))


Tenant = Annotated[str, Depends(tenant)]
Svc = Annotated[Services, Depends(services)]

router = APIRouter(prefix="/v1", responses=_ERRORS)


@router.post(
    "/jobs",
    status_code=201,
    response_model=MCPJobResponse,
    dependencies=[Depends(require_json)],
    summary="Submit a job",
)
async def submit_job(
    body: JobSubmitRequest,
    tenant_id: Tenant,
    svc: Svc,
    idempotency_key: Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)] = None,
) -> Response:
    """Queue a job. With an `Idempotency-Key`, the same key always returns the same job."""
    # Answered by ``hot_routes.HotRoutes`` ahead of FastAPI: this route documents it (and
    # would answer, were HotRoutes not mounted).
    status, answer = await submit_body(svc, tenant_id, body, idempotency_key)
    return Response(answer, status_code=status, media_type="application/json")


@router.get("/jobs/{job_id}", response_model=MCPJobStatusResponse, summary="Get a job")
async def get_job(
    job_id: str,
    tenant_id: Tenant,
    svc: Svc,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=60,
            description="Hold the request until the job ends or this many "
            "seconds pass (long-poll).",
        ),
    ] = 0,
) -> Response:
    """A job's current state; with `wait`, returned as soon as the job is terminal."""
    # Answered by ``hot_routes.HotRoutes`` ahead of FastAPI when the query is empty or a plain
    # ``wait``: this route documents it and answers the rest (validation errors included).
    body = await status_body(svc, tenant_id, job_id, wait)
    return Response(body, media_type="application/json")


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=MCPCancelJobResponse,
    dependencies=[Depends(require_json)],
    summary="Cancel a job",
)
async def cancel_job(
    job_id: str, tenant_id: Tenant, svc: Svc, body: CancelRequest | None = None
) -> MCPCancelJobResponse:
    """Cancel a pending or running job; 409 if it already ended."""
    job = await svc.engine.cancel(tenant_id, job_id, body.reason if body else None)
    assert job.cancel_requested_at is not None
    return MCPCancelJobResponse(
        job_id=job.id, status=job.status, canceled_at=job.cancel_requested_at
    )


@router.get("/jobs", response_model=MCPJobListResponse, summary="List jobs")
async def list_jobs(
    tenant_id: Tenant,
    svc: Svc,
    status: JobStatus | None = None,
    tag: Annotated[list[str] | None, Query(max_length=32)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> MCPJobListResponse:
    """This API key's jobs, newest first, filtered by status, tags (all must match), name.
    Each is a summary without its result: `GET /v1/jobs/{job_id}` returns that."""
    flt = JobFilter(status=status, tags=tuple(tag or ()), name=name)
    jobs, next_cursor = await svc.engine.list_jobs(tenant_id, flt, limit, cursor)
    return MCPJobListResponse(jobs=[job_list_item(j) for j in jobs], next_cursor=next_cursor)


def _sse(event: MCPJobEvent) -> bytes:
    """One server-sent event. Made once per event for all of a job's streams
    (``SharedEvent.encoded``)."""
    if event.type == "status":
        payload = event.job.model_dump(mode="json") if event.job else {}
    elif event.type == "progress":
        payload = {"progress": event.progress, "message": event.message}
    else:
        payload = {"stream": event.stream, "text": event.text}
    return f"event: {event.type}\ndata: {json.dumps(payload)}\n\n".encode()


@router.get(
    "/jobs/{job_id}/events",
    summary="Stream a job's events (SSE)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "status, progress and output events",
        }
    },
)
async def job_events(job_id: str, tenant_id: Tenant, svc: Svc) -> StreamingResponse:
    """Server-sent events: the current status, then progress and output as they happen, and
    a final terminal status, after which the stream closes."""
    events = svc.engine.events(tenant_id, job_id)
    # 404 (no such job) or 429 (too many listeners) before the stream starts.
    first = await anext(events)

    async def stream() -> AsyncIterator[bytes]:
        try:
            event = first
            while True:
                yield b": keep-alive\n\n" if event is None else event.encoded(_sse)
                event = await anext(events)
        except StopAsyncIteration:
            return
        finally:
            await events.aclose()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/executors", summary="What this server runs")
async def executors(tenant_id: Tenant, svc: Svc) -> JSONResponse:
    """Job types with what each offers on this host (languages, models, sandbox checks)."""
    return JSONResponse(svc.engine.describe())


@router.get("/models", response_model=ModelListResponse, summary="Text generation models")
async def models(tenant_id: Tenant, svc: Svc) -> ModelListResponse:
    """Every model a `text_generation` job may name: whether it is usable now and, if not,
    what to set on the server (`hint`)."""
    described = svc.engine.describe().get("text_generation") or {}
    return ModelListResponse.model_validate(described)


@router.get("/languages", response_model=LanguageListResponse, summary="Code execution languages")
async def languages(tenant_id: Tenant, svc: Svc) -> LanguageListResponse:
    """The languages `code_execution` jobs can use on this server, with their versions."""
    described = svc.engine.describe().get("code_execution") or {}
    return LanguageListResponse(languages=described.get("languages") or [])


health = APIRouter()


@health.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@health.get(
    "/readyz",
    summary="Readiness: the database answers, the engine runs, and the queue is not full",
)
async def readyz(svc: Svc) -> dict[str, str]:
    if not svc.engine.ready:
        raise Unavailable("the engine is not running")
    try:
        await svc.store.ping()
        full = await svc.engine.quotas.queue_full()
    except Exception as exc:
        raise Unavailable(f"the database does not answer: {exc}") from exc
    if full is not None:
        raise Unavailable(full, type="queue_full")
    return {"status": "ready"}


@health.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(svc: Svc) -> Response:
    counts = await svc.store.count_by_status()
    for status in JobStatus:
        svc.metrics.jobs_by_status.labels(str(status)).set(counts.get(status, 0))
    usage = await svc.store.tenant_usage()
    svc.metrics.tenant_jobs.clear()  # a tenant with nothing queued or running drops out
    for tenant_id, used in usage.items():
        svc.metrics.tenant_jobs.labels(tenant_id, "PENDING").set(used.pending)
        svc.metrics.tenant_jobs.labels(tenant_id, "RUNNING").set(used.running)
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
