"""The job service: what every door (the REST API, MCP, the dashboard, the Piston and OpenAI
APIs, the CLI through the SDK) asks of the engine for a caller's tenant: submit, get, wait,
cancel, list, events, describe.

It runs no job: it validates and stores them, reads them back, and waits for their events,
which the workers publish (``events.JobEvents``). The store is the source of truth, so a
service may run in a process without workers (``deepexec serve --no-runners``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

from deepexec_sdk.types import JobStatus, JobSubmitRequest, MCPJobEvent

from ..domain import Job, JobFilter, JobSummary, utcnow
from ..errors import Conflict, ServiceError, Unavailable, Unprocessable, job_not_found
from ..store import decode_cursor, encode_cursor
from ..views import job_status
from .admission import admit
from .batches import STORE_RECHECK_SECONDS, BatchOps
from .events import SharedEvent, Subscription
from .outcomes import announce_end
from .webhook_ops import WebhookOps


class JobService(BatchOps, WebhookOps):
    """The engine as the doors see it (``Engine`` is this class)."""

    _started = False

    def open(self) -> None:
        """Start taking submissions (once the store is open and the executors started)."""
        self._started = True

    def close(self) -> None:
        """Refuse new submissions (``shutting_down``); reads go on."""
        self._stopping = True

    @property
    def ready(self) -> bool:
        return self._started and not self._stopping

    def describe(self) -> dict[str, Any]:
        return {t: e.describe() for t, e in self.executors.items()}

    async def submit(
        self,
        tenant_id: str,
        req: JobSubmitRequest,
        idempotency_key: str | None = None,
        *,
        webhook_format: str | None = None,
    ) -> tuple[Job, bool]:
        """Validate and store a job; returns ``(job, created)``. A replayed idempotency key
        returns the first job with ``created = False``. ``webhook_format``: see ``admit``."""
        if self._stopping:
            raise Unavailable("the server is shutting down", type="shutting_down")
        plain = req.model_dump(mode="json")
        new = await admit(
            self, tenant_id, req, idempotency_key, plain, webhook_format=webhook_format
        )
        fingerprint = new.fingerprint
        try:
            await self.quotas.admit(tenant_id, 1, [new.timeout])
        except ServiceError:
            # A retry of a submit that was stored (its answer lost) is answered with its job,
            # whatever the quotas say now.
            replayed = (
                None
                if idempotency_key is None
                else await self.store.job_for_key(tenant_id, idempotency_key)
            )
            if replayed is None:
                raise
            job, created = replayed, False
        else:
            try:
                job, created = await self.store.create_job(new, utcnow())
            except BaseException:
                self.quotas.returned(tenant_id, 1)
                raise
            if not created:
                self.quotas.returned(tenant_id, 1)
        if not created and job.fingerprint != fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new job",
                type="idempotency_conflict",
                details={"job_id": job.id},
            )
        if created:
            self.metrics.jobs_submitted.labels(job.job_type).inc()
            self.hub.notify_submitted(job.job_type)
        return job, created

    async def get(self, tenant_id: str, job_id: str) -> Job:
        job = await self.store.get_job(job_id, tenant_id)
        if job is None:
            raise job_not_found(job_id)
        return job

    async def status_json(self, tenant_id: str, job_id: str) -> tuple[bytes, bool]:
        """The job's status body and whether it is terminal (``Store.get_status_json``)."""
        found = await self.store.get_status_json(job_id, tenant_id)
        if found is None:
            raise job_not_found(job_id)
        return found

    async def wait(self, tenant_id: str, job_id: str, timeout: float) -> Job:
        """The job once it is terminal, or as it is after ``timeout`` seconds. Woken by the
        job's status changes only, never by its progress or output."""
        with self.hub.subscribe(job_id, tenant_id=tenant_id, statuses_only=True) as sub:
            job = await self.get(tenant_id, job_id)
            return await self._wait_terminal(job, sub, timeout)

    async def _wait_terminal(self, job: Job, sub: Subscription, timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        stale = False
        while not job.is_terminal:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            shared = await sub.get(min(remaining, STORE_RECHECK_SECONDS))
            if shared is not None and _not_an_end(shared.event):
                # The job started: nothing to answer yet. The store is read once it ends
                # (or at the deadline), not for every step on the way.
                stale = True
                continue
            refreshed = await self.store.get_job(job.id, job.tenant_id)
            if refreshed is None:  # deleted under us; report what we had
                return job
            job, stale = refreshed, False
        if stale:
            job = await self.store.get_job(job.id, job.tenant_id) or job
        return job

    async def cancel(self, tenant_id: str, job_id: str, reason: str | None) -> Job:
        """Cancel a job. Pending: CANCELED now. Running: the runner is told, and this waits up
        to ``cancel_wait_seconds`` for it to stop. Already ended: ``Conflict``."""
        if reason is not None and "\x00" in reason:
            raise Unprocessable(
                "the reason must not contain the NUL character (\\u0000)",
                details=[{"loc": ["body", "reason"], "msg": "contains U+0000"}],
            )
        now = utcnow()
        # Not counted against the tenant's listeners: a cancel must always get through.
        with self.hub.subscribe(job_id, statuses_only=True) as sub:
            job = await self.store.request_cancel(job_id, tenant_id, reason, now)
            if job is None:
                raise job_not_found(job_id)
            if job.is_terminal:
                if job.status == JobStatus.CANCELED and job.cancel_requested_at == now:
                    # It was pending: canceled by this very request.
                    announce_end(job, self.hub, self.metrics)
                    return job
                raise Conflict(
                    f"job {job_id} already ended ({job.status}); only PENDING or RUNNING "
                    "jobs can be canceled",
                    type="job_not_cancelable",
                    details={"status": str(job.status)},
                )
            self.hub.notify_cancel(job_id)
            return await self._wait_terminal(job, sub, self.settings.cancel_wait_seconds)

    async def list_jobs(
        self, tenant_id: str, flt: JobFilter, limit: int, cursor: str | None
    ) -> tuple[list[JobSummary], str | None]:
        after = None
        if cursor:
            try:
                after = decode_cursor(cursor)
            except ValueError:
                raise Unprocessable(
                    "invalid cursor: pass back the next_cursor of a previous page",
                    details=[{"loc": ["query", "cursor"], "msg": "invalid cursor"}],
                ) from None
        jobs = await self.store.list_jobs(tenant_id, flt, limit + 1, after)
        next_cursor = None
        if len(jobs) > limit:
            jobs = jobs[:limit]
            next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id)
        return jobs, next_cursor

    async def events(
        self, tenant_id: str, job_id: str, idle: float = 15.0
    ) -> AsyncGenerator[SharedEvent | None, None]:
        """The job's events: its current status first, then live events, ending with a
        terminal status. Yields None after ``idle`` seconds of silence (for keep-alives).
        The first step subscribes and reads the job: ``NotFound`` or ``TooManyRequests``
        come from it, before anything is yielded."""
        with self.hub.subscribe(job_id, tenant_id=tenant_id) as sub:
            # Taken with the subscription, before any await: what was published before it is
            # in the replay, what comes after reaches the subscription; nothing twice.
            replay = self.hub.replay(job_id)
            job = await self.get(tenant_id, job_id)
            yield SharedEvent(MCPJobEvent(type="status", job_id=job.id, job=job_status(job)))
            if not job.is_terminal:
                for event in replay:
                    yield SharedEvent(event)
            last_seen = time.monotonic()
            while not job.is_terminal:
                shared = await sub.get(min(idle, STORE_RECHECK_SECONDS))
                if shared is not None:
                    last_seen = time.monotonic()
                    yield shared
                    ended = shared.event.job
                    if shared.event.type == "status" and ended is not None and ended.is_terminal:
                        return
                    continue
                refreshed = await self.store.get_job(job.id, tenant_id)
                if refreshed is None:
                    return
                if refreshed.is_terminal or refreshed.status != job.status:
                    job = refreshed
                    status = MCPJobEvent(type="status", job_id=job.id, job=job_status(job))
                    yield SharedEvent(status)
                    continue
                if time.monotonic() - last_seen >= idle:
                    last_seen = time.monotonic()
                    yield None


def _not_an_end(event: MCPJobEvent) -> bool:
    """A status event that says the job is not over (it was claimed)."""
    return event.type == "status" and event.job is not None and not event.job.is_terminal
