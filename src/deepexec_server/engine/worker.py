"""The worker: claims jobs from the store by priority onto this process's runner slots, runs
them, renews their leases, reaps the jobs of runners that died, and purges old results.

Any number of workers may share a PostgreSQL store: claims are atomic, each running job holds
a lease its runner renews, and an expired lease means the runner died (the job ends FAILED,
``interrupted``). A worker publishes every change of its jobs on ``events.JobEvents``, where
the job service's watchers wait. ``run_until_idle`` is its burst mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

from deepexec_sdk.types import MCPJobEvent

from ..domain import ErrorType, Job, JobError, utcnow
from ..errors import StoreFull, StoreUnavailable
from ..executors.base import Outcome
from ..views import job_status
from .outcomes import announce_end, decide_status, finish_attempts
from .parts import EnginePart, EngineParts
from .running import RunContext

logger = logging.getLogger("deepexec_server.engine")

FAR_FUTURE = datetime(9999, 1, 1, tzinfo=utcnow().tzinfo)
#: Extra time the worker gives an executor past the job's timeout before it stops waiting.
EXECUTOR_GRACE_SECONDS = 5.0
#: Most results purged in one store call (one transaction); more go in further calls.
PURGE_BATCH = 200
#: How often an idle scheduler claims anyway, for jobs other processes sharing the store
#: submitted: without news from them (``JobEvents.pushes_between_processes`` false), and as a
#: safety net when they push their news.
SWEEP_SECONDS = 1.0
PUSHED_SWEEP_SECONDS = 15.0
#: Cancels remembered for jobs that do not run here (yet): see ``Worker.on_cancel_requested``.
EARLY_CANCELS_MAX = 1024
#: How long a finished job's end is kept and tried again while the store is unreachable or
#: full, before the job is left to be reaped as interrupted.
STORE_OUTAGE_S = 300.0


class Worker(EnginePart):
    def __init__(self, parts: EngineParts, *, exclusive_store: bool = False) -> None:
        """``exclusive_store``: this is the only process using the store (the embedded SQLite
        mode), so at start every RUNNING job is an orphan of a crash and is reaped at once
        instead of after its lease expires."""
        super().__init__(parts)
        self.exclusive_store = exclusive_store
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        self._running: dict[str, RunContext] = {}
        #: Cancels heard for jobs not running here, oldest first (bounded).
        self._early_cancels: dict[str, None] = {}
        self._wake = asyncio.Event()
        #: Set while the scheduler waits for a wake, having claimed all it could.
        self._parked = asyncio.Event()
        #: Job types that may have a job to claim: all of them until a claim finds none, then
        #: again once a job of the type is submitted here (or every second, for jobs that other
        #: processes sharing the store submitted). Spares a claim, a write transaction, for a
        #: type with nothing queued whenever another type's submit wakes the scheduler.
        self._claimable: set[str] = set(self.executors)
        self._share = parts.quotas.share_policy()
        #: Called with the ids of jobs whose results this worker purged (the API's cache).
        self.result_purge_listeners: list[Callable[[Sequence[str]], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._scheduling = False
        self._paused = False
        self._sweep_seconds = (
            PUSHED_SWEEP_SECONDS if self.hub.pushes_between_processes else SWEEP_SECONDS
        )
        self.hub.listen(self)

    # --- lifecycle ------------------------------------------------------------------------------

    async def reap_orphans(self) -> None:
        """End the jobs a crash left RUNNING: all of them on an exclusive store, else those
        whose lease has expired."""
        now = utcnow()
        cutoff = FAR_FUTURE if self.exclusive_store else now
        for job in await self.store.reap_running(cutoff, now):
            logger.warning(
                "job %s was running when the server stopped: FAILED (interrupted)", job.id
            )
            self._finished(job)

    def start(self, *, run_jobs: bool = True) -> None:
        """Start the loops: the scheduler, leases and purge if ``run_jobs``, and the reaper."""
        if run_jobs:
            self._scheduling = True
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
        self._scheduling = False
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

    def pause(self, paused: bool = True) -> None:
        """Stop (or resume) starting new jobs; running ones go on. For operators and benches."""
        self._paused = paused
        if not paused:
            self._wake.set()

    # --- notices from the service ---------------------------------------------------------------

    def on_submitted(self, job_type: str) -> None:
        self._claimable.add(job_type)
        self._wake.set()

    def on_cancel_requested(self, job_id: str) -> None:
        """Stop the job if it runs here. A cancel can cross the job's claim: asked once the
        claim committed (the claim's row said "not canceled") and heard before the run is
        registered here. So a cancel for a job not running here is remembered (the latest
        ``EARLY_CANCELS_MAX``) and ``_launch`` honours it; otherwise it would wait for the next
        lease renewal."""
        ctx = self._running.get(job_id)
        if ctx is not None:
            ctx.cancel_requested.set()
            return
        self._early_cancels[job_id] = None
        if len(self._early_cancels) > EARLY_CANCELS_MAX:
            del self._early_cancels[next(iter(self._early_cancels))]

    # --- burst mode -----------------------------------------------------------------------------

    async def settled(self) -> None:
        """Return once the scheduler has claimed all it can and waits for a wake."""
        if not self._scheduling:
            raise RuntimeError("the worker's scheduler is not running (start(run_jobs=True))")
        while True:
            await self._parked.wait()
            if not self._wake.is_set():
                return
            await asyncio.sleep(0)  # the scheduler has a wake to take first

    async def run_until_idle(self) -> None:
        """Run jobs until the queue is idle: none runs here, and a claim over every job type
        finds none pending (jobs of other processes sharing the store included). A paused
        worker is idle once its running jobs end."""
        swept = False
        while True:
            await self.settled()
            tasks = [ctx.task for ctx in self._running.values() if ctx.task is not None]
            if tasks:
                swept = False
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                continue
            if swept:
                return
            # Every type claimable again, as the once-a-second sweep does: a job another
            # process submitted counts too.
            self._claimable.update(self.executors)
            self._wake.set()
            swept = True

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
                        free, self.owner, self._lease_until(), utcnow(), self._share
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
            # A timeout scope, not ``wait_for``: Python 3.11's ``wait_for`` swallows a cancel
            # that lands as the wake does, and ``stop`` would wait for this loop forever.
            self._parked.set()
            try:
                async with asyncio.timeout(self._sweep_seconds):
                    await self._wake.wait()
            except TimeoutError:
                self._claimable.update(self.executors)
            finally:
                self._parked.clear()

    def _launch(self, job: Job) -> None:
        ctx = RunContext(job, self.settings, self.store, self.hub)
        self._running[job.id] = ctx
        if self._early_cancels.pop(job.id, False) is None:
            ctx.cancel_requested.set()
        self.metrics.running_jobs.labels(job.job_type).inc()
        if job.started_at is not None:
            waited = (job.started_at - job.created_at).total_seconds()
            self.metrics.job_queue_seconds.labels(job.job_type).observe(waited)
            self.metrics.tenant_queue_seconds.labels(job.tenant_id).observe(waited)
        self.hub.publish(MCPJobEvent(type="status", job_id=job.id, job=job_status(job)))
        ctx.task = asyncio.create_task(self._run(ctx), name=f"job-{job.id}")

    async def _run(self, ctx: RunContext) -> None:
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
            self.hub.run_ended(job.id)
            self.metrics.running_jobs.labels(job.job_type).dec()
            # A claim that found nothing while this job ran may have passed over its tenant
            # for its max_running quota: with this job ended, that tenant's next may start.
            self._claimable.add(job.job_type)
            self._wake.set()

    async def _finish(self, ctx: RunContext, outcome: Outcome, started: float) -> None:
        job = ctx.job
        await ctx.drain()
        finished: Job | None = None
        stored = False
        for attempt in finish_attempts(outcome):
            try:
                finished = await self._store_end(job, attempt)
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

    async def _store_end(self, job: Job, attempt: Outcome) -> Job | None:
        """``Store.finish_job`` for ``attempt``. While the database is unreachable or its disk
        is full, the same end is tried again, backing off, for up to ``STORE_OUTAGE_S`` (the
        job's lease renewed meanwhile, as its task lives): a job that ran is not reported
        interrupted because the store was away for a while."""
        deadline = time.monotonic() + STORE_OUTAGE_S
        pause = 0.5
        while True:
            try:
                return await asyncio.shield(
                    self.store.finish_job(
                        job.id,
                        self.owner,
                        decide_status(attempt),
                        attempt.result,
                        attempt.error,
                        utcnow(),
                    )
                )
            except (StoreUnavailable, StoreFull):
                if time.monotonic() + pause > deadline:
                    raise
                logger.warning("the store is away; job %s's end is kept to store later", job.id)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    def _finished(self, job: Job) -> None:
        announce_end(job, self.hub, self.metrics)

    async def _lease_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            await self._renew_leases()

    async def _renew_leases(self) -> None:
        """Renew the leases of the jobs running here; stop those canceled meanwhile."""
        # Only jobs whose run task is alive: a lease renewed for a task that ended would
        # keep its job RUNNING forever.
        live = [
            job_id
            for job_id, ctx in self._running.items()
            if ctx.task is None or not ctx.task.done()
        ]
        if not live:
            return
        try:
            canceled = await self.store.renew_leases(self.owner, live, self._lease_until())
        except Exception:
            logger.exception("could not renew job leases")
            return
        for job_id in canceled:  # canceled through another process sharing the store
            ctx = self._running.get(job_id)
            if ctx is not None:
                ctx.cancel_requested.set()

    async def resync(self) -> None:
        """After news from other processes may have been lost: claim (jobs submitted
        meanwhile) and stop the running jobs whose cancel was asked for meanwhile."""
        self._claimable.update(self.executors)
        self._wake.set()
        await self._renew_leases()

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
