"""``JobOps`` over the in-process engine for one tenant: the MCP endpoint of ``deepexec serve``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from deepexec_sdk.types import (
    JobStatus,
    JobSubmitRequest,
    MCPCancelJobResponse,
    MCPJobEvent,
    MCPJobListResponse,
    MCPJobResponse,
    MCPJobStatusResponse,
)

from ..domain import JobFilter, utcnow
from ..engine import Engine
from ..errors import (
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    Unprocessable,
)
from ..views import job_list_item, job_status, job_summary
from .jobs import ErrorKind, HostOffer, JobOpsError, max_tokens


def error_kind(exc: ServiceError) -> ErrorKind:
    """The transport-neutral kind of an engine refusal."""
    if isinstance(exc, NotFound):
        return "not_found"
    if isinstance(exc, Conflict):
        return "conflict"
    if isinstance(exc, Unauthorized):
        return "unauthorized"
    if isinstance(exc, BadRequest | Unprocessable | PayloadTooLarge):
        return "invalid"
    return "unavailable"  # Unavailable, and any server fault: try again later


class EngineJobOps:
    """The engine's operations with the caller's tenant bound in."""

    def __init__(self, engine: Engine, tenant_id: str) -> None:
        self._engine = engine
        self.tenant_id = tenant_id

    async def submit(self, request: JobSubmitRequest) -> MCPJobResponse:
        try:
            job, _ = await self._engine.submit(self.tenant_id, request, None)
        except ServiceError as exc:
            raise JobOpsError(error_kind(exc), exc.message) from exc
        return job_summary(job)

    async def get(self, job_id: str) -> MCPJobStatusResponse:
        try:
            return job_status(await self._engine.get(self.tenant_id, job_id))
        except ServiceError as exc:
            raise JobOpsError(error_kind(exc), exc.message) from exc

    async def wait(self, job_id: str, timeout: float) -> MCPJobStatusResponse:
        try:
            return job_status(await self._engine.wait(self.tenant_id, job_id, timeout))
        except ServiceError as exc:
            raise JobOpsError(error_kind(exc), exc.message) from exc

    async def cancel(self, job_id: str, reason: str | None) -> MCPCancelJobResponse:
        try:
            job = await self._engine.cancel(self.tenant_id, job_id, reason)
        except ServiceError as exc:
            raise JobOpsError(error_kind(exc), exc.message) from exc
        return MCPCancelJobResponse(
            job_id=job.id, status=job.status, canceled_at=job.cancel_requested_at or utcnow()
        )

    async def list(
        self,
        *,
        status: JobStatus | None,
        tags: list[str],
        name: str | None,
        limit: int,
        cursor: str | None,
    ) -> MCPJobListResponse:
        flt = JobFilter(status=status, tags=tuple(tags), name=name)
        try:
            jobs, next_cursor = await self._engine.list_jobs(self.tenant_id, flt, limit, cursor)
        except ServiceError as exc:
            raise JobOpsError(error_kind(exc), exc.message) from exc
        return MCPJobListResponse(jobs=[job_list_item(j) for j in jobs], next_cursor=next_cursor)

    async def events(self, job_id: str) -> AsyncIterator[MCPJobEvent]:
        try:
            async for shared in self._engine.events(self.tenant_id, job_id):
                if shared is not None:  # None is the engine's keep-alive tick
                    yield shared.event
        except ServiceError as exc:
            raise JobOpsError(error_kind(exc), exc.message) from exc

    async def offer(self) -> HostOffer:
        described = self._engine.describe()
        code = described.get("code_execution") or {}
        text = described.get("text_generation") or {}
        models = [m for m in text.get("models") or () if m.get("available")]
        return HostOffer(
            languages=tuple(lang["name"] for lang in code.get("languages") or ()),
            models=tuple(m["name"] for m in models),
            max_timeout=self._engine.settings.max_timeout,
            max_tokens=max_tokens([m.get("context_length") for m in models]),
            limit_maxima=tuple(sorted((code.get("limits") or {}).get("max", {}).items())),
        )
