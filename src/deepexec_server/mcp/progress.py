"""From a job's events to MCP progress notifications and task status messages. Pure.

MCP requires each progress notification's ``progress`` to be larger than the last, while a
program may report the same percentage twice with new messages (or even go back). The tracker
keeps the sequence strictly increasing and below 100 until the job ends.
"""

from __future__ import annotations

import dataclasses

from deepexec_sdk.types import JobStatus, MCPJobEvent, MCPJobSummary

TOTAL = 100.0


@dataclasses.dataclass(frozen=True, slots=True)
class ProgressUpdate:
    """One ``notifications/progress``: ``progress`` out of ``TOTAL``, with a message."""

    progress: float
    message: str | None


def status_message(status: MCPJobSummary) -> str:
    """A one-line description of where a job is, e.g. ``running: 40% step 2/5``."""
    if status.status == JobStatus.PENDING:
        return "queued"
    if status.status == JobStatus.RUNNING:
        return _running(status.progress, status.progress_message)
    if status.status == JobStatus.FAILED and status.error is not None:
        return f"failed: {status.error.type}: {status.error.message}"
    return str(status.status).lower()


def _running(progress: int | None, message: str | None) -> str:
    text = "running"
    if progress is not None:
        text += f": {progress}%"
    if message:
        text += (" " if progress is not None else ": ") + message
    return text


class ProgressTracker:
    """Turns a job's events into strictly increasing progress updates (or nothing)."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._last_message: str | None = None

    def update(self, event: MCPJobEvent) -> ProgressUpdate | None:
        """The notification this event calls for, if any."""
        if event.type == "status" and event.job is not None:
            job = event.job
            if job.status == JobStatus.PENDING:
                return self._offer(0, "queued")
            if job.status == JobStatus.RUNNING:
                return self._offer(job.progress or 0, _running(job.progress, job.progress_message))
            return None  # terminal: the result itself follows
        if event.type == "progress":
            value = event.progress if event.progress is not None else (self._last or 0)
            return self._offer(value, _running(event.progress, event.message))
        return None

    def _offer(self, value: float, message: str) -> ProgressUpdate | None:
        value = min(float(value), TOTAL)
        last = self._last
        if last is not None and value <= last:
            if message == self._last_message:
                return None
            # Same or lower percentage but news: nudge forward, staying under the total.
            value = last + (TOTAL - last) / 1000
            if value <= last:
                return None
        self._last, self._last_message = value, message
        return ProgressUpdate(progress=value, message=message)
