"""``JobOps`` over a running DeepExec server through the SDK (``deepexec mcp`` over stdio).

The tenant is whatever the API key belongs to; the key and URL are resolved the SDK's way:
``DEEPEXEC_BASE_URL``/``DEEPEXEC_API_KEY``, then the local credentials file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from deepexec_sdk import DeepExecAsyncClient
from deepexec_sdk.errors import (
    DeepExecError,
    JobWaitTimeoutError,
    MCPAuthenticationError,
    MCPConflictError,
    MCPJobNotFoundError,
    MCPValidationError,
)
from deepexec_sdk.types import (
    JobStatus,
    JobSubmitRequest,
    MCPCancelJobResponse,
    MCPJobEvent,
    MCPJobListResponse,
    MCPJobResponse,
    MCPJobStatusResponse,
)

from .jobs import ErrorKind, HostOffer, JobOpsError, max_tokens

#: Longest single long-poll while waiting on a job (the server answers as soon as it ends).
POLL_SECONDS = 5.0


def error_kind(exc: DeepExecError) -> ErrorKind:
    """The transport-neutral kind of an SDK exception."""
    if isinstance(exc, MCPJobNotFoundError):
        return "not_found"
    if isinstance(exc, MCPConflictError):
        return "conflict"
    if isinstance(exc, MCPValidationError):
        return "invalid"
    if isinstance(exc, MCPAuthenticationError):
        return "unauthorized"
    return "unavailable"


def _refusal(exc: DeepExecError) -> JobOpsError:
    return JobOpsError(error_kind(exc), str(exc))


class ClientJobOps:
    """The SDK client's operations, in ``JobOps`` shape."""

    def __init__(self, client: DeepExecAsyncClient) -> None:
        self._client = client

    async def submit(self, request: JobSubmitRequest) -> MCPJobResponse:
        try:
            return await self._client.submit_mcp_job(
                name=request.name,
                job_type=request.job_type,
                data=request.data,
                timeout=request.timeout,
                priority=request.priority,
                tags=request.tags,
            )
        except DeepExecError as exc:
            raise _refusal(exc) from exc

    async def get(self, job_id: str) -> MCPJobStatusResponse:
        try:
            return await self._client.get_mcp_job_status(job_id)
        except DeepExecError as exc:
            raise _refusal(exc) from exc

    async def wait(self, job_id: str, timeout: float) -> MCPJobStatusResponse:
        try:
            return await self._client.wait_for_mcp_job_completion(
                job_id, poll_interval=POLL_SECONDS, max_wait_time=timeout
            )
        except JobWaitTimeoutError:
            return await self.get(job_id)
        except DeepExecError as exc:
            raise _refusal(exc) from exc

    async def cancel(self, job_id: str, reason: str | None) -> MCPCancelJobResponse:
        try:
            return await self._client.cancel_mcp_job(job_id, reason=reason)
        except DeepExecError as exc:
            raise _refusal(exc) from exc

    async def list(
        self,
        *,
        status: JobStatus | None,
        tags: list[str],
        name: str | None,
        limit: int,
        cursor: str | None,
    ) -> MCPJobListResponse:
        try:
            return await self._client.list_mcp_jobs(
                status=status, tags=tags or None, name=name, limit=limit, cursor=cursor
            )
        except DeepExecError as exc:
            raise _refusal(exc) from exc

    async def events(self, job_id: str) -> AsyncIterator[MCPJobEvent]:
        try:
            async for event in self._client.stream_mcp_job_events(job_id):
                yield event
        except DeepExecError as exc:
            raise _refusal(exc) from exc

    async def offer(self) -> HostOffer:
        # The server's longest timeout and limit maxima are not published: it refuses a
        # larger value by name.
        try:
            languages = await self._client.list_languages()
            models = await self._client.list_models()
        except DeepExecError as exc:
            raise _refusal(exc) from exc
        usable = [m for m in models.models if m.available]
        return HostOffer(
            languages=tuple(lang.name for lang in languages.languages),
            models=tuple(m.name for m in usable),
            max_tokens=max_tokens([m.context_length for m in usable]),
        )
