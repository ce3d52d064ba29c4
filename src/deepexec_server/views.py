"""Domain objects as wire models (the SDK's types): the one place that maps them."""

from __future__ import annotations

from typing import Any

from deepexec_sdk.types import (
    JobError as WireJobError,
)
from deepexec_sdk.types import (
    JobStatus,
    MCPBatchJob,
    MCPBatchResponse,
    MCPBatchStatusResponse,
    MCPJobResponse,
    MCPJobStatusResponse,
    MCPJobSummary,
    WebhookAttemptResponse,
    WebhookDeliveryResponse,
    WebhookEndpointResponse,
)

from .domain import (
    JOB_URLS_ID,
    Batch,
    CreatedBatch,
    Job,
    JobSummary,
    WebhookDelivery,
    WebhookEndpoint,
)


def _state(job: Job | JobSummary) -> dict[str, Any]:
    """The fields a job's status and its list item share. A COMPLETED job reports progress
    100 whatever its program last said."""
    return {
        "job_id": job.id,
        "name": job.name,
        "job_type": job.job_type,
        "status": job.status,
        "progress": 100 if job.status == JobStatus.COMPLETED else job.progress,
        "progress_message": job.progress_message,
        "error": WireJobError(type=job.error.type, message=job.error.message)
        if job.error
        else None,
        "tags": list(job.tags),
        "priority": job.priority,
        "timeout": job.timeout,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "updated_at": job.updated_at,
        "cancel_requested_at": job.cancel_requested_at,
        "cancel_reason": job.cancel_reason,
    }


def job_status(job: Job) -> MCPJobStatusResponse:
    """A job with its result, as its own URL shows it."""
    return MCPJobStatusResponse(
        **_state(job), result=job.result, result_purged_at=job.result_purged_at
    )


def job_list_item(job: JobSummary) -> MCPJobSummary:
    """A job as a list shows it: ``job_status`` without the result (the store did not read
    it)."""
    return MCPJobSummary(**_state(job))


def _summary(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status,
        "name": job.name,
        "job_type": job.job_type,
        "priority": job.priority,
        "timeout": job.timeout,
        "tags": list(job.tags),
        "created_at": job.created_at,
    }


def job_summary(job: Job) -> MCPJobResponse:
    return MCPJobResponse(**_summary(job))


def batch_answer(made: CreatedBatch) -> MCPBatchResponse:
    """A stored batch as its submit answers: its jobs in request order."""
    return MCPBatchResponse(
        batch_id=made.batch.id,
        created_at=made.batch.created_at,
        jobs=[
            MCPBatchJob(**_summary(job), created=created)
            for job, created in zip(made.jobs, made.created, strict=True)
        ],
    )


def batch_status(batch: Batch, counts: dict[JobStatus, int]) -> MCPBatchStatusResponse:
    """A batch's progress: its jobs counted by status."""
    finished = sum(n for status, n in counts.items() if status.is_terminal)
    total = sum(counts.values())
    return MCPBatchStatusResponse(
        batch_id=batch.id,
        created_at=batch.created_at,
        total=total,
        counts={status: counts.get(status, 0) for status in JobStatus},
        finished=finished,
        done=finished == total,
    )


def webhook_endpoint(
    endpoint: WebhookEndpoint, *, with_secret: bool = True
) -> WebhookEndpointResponse:
    """An endpoint as the API shows it; a list leaves its keys out."""
    return WebhookEndpointResponse(
        id=JOB_URLS_ID if endpoint.url is None else endpoint.id,
        url=endpoint.url,
        events=None if endpoint.events is None else list(endpoint.events),
        secret=endpoint.secret if with_secret else None,
        previous_secret=endpoint.previous_secret if with_secret else None,
        previous_until=endpoint.previous_until if with_secret else None,
        enabled=endpoint.disabled_at is None,
        disabled_at=endpoint.disabled_at,
        disabled_reason=endpoint.disabled_reason,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def webhook_delivery(delivery: WebhookDelivery) -> WebhookDeliveryResponse:
    """A delivery and its attempts, as the job's delivery log shows it."""
    return WebhookDeliveryResponse(
        id=delivery.id,
        url=delivery.url,
        endpoint_id=delivery.endpoint_id,
        event_type=delivery.event_type,
        state=delivery.state,
        attempts=[
            WebhookAttemptResponse(
                attempt=a.attempt,
                started_at=a.started_at,
                duration_ms=a.duration_ms,
                status_code=a.status_code,
                error=a.error,
            )
            for a in delivery.log
        ],
        next_attempt_at=delivery.next_attempt_at,
        delivered_at=delivery.delivered_at,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        created_at=delivery.created_at,
    )
