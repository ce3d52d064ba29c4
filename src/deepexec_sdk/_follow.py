"""Following a job: the pacing of ``wait_for_mcp_job_completion`` and the state of an event
stream across reconnections. Pure: no I/O."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

import httpx
from pydantic import ValidationError

from ._requests import RequestSpec
from .errors import JobWaitTimeoutError, MCPConnectionError, MCPProtocolError
from .retry import RetryPolicy
from .streaming import ServerSentEvent, SSEDecoder
from .types import MAX_BATCH_JOBS, MCPJobEvent, MCPJobStatusResponse, MCPJobsWaitResponse

logger = logging.getLogger("deepexec_sdk")

#: The longest long-poll the server holds (``GET /v1/jobs/{id}?wait=S``, S <= 60).
MAX_LONG_POLL = 60.0
#: The server sends a keep-alive comment every 15 s on an event stream, so 60 s of silence
#: means a half-open connection: it is treated as a drop and the stream reconnects.
STREAM_READ_TIMEOUT: float | None = 60.0
#: Pauses before reopening a dropped event stream (how many times: the client's max_retries).
RECONNECT_POLICY = RetryPolicy()


# --- waiting ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WaitClock:
    """Paces ``wait_for_mcp_job_completion``. Times are ``time.monotonic()`` values.

    Each request is a long-poll that the server ends the moment the job is terminal, held for at
    most ``poll_interval`` (and never past the deadline): completion is seen at once, and
    ``poll_interval`` stays the longest gap between two looks at the job.
    """

    poll_interval: float
    max_wait_time: float | None
    started: float

    def __post_init__(self) -> None:
        if not 0 < self.poll_interval < math.inf:
            raise ValueError(
                f"poll_interval must be a finite number of seconds > 0, got {self.poll_interval!r}"
            )
        if self.max_wait_time is not None and not self.max_wait_time >= 0:
            raise ValueError(f"max_wait_time must be >= 0 or None, got {self.max_wait_time!r}")

    def remaining(self, now: float) -> float | None:
        if self.max_wait_time is None:
            return None
        return max(0.0, self.started + self.max_wait_time - now)

    def long_poll(self, now: float) -> float:
        """How long the next request asks the server to hold (``wait=``)."""
        hold = min(self.poll_interval, MAX_LONG_POLL)
        remaining = self.remaining(now)
        return hold if remaining is None else min(hold, remaining)

    def expired(self, now: float) -> bool:
        remaining = self.remaining(now)
        return remaining is not None and remaining <= 0

    def pause(self, sent: float, now: float) -> float:
        """Sleep before the next request. Zero after a full long-poll; the rest of the interval
        when the server answered early without the job ending (a server that does not hold)."""
        gap = self.poll_interval - (now - sent)
        remaining = self.remaining(now)
        if remaining is not None:
            gap = min(gap, remaining)
        return max(0.0, gap)

    def timeout_error(self, job_id: str, last: MCPJobStatusResponse) -> JobWaitTimeoutError:
        return JobWaitTimeoutError(
            f"job {job_id} did not finish within {self.max_wait_time} s "
            f"(last status {last.status})",
            job_id=job_id,
            last_status=last,
        )


@dataclasses.dataclass
class JobsWait:
    """Paces a wait on many jobs (``iter_mcp_jobs_as_completed``): each request names the
    jobs still pending (the first ``MAX_BATCH_JOBS`` of them) and long-polls until one has
    ended; an answer that brought ended jobs is followed at once by the next request."""

    pending: list[str]
    clock: WaitClock

    @property
    def done(self) -> bool:
        return not self.pending

    def next_ids(self) -> list[str]:
        return self.pending[:MAX_BATCH_JOBS]

    def take(self, answer: MCPJobsWaitResponse) -> list[MCPJobStatusResponse]:
        """The ended jobs of ``answer``, which are no longer pending."""
        ended = [job for job in answer.jobs if job.is_terminal]
        gone = {job.job_id for job in ended}
        self.pending = [i for i in self.pending if i not in gone]
        return ended

    def pause(self, brought: bool, sent: float, now: float) -> float:
        """Sleep before the next request; raises ``JobWaitTimeoutError`` past the deadline
        (only after an answer that brought nothing: ended jobs are always handed over)."""
        if brought or self.done:
            return 0.0
        if self.clock.expired(now):
            raise JobWaitTimeoutError(
                f"{len(self.pending)} job(s) did not finish within {self.clock.max_wait_time} s "
                f"(the first: {self.pending[0]})",
                job_id=self.pending[0],
                pending=list(self.pending),
            )
        return self.clock.pause(sent, now)


# --- event streams ----------------------------------------------------------------------------


def job_event(job_id: str, sse: ServerSentEvent) -> MCPJobEvent | None:
    """The SDK event for one SSE event, or None for an event type this SDK does not know."""
    if sse.event not in ("status", "progress", "output"):
        return None
    try:
        payload = json.loads(sse.data)
    except ValueError as exc:
        raise MCPProtocolError(
            f"event stream of job {job_id}: {sse.event} event data is not JSON: {sse.data[:200]!r}",
            error_type="invalid_event",
        ) from exc
    if not isinstance(payload, dict):
        raise MCPProtocolError(
            f"event stream of job {job_id}: {sse.event} event data is not a JSON object",
            error_type="invalid_event",
        )
    raw: dict[str, Any]
    if sse.event == "status":
        raw = {"type": "status", "job_id": payload.get("job_id", job_id), "job": payload}
    else:
        raw = {**payload, "type": sse.event, "job_id": job_id}
    try:
        return MCPJobEvent.model_validate(raw)
    except ValidationError as exc:
        raise MCPProtocolError(
            f"event stream of job {job_id}: invalid {sse.event} event: {exc.errors()[0]['msg']}",
            error_type="invalid_event",
        ) from exc


class EventStreamState:
    """Follows one ``stream_mcp_job_events`` call across reconnections.

    The stream ends after the terminal status event. A connection that closes or breaks before
    it is reopened (the server starts each stream with the current status) after a backoff, up
    to ``max_reconnects`` times in a row without news; output emitted while disconnected is
    lost, but the final status still carries the job's full result.
    """

    def __init__(self, job_id: str, spec: RequestSpec, max_reconnects: int) -> None:
        self.job_id = job_id
        self.spec = spec
        self.max_reconnects = max_reconnects
        self.done = False
        self._failures = 0
        self._decoder = SSEDecoder()
        self._events_on_connection = 0

    def connected(self) -> None:
        """A new connection is open: parse it from scratch."""
        self._decoder = SSEDecoder()
        self._events_on_connection = 0

    def feed(self, chunk: bytes) -> list[MCPJobEvent]:
        """The events completed by ``chunk``; none after the terminal status."""
        out: list[MCPJobEvent] = []
        for sse in self._decoder.feed(chunk):
            if self.done:
                break
            event = job_event(self.job_id, sse)
            if event is None:
                continue
            out.append(event)
            self._events_on_connection += 1
            if self._events_on_connection > 1:
                # More than the opening status: this connection made progress.
                self._failures = 0
            if event.type == "status" and event.job is not None and event.job.is_terminal:
                self.done = True
        return out

    def dropped(self, error: httpx.TransportError | None, *, jitter: float) -> float:
        """The connection ended before the terminal status: the delay before reconnecting.
        Raises ``MCPConnectionError`` once reconnections are exhausted."""
        self._decoder.flush()
        reason = f"broke ({type(error).__name__}: {error})" if error else "closed early"
        if self._failures >= self.max_reconnects:
            raise MCPConnectionError(
                f"the event stream of job {self.job_id} {reason} before the job ended, "
                f"{self._failures + 1} time(s) in a row; giving up",
                error_type="stream_interrupted",
            ) from error
        delay = RECONNECT_POLICY.backoff(self._failures, jitter=jitter)
        self._failures += 1
        logger.info(
            "event stream of job %s %s; reconnecting in %.2f s (%d/%d)",
            self.job_id,
            reason,
            delay,
            self._failures,
            self.max_reconnects,
        )
        return delay
