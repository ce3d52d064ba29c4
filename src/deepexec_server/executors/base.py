"""The executor seam: what the engine asks of anything that runs a job type.

An executor validates job data at submit time and runs a job when a runner claims it. The
outcome of a job is data (``Outcome``); an exception out of ``execute`` is a platform failure
and ends the job FAILED with ``error.type = "internal_error"``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from ..domain import JobError
from ..errors import DeepExecError


class JobDataError(DeepExecError, ValueError):
    """The job's ``data`` is invalid for its type. Becomes a 422 naming the problem.

    ``details`` is a list of ``{"loc": [...], "msg": "..."}`` items, like pydantic's.
    """

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class ModelUnavailableError(JobDataError):
    """A text job names a model that is unknown or not configured. 422 with what to set."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """How a job ended. ``canceled`` wins over ``error``; neither means COMPLETED."""

    result: dict[str, Any] | None
    error: JobError | None = None
    canceled: bool = False


class ExecutionContext(Protocol):
    """What a running job may see and do. Given to ``Executor.execute`` by the engine."""

    @property
    def job_id(self) -> str: ...

    @property
    def timeout(self) -> float:
        """The job's wall-clock limit in seconds, from when execution started."""

    @property
    def cancel_requested(self) -> asyncio.Event:
        """Set when the job is cancelled: stop promptly and return ``Outcome(canceled=True)``
        with whatever partial result there is."""

    def report_progress(self, progress: int | None, message: str | None = None) -> None:
        """Record progress 0-100 (clamped) and an optional message. Never blocks."""

    def emit_output(self, stream: str, text: str) -> None:
        """Publish a chunk of live output (``stdout``, ``stderr``, or ``text`` for generated
        tokens) as a job event. Never blocks; slow listeners lose chunks, not the job."""


class Executor(Protocol):
    """Runs one job type."""

    job_type: str

    async def start(self) -> None:
        """Prepare (probe the sandbox, find the model...). Called once at server start."""

    async def close(self) -> None:
        """Release resources; running jobs have already been stopped."""

    def validate(self, data: Mapping[str, Any], timeout: int) -> dict[str, Any]:
        """Check and normalise a submission's ``data``; raise ``JobDataError`` naming the
        problem. The returned dict is what gets stored and later executed."""

    async def admit(self, data: Mapping[str, Any]) -> None:
        """The submit-time checks of validated ``data`` that need to ask something (a model's
        tokenizer...); raise ``JobDataError`` naming the problem."""

    async def execute(self, data: dict[str, Any], ctx: ExecutionContext) -> Outcome:
        """Run the job to its end, its timeout, or its cancellation."""

    def describe(self) -> dict[str, Any]:
        """What this executor offers on this host (languages, models, sandbox mechanisms)."""
