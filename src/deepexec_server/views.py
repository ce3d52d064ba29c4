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
)

from .domain import Batch, CreatedBatch, Job, JobSummary


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
