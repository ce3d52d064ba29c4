"""How a run's outcome becomes a job's end: its terminal status, and what of its result is
kept when the store refuses the whole of it."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from deepexec_sdk.types import JobStatus, MCPJobEvent

from ..domain import ErrorType, Job, JobError
from ..executors.base import Outcome
from ..metrics import Metrics
from ..views import job_status
from .events import JobEvents

#: Longest string of a result kept when the result as a whole could not be stored.
KEPT_TEXT_CHARS = 200


def decide_status(outcome: Outcome) -> JobStatus:
    """The terminal status an outcome maps to: canceled wins, then error, else success."""
    if outcome.canceled:
        return JobStatus.CANCELED
    if outcome.error is not None:
        return JobStatus.FAILED
    return JobStatus.COMPLETED


def clamp_progress(value: int | float | None) -> int | None:
    if value is None:
        return None
    return max(0, min(100, int(value)))


def storable_remainder(result: Mapping[str, Any] | None) -> dict[str, Any]:
    """What is safe to keep of a result the store refused: its top-level numbers, booleans,
    nulls and short strings that are valid Unicode (an exit code, timings, flags)."""
    kept: dict[str, Any] = {}
    for key, value in (result or {}).items():
        if not _clean_text(key):
            continue
        if _plain(value):
            kept[key] = value
    return kept


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and len(value) <= KEPT_TEXT_CHARS and _clean_text(value)


def _clean_text(text: str) -> bool:
    """Text every store can keep: encodable as UTF-8 (no lone surrogate) and without NUL."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def finish_attempts(outcome: Outcome) -> Iterator[Outcome]:
    """The outcome, then ever smaller ones the store can keep: a job must end even when its
    result cannot be stored (text that is not valid Unicode, a value the database refuses)."""
    yield outcome
    # The first error's type only: its message may hold the very text the store refused.
    ended = "" if outcome.error is None else f" (it had ended {outcome.error.type})"
    error = JobError(
        ErrorType.INTERNAL,
        f"the job's result could not be stored{ended}; only its plain fields are kept",
    )
    yield Outcome(storable_remainder(outcome.result), error)
    yield Outcome(None, JobError(ErrorType.INTERNAL, "the job's result could not be stored"))


def announce_end(job: Job, events: JobEvents, metrics: Metrics) -> None:
    """Count an ended job and tell its watchers (its terminal status)."""
    metrics.jobs_finished.labels(job.job_type, str(job.status)).inc()
    events.publish(MCPJobEvent(type="status", job_id=job.id, job=job_status(job)))
