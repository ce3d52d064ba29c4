"""The job engine: accepts jobs, runs them in priority order on local runner slots, and tells
waiters the moment a job changes.

The store is the source of truth and owns the queue; the engine holds only what is live in this
process (running jobs' contexts and event subscribers). Any number of engines may share a
PostgreSQL store: claims are atomic, each running job holds a lease its runner renews, and an
expired lease means the runner died (the job ends FAILED, ``interrupted``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from deepexec_sdk.types import JobStatus, JobSubmitRequest, MCPJobEvent

from ..domain import (
    ErrorType,
    Job,
    JobError,
    JobFilter,
    JobSummary,
    NewJob,
    find_nul,
    utcnow,
)
from ..errors import Conflict, Unavailable, Unprocessable, job_not_found
from ..executors.base import Executor, JobDataError, ModelUnavailableError, Outcome
from ..metrics import Metrics
from ..settings import Settings
from ..store import Store
from ..store._codec import decode_cursor, encode_cursor
from ..views import job_status
from .hub import EventHub, SharedEvent, Subscription

logger = logging.getLogger("deepexec_server.engine")

FAR_FUTURE = datetime(9999, 1, 1, tzinfo=utcnow().tzinfo)
#: Extra time the engine gives an executor past the job's timeout before it stops waiting.
EXECUTOR_GRACE_SECONDS = 5.0
#: How often a waiter re-reads the store, in case the change happened in another process.
STORE_RECHECK_SECONDS = 2.0
#: Most results purged in one store call (one transaction); more go in further calls.
PURGE_BATCH = 200
#: Most output text held for listeners between two deliveries of a job's output.
OUTPUT_PENDING_MAX_CHARS = 256 * 1024
#: The latest output of a running job kept for watchers who arrive later (a dashboard page
#: opened while the job runs): they get it first, then the live output.
OUTPUT_REPLAY_MAX_CHARS = 64 * 1024


def decide_status(outcome: Outcome) -> JobStatus:
    """The terminal status an outcome maps to: canceled wins, then error, else success."""
    if outcome.canceled:
        return JobStatus.CANCELED
    if outcome.error is not None:
        return JobStatus.FAILED
    return JobStatus.COMPLETED


def request_fingerprint(req: JobSubmitRequest | dict[str, Any]) -> str:
    """A stable hash of a submission, to tell a retry from another request reusing its key.
    Takes the request or its ``model_dump(mode="json")``."""
    plain = req if isinstance(req, dict) else req.model_dump(mode="json")
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def clamp_progress(value: int | float | None) -> int | None:
    if value is None:
        return None
    return max(0, min(100, int(value)))


#: Longest string of a result kept when the result as a whole could not be stored.
KEPT_TEXT_CHARS = 200


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


def _finish_attempts(outcome: Outcome) -> Iterator[Outcome]:
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


class _RunContext:
    """The ``ExecutionContext`` a running job sees (executors/base.py).

    A program may report progress or print as fast as it can. What it reports is coalesced
    per job, the latest value winning: listeners get at most ``progress_events_per_second``
    progress events (and as many store writes) and ``output_events_per_second`` output events
    (adjacent chunks merged), and always the last value before the job's end. A report costs
    the caller a tuple assignment, so a flooding job cannot take the event loop from others.
    The last ``OUTPUT_REPLAY_MAX_CHARS`` of what was published are kept for late watchers.
    """

    def __init__(self, engine: Engine, job: Job) -> None:
        self._engine = engine
        self.job = job
        self._cancel = asyncio.Event()
        settings = engine.settings
        self._progress_interval = 1.0 / settings.progress_events_per_second
        self._output_interval = 1.0 / settings.output_events_per_second
        #: The latest progress reported and not yet delivered, and the last one delivered.
        self._pending_progress: tuple[int | None, str | None] | None = None
        self._delivered_progress: tuple[int | None, str | None] | None = None
        self._stored_progress: tuple[int | None, str | None] | None = None
        self._progress_task: asyncio.Task[None] | None = None
        #: Output not yet published, as ``[stream, text]`` runs of one stream each.
        self._pending_output: list[list[str]] = []
        self._pending_output_chars = 0
        self._output_task: asyncio.Task[None] | None = None
        #: The latest published output, as ``(stream, text)`` runs.
        self._replay: collections.deque[tuple[str, str]] = collections.deque()
        self._replay_chars = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def timeout(self) -> float:
        return float(self.job.timeout)

    @property
    def cancel_requested(self) -> asyncio.Event:
        return self._cancel

    # --- progress -------------------------------------------------------------------------------

    def report_progress(self, progress: int | None, message: str | None = None) -> None:
        if message is not None:
            message = message[:500]
        update = (clamp_progress(progress), message)
        if update == self._delivered_progress and self._pending_progress is None:
            return
        self._pending_progress = update
        if self._progress_task is None:
            self._progress_task = asyncio.get_running_loop().create_task(self._deliver_progress())

    async def _deliver_progress(self) -> None:
        # The first report goes out at once; then one per interval, the latest value.
        try:
            while self._pending_progress is not None:
                next_at = time.monotonic() + self._progress_interval
                await self._deliver_pending_progress()
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            self._progress_task = None

    async def _deliver_pending_progress(self) -> None:
        update, self._pending_progress = self._pending_progress, None
        if update is not None and update != self._delivered_progress:
            self._delivered_progress = update
            if self._engine.hub.has_subscribers(self.job.id):
                progress, message = update
                self._engine.hub.publish(
                    MCPJobEvent(
                        type="progress", job_id=self.job.id, progress=progress, message=message
                    )
                )
        await self._store_progress()

    async def _store_progress(self) -> None:
        update = self._delivered_progress
        if update is None or update == self._stored_progress:
            return
        try:
            await self._engine.store.set_progress(self.job.id, *update, utcnow())
        except Exception:
            logger.exception("could not record progress of job %s", self.job.id)
            return
        self._stored_progress = update

    # --- output ---------------------------------------------------------------------------------

    def emit_output(self, stream: str, text: str) -> None:
        if not text:
            return
        room = OUTPUT_PENDING_MAX_CHARS - self._pending_output_chars
        if room <= 0:
            return  # listeners lose chunks while the job outruns them; the result has all
        text = text[:room]
        self._pending_output_chars += len(text)
        if self._pending_output and self._pending_output[-1][0] == stream:
            self._pending_output[-1][1] += text
        else:
            self._pending_output.append([stream, text])
        if self._output_task is None:
            self._output_task = asyncio.get_running_loop().create_task(self._deliver_output())

    async def _deliver_output(self) -> None:
        try:
            while self._pending_output:
                self._publish_output()
                await asyncio.sleep(self._output_interval)
        finally:
            self._output_task = None

    def _publish_output(self) -> None:
        runs, self._pending_output = self._pending_output, []
        self._pending_output_chars = 0
        for stream, text in runs:
            self._engine.hub.publish(
                MCPJobEvent(type="output", job_id=self.job.id, stream=stream, text=text)
            )
            self._keep_for_replay(stream, text)

    def _keep_for_replay(self, stream: str, text: str) -> None:
        text = text[-OUTPUT_REPLAY_MAX_CHARS:]
        self._replay_chars += len(text)
        if self._replay and self._replay[-1][0] == stream:
            text = self._replay.pop()[1] + text  # one run per stream change
        self._replay.append((stream, text))
        while self._replay_chars > OUTPUT_REPLAY_MAX_CHARS:
            old_stream, old_text = self._replay.popleft()
            excess = self._replay_chars - OUTPUT_REPLAY_MAX_CHARS
            if excess < len(old_text):
                self._replay.appendleft((old_stream, old_text[excess:]))
                self._replay_chars -= excess
            else:
                self._replay_chars -= len(old_text)

    def replay(self) -> list[MCPJobEvent]:
        """The output published so far (its latest part), as output events."""
        return [
            MCPJobEvent(type="output", job_id=self.job.id, stream=stream, text=text)
            for stream, text in self._replay
        ]

    async def drain(self) -> None:
        """Stop the deliveries and hand over what is pending: the last output and progress
        reach listeners (and the store) before the job's end does."""
        for task in (self._progress_task, self._output_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._progress_task = self._output_task = None
        self._publish_output()
        await self._deliver_pending_progress()


class Engine:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        executors: Mapping[str, Executor],
        *,
        metrics: Metrics | None = None,
        exclusive_store: bool = False,
    ) -> None:
        """``exclusive_store``: this engine is the only one using the store (the embedded
        SQLite mode), so at start every RUNNING job is an orphan of a crash and is reaped at
        once instead of after its lease expires."""
        self.settings = settings
        self.store = store
        self.executors = dict(executors)
        self.metrics = metrics or Metrics()
        self.hub = EventHub(
            max_per_job=settings.max_subscribers_per_job,
            max_per_tenant=settings.max_subscribers_per_tenant,
        )
        self.exclusive_store = exclusive_store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._running: dict[str, _RunContext] = {}
        self._wake = asyncio.Event()
        #: Job types that may have a job to claim: all of them until a claim finds none, then
        #: again once a job of the type is submitted here (or every second, for jobs that other
        #: processes sharing the store submitted). Spares a claim, a write transaction, for a
        #: type with nothing queued whenever another type's submit wakes the scheduler.
        self._claimable: set[str] = set(self.executors)
        #: Called with the ids of jobs whose results this engine purged (the API's cache).
        self.result_purge_listeners: list[Callable[[Sequence[str]], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopping = False
        self._paused = False

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self, *, run_jobs: bool = True) -> None:
        now = utcnow()
        cutoff = FAR_FUTURE if self.exclusive_store else now
        for job in await self.store.reap_running(cutoff, now):
            logger.warning(
                "job %s was running when the server stopped: FAILED (interrupted)", job.id
            )
            self._finished(job)
        for executor in self.executors.values():
            await executor.start()
        self._started = True
        if run_jobs:
            self._tasks += [
                asyncio.create_task(self._schedule_loop(), name="deepexec-scheduler"),
                asyncio.create_task(self._lease_loop(), name="deepexec-leases"),
                asyncio.create_task(self._purge_loop(), name="deepexec-purge"),
            ]
        # Every server reaps, an API-only one too (the runner of a job may have died
        # elsewhere) and the embedded one as well: there a job whose run task ended without
        # storing its end (the store refused every write) is RUNNING with a lease nobody
        # renews, and only the reaper ends it.
        self._tasks.append(asyncio.create_task(self._reap_loop(), name="deepexec-reaper"))

    async def stop(self) -> None:
        """Stop claiming, stop every running job, and end them FAILED (``interrupted``)."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        running = list(self._running.values())
        for ctx in running:
            if ctx.task is not None:
                ctx.task.cancel()
        for ctx in running:
            if ctx.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ctx.task
        for executor in self.executors.values():
            with contextlib.suppress(Exception):
                await executor.close()

    def pause(self, paused: bool = True) -> None:
        """Stop (or resume) starting new jobs; running ones go on. For operators and benches."""
        self._paused = paused
        if not paused:
            self._wake.set()

    @property
    def ready(self) -> bool:
        return self._started and not self._stopping

    # --- API operations -------------------------------------------------------------------------

    async def submit(
        self, tenant_id: str, req: JobSubmitRequest, idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Validate and store a job; returns ``(job, created)``. A replayed idempotency key
        returns the first job with ``created = False``."""
        if self._stopping:
            raise Unavailable("the server is shutting down", type="shutting_down")
        plain = req.model_dump(mode="json")
        nul_at = find_nul(plain, ("body",))
        if nul_at is not None:
            raise Unprocessable(
                "strings must not contain the NUL character (\\u0000)",
                details=[{"loc": list(nul_at), "msg": "contains U+0000"}],
            )
        executor = self.executors.get(req.job_type)
        if executor is None:
            known = ", ".join(sorted(self.executors))
            raise Unprocessable(
                f"unknown job_type {req.job_type!r}; this server runs: {known}",
                type="unknown_job_type",
                details=[{"loc": ["body", "job_type"], "msg": f"must be one of: {known}"}],
            )
        if req.timeout > self.settings.max_timeout:
            raise Unprocessable(
                f"timeout {req.timeout} s is over this server's maximum of "
                f"{self.settings.max_timeout} s",
                details=[
                    {"loc": ["body", "timeout"], "msg": f"must be <= {self.settings.max_timeout}"}
                ],
            )
        try:
            data = executor.validate(req.data, req.timeout)
            await executor.admit(data)
        except JobDataError as exc:
            raise Unprocessable(
                exc.message,
                type="model_unavailable"
                if isinstance(exc, ModelUnavailableError)
                else "invalid_job_data",
                details=exc.details,
            ) from exc
        fingerprint = request_fingerprint(plain)
        new = NewJob(
            tenant_id=tenant_id,
            name=req.name,
            job_type=req.job_type,
            data=data,
            timeout=req.timeout,
            priority=req.priority,
            tags=tuple(dict.fromkeys(req.tags)),
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
        job, created = await self.store.create_job(new, utcnow())
        if not created and job.fingerprint != fingerprint:
            raise Conflict(
                "this Idempotency-Key was already used for a different request; "
                "use a new key for a new job",
                type="idempotency_conflict",
                details={"job_id": job.id},
            )
        if created:
            self.metrics.jobs_submitted.labels(job.job_type).inc()
            self._claimable.add(job.job_type)
            self._wake.set()
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
        while not job.is_terminal:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await sub.get(min(remaining, STORE_RECHECK_SECONDS))
            refreshed = await self.store.get_job(job.id, job.tenant_id)
            if refreshed is None:  # deleted under us; report what we had
                break
            job = refreshed
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
                    self._finished(job)  # it was pending: canceled by this very request
                    return job
                raise Conflict(
                    f"job {job_id} already ended ({job.status}); only PENDING or RUNNING "
                    "jobs can be canceled",
                    type="job_not_cancelable",
                    details={"status": str(job.status)},
                )
            ctx = self._running.get(job_id)
            if ctx is not None:
                ctx.cancel_requested.set()
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
            running = self._running.get(job_id)
            replay = running.replay() if running is not None else []
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

    # --- running jobs ---------------------------------------------------------------------------

    def _free_job_types(self) -> list[str]:
        busy: dict[str, int] = {}
        for ctx in self._running.values():
            busy[ctx.job.job_type] = busy.get(ctx.job.job_type, 0) + 1
        return [t for t in self.executors if busy.get(t, 0) < self.settings.concurrency.get(t, 1)]

    def _lease_until(self) -> datetime:
        return utcnow() + timedelta(seconds=self.settings.lease_seconds)

    def _claimable_free_types(self) -> list[str]:
        return [t for t in self._free_job_types() if t in self._claimable]

    async def _schedule_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                while not self._paused and (free := self._claimable_free_types()):
                    # Taken out before the claim: a submit that lands meanwhile puts its type
                    # back, so a claim that finds nothing cannot hide that job.
                    self._claimable.difference_update(free)
                    job = await self.store.claim_next(
                        free, self.owner, self._lease_until(), utcnow()
                    )
                    if job is None:
                        break
                    self._claimable.update(free)
                    self._launch(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("scheduler could not claim jobs; retrying")
                self._claimable.update(self.executors)
                await asyncio.sleep(1.0)
            # Woken by a submit or a finished job; the timeout catches jobs submitted through
            # another process sharing the store.
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except TimeoutError:
                self._claimable.update(self.executors)

    def _launch(self, job: Job) -> None:
        ctx = _RunContext(self, job)
        self._running[job.id] = ctx
        self.metrics.running_jobs.labels(job.job_type).inc()
        if job.started_at is not None:
            self.metrics.job_queue_seconds.labels(job.job_type).observe(
                (job.started_at - job.created_at).total_seconds()
            )
        self.hub.publish(MCPJobEvent(type="status", job_id=job.id, job=job_status(job)))
        ctx.task = asyncio.create_task(self._run(ctx), name=f"job-{job.id}")

    async def _run(self, ctx: _RunContext) -> None:
        job = ctx.job
        executor = self.executors[job.job_type]
        started = time.monotonic()
        outcome: Outcome
        try:
            if job.cancel_requested_at is not None:
                ctx.cancel_requested.set()
            try:
                outcome = await asyncio.wait_for(
                    executor.execute(job.data, ctx), job.timeout + EXECUTOR_GRACE_SECONDS
                )
            except TimeoutError:
                outcome = Outcome(
                    None, JobError(ErrorType.TIMEOUT, f"exceeded the {job.timeout} s time limit")
                )
            except asyncio.CancelledError:
                outcome = Outcome(
                    None,
                    JobError(
                        ErrorType.INTERRUPTED, "the server shut down while the job was running"
                    ),
                )
                await self._finish(ctx, outcome, started)
                raise
            except Exception as exc:
                logger.exception("executor %s failed on job %s", job.job_type, job.id)
                outcome = Outcome(
                    None, JobError(ErrorType.INTERNAL, f"the {job.job_type} executor failed: {exc}")
                )
            await self._finish(ctx, outcome, started)
        finally:
            self._running.pop(job.id, None)
            self.metrics.running_jobs.labels(job.job_type).dec()
            self._wake.set()

    async def _finish(self, ctx: _RunContext, outcome: Outcome, started: float) -> None:
        job = ctx.job
        await ctx.drain()
        finished: Job | None = None
        stored = False
        for attempt in _finish_attempts(outcome):
            try:
                finished = await asyncio.shield(
                    self.store.finish_job(
                        job.id,
                        self.owner,
                        decide_status(attempt),
                        attempt.result,
                        attempt.error,
                        utcnow(),
                    )
                )
            except Exception:
                logger.exception("could not store the end of job %s", job.id)
                continue
            stored = True
            break
        if not stored:
            # Nothing could be written: the lease, no longer renewed once this task ends,
            # expires and the reaper ends the job FAILED (interrupted).
            logger.error("job %s stays RUNNING until its lease expires and it is reaped", job.id)
            return
        if finished is None:
            logger.warning("job %s was reaped before its runner finished; result dropped", job.id)
            return
        self.metrics.job_duration.labels(job.job_type).observe(time.monotonic() - started)
        self._finished(finished)

    def _finished(self, job: Job) -> None:
        self.metrics.jobs_finished.labels(job.job_type, str(job.status)).inc()
        self.hub.publish(MCPJobEvent(type="status", job_id=job.id, job=job_status(job)))

    async def _lease_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            # Only jobs whose run task is alive: a lease renewed for a task that ended would
            # keep its job RUNNING forever.
            live = [
                job_id
                for job_id, ctx in self._running.items()
                if ctx.task is None or not ctx.task.done()
            ]
            if not live:
                continue
            try:
                canceled = await self.store.renew_leases(self.owner, live, self._lease_until())
            except Exception:
                logger.exception("could not renew job leases")
                continue
            for job_id in canceled:  # canceled through another process sharing the store
                ctx = self._running.get(job_id)
                if ctx is not None:
                    ctx.cancel_requested.set()

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds)
            try:
                for job in await self.store.reap_running(utcnow(), utcnow()):
                    logger.warning("job %s lost its runner: FAILED (interrupted)", job.id)
                    self._finished(job)
            except Exception:
                logger.exception("could not reap expired jobs")

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.purge_interval_seconds)
            try:
                await self.purge_results()
            except Exception:
                logger.exception("could not purge old results")

    async def purge_results(self) -> int:
        """Purge the results past ``result_retention``, then those over each tenant's
        ``tenant_result_bytes`` (oldest first), in batches; returns how many were purged."""
        settings = self.settings
        total = 0
        if settings.result_retention > 0:
            cutoff = utcnow() - timedelta(seconds=settings.result_retention)
            total += await self._purge_batches(
                lambda: self.store.purge_results_before(cutoff, utcnow(), PURGE_BATCH)
            )
        if settings.tenant_result_bytes > 0:
            total += await self._purge_batches(
                lambda: self.store.purge_results_over(
                    settings.tenant_result_bytes, utcnow(), PURGE_BATCH
                )
            )
        if total:
            logger.info("purged the results of %d finished jobs", total)
        return total

    async def _purge_batches(self, batch: Callable[[], Awaitable[list[str]]]) -> int:
        total = 0
        while True:
            ids = await batch()
            if ids:
                total += len(ids)
                for listener in self.result_purge_listeners:
                    listener(ids)
            if len(ids) < PURGE_BATCH:
                return total
            await asyncio.sleep(0)  # let requests in between batches

    def describe(self) -> dict[str, Any]:
        return {t: e.describe() for t, e in self.executors.items()}
