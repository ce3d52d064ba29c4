"""In-process fan-out of job events, so waiters are woken by a state change, not by polling.

Each subscriber has a bounded queue. A slow subscriber loses output chunks, never a status
event: when its queue is full, the oldest event is dropped to make room for a status.

A subscriber that only waits for the job to end (a long-poll, a cancel) asks for status events
alone: progress and output never wake it. Every event is published once, as one
``SharedEvent`` that all subscribers receive, so its wire encoding is made once whatever the
number of listeners. Subscribers are capped per job and per tenant (``TooManyRequests``).

The hub is the in-process ``events.JobEvents``: it also keeps the last
``OUTPUT_REPLAY_MAX_CHARS`` of each running job's output for late watchers, and hands the
service's notices (a submit, a cancel) to the workers of this process.
"""

from __future__ import annotations

import asyncio
import collections
from collections import defaultdict
from collections.abc import Callable, Sequence

from deepexec_sdk.types import MCPJobEvent

from ..errors import TooManyRequests
from .events import SharedEvent, WorkerNotices

__all__ = ["QUEUE_SIZE", "EventHub", "SharedEvent", "Subscription"]

QUEUE_SIZE = 1024
#: The latest output of a running job kept for watchers who arrive later (a dashboard page
#: opened while the job runs): they get it first, then the live output.
OUTPUT_REPLAY_MAX_CHARS = 64 * 1024
#: Seconds a client refused for a subscriber cap is asked to wait (``Retry-After``).
SUBSCRIBER_RETRY_AFTER = 1.0


class Subscription:
    def __init__(
        self,
        hub: EventHub,
        job_ids: tuple[str, ...],
        tenant_id: str | None,
        statuses_only: bool,
    ) -> None:
        self._hub = hub
        #: The jobs whose events this subscription receives: one, or a batch's (a waiter on
        #: many jobs counts once against its tenant's cap, not once per job).
        self.job_ids = job_ids
        self.tenant_id = tenant_id
        self.statuses_only = statuses_only
        self.queue: asyncio.Queue[SharedEvent] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0
        self._closed = False

    def offer(self, shared: SharedEvent) -> None:
        try:
            self.queue.put_nowait(shared)
        except asyncio.QueueFull:
            self.dropped += 1
            if shared.event.type != "status":
                return
            self.queue.get_nowait()
            self.queue.put_nowait(shared)

    async def get(self, timeout: float | None) -> SharedEvent | None:
        """The next event, or None after ``timeout`` seconds without one."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        # A timeout scope, not ``wait_for``: no task per call (this runs once per streamed
        # event); ``asyncio.timeout`` cancels only this wait.
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None

    def close(self) -> None:
        """Unsubscribe. Idempotent."""
        if not self._closed:
            self._closed = True
            self._hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Subscriptions per job. ``max_per_job`` and ``max_per_tenant`` bound the subscriptions
    made on behalf of a tenant (those given a ``tenant_id``); 0 means no bound."""

    #: In-process only: other processes sharing the store learn of changes by sweeping it.
    pushes_between_processes = False

    def __init__(self, *, max_per_job: int = 0, max_per_tenant: int = 0) -> None:
        self.max_per_job = max_per_job
        self.max_per_tenant = max_per_tenant
        #: Every subscription per job, and those that also take progress and output.
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._full: defaultdict[str, set[Subscription]] = defaultdict(set)
        #: Subscriptions made on behalf of tenants, per job and per tenant (the capped ones).
        self._per_job: defaultdict[str, int] = defaultdict(int)
        self._per_tenant: defaultdict[str, int] = defaultdict(int)
        #: The latest published output per running job, as ``(stream, text)`` runs.
        self._replays: dict[str, _Replay] = {}
        self._workers: list[WorkerNotices] = []
        self._ended_hooks: list[Callable[[str], None]] = []

    def subscribe(
        self, job_id: str, *, tenant_id: str | None = None, statuses_only: bool = False
    ) -> Subscription:
        """Subscribe to a job's events (its status changes alone if ``statuses_only``).
        Raises ``TooManyRequests`` naming the cap when ``tenant_id`` is given and the job or
        the tenant has as many subscribers as allowed."""
        if tenant_id is not None:
            self._check_caps(job_id, tenant_id)
        sub = Subscription(self, (job_id,), tenant_id, statuses_only)
        self._subs[job_id].add(sub)
        if not statuses_only:
            self._full[job_id].add(sub)
        if tenant_id is not None:
            self._per_job[job_id] += 1
            self._per_tenant[tenant_id] += 1
        return sub

    def subscribe_many(self, job_ids: Sequence[str], *, tenant_id: str) -> Subscription:
        """One subscription to the status changes of all of ``job_ids``: one listener of the
        tenant's (``TooManyRequests`` at its cap), none of any job's."""
        self._check_caps(None, tenant_id)
        sub = Subscription(self, tuple(dict.fromkeys(job_ids)), tenant_id, statuses_only=True)
        for job_id in sub.job_ids:
            self._subs[job_id].add(sub)
        self._per_tenant[tenant_id] += 1
        return sub

    def _check_caps(self, job_id: str | None, tenant_id: str) -> None:
        if (
            job_id is not None
            and self.max_per_job
            and self._per_job.get(job_id, 0) >= self.max_per_job
        ):
            raise TooManyRequests(
                f"job {job_id} already has {self.max_per_job} listeners (waits and event "
                "streams), the most this server allows per job "
                "(DEEPEXEC_MAX_SUBSCRIBERS_PER_JOB); retry when one has ended",
                type="too_many_subscribers",
                details={"cap": "max_subscribers_per_job", "limit": self.max_per_job},
                retry_after=SUBSCRIBER_RETRY_AFTER,
            )
        if self.max_per_tenant and self._per_tenant.get(tenant_id, 0) >= self.max_per_tenant:
            raise TooManyRequests(
                f"this API key's tenant already has {self.max_per_tenant} listeners (waits "
                "and event streams) open, the most this server allows per tenant "
                "(DEEPEXEC_MAX_SUBSCRIBERS_PER_TENANT); retry when one has ended",
                type="too_many_subscribers",
                details={"cap": "max_subscribers_per_tenant", "limit": self.max_per_tenant},
                retry_after=SUBSCRIBER_RETRY_AFTER,
            )

    def _unsubscribe(self, sub: Subscription) -> None:
        for job_id in sub.job_ids:
            for table in (self._subs, self._full):
                subs = table.get(job_id)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del table[job_id]
        if sub.tenant_id is not None:
            if len(sub.job_ids) == 1:
                _decrement(self._per_job, sub.job_ids[0])
            _decrement(self._per_tenant, sub.tenant_id)

    def publish(self, event: MCPJobEvent) -> None:
        """Offer ``event`` to the job's subscribers: a status to all of them, progress and
        output only to those that asked for every event."""
        if event.type == "output" and event.text:
            replay = self._replays.get(event.job_id)
            if replay is None:
                replay = self._replays[event.job_id] = _Replay()
            replay.keep(event.stream or "stdout", event.text)
        if event.type == "status" and event.job is not None and event.job.is_terminal:
            for hook in self._ended_hooks:
                hook(event.job_id)
        table = self._subs if event.type == "status" else self._full
        subs = table.get(event.job_id)
        if not subs:
            return
        shared = SharedEvent(event)
        for sub in tuple(subs):
            sub.offer(shared)

    def has_subscribers(self, job_id: str) -> bool:
        """Whether anyone listens to the job's progress and output."""
        return job_id in self._full

    def replay(self, job_id: str) -> list[MCPJobEvent]:
        """The output published so far for a running job (its latest part), as events."""
        replay = self._replays.get(job_id)
        if replay is None:
            return []
        return [
            MCPJobEvent(type="output", job_id=job_id, stream=stream, text=text)
            for stream, text in replay.runs
        ]

    def run_ended(self, job_id: str) -> None:
        """Forget the job's output kept for late watchers."""
        self._replays.pop(job_id, None)

    # --- notices from the service to the workers ------------------------------------------------

    def on_job_ended(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(job_id)`` for every job's end published here (in this process or, where
        events cross processes, in another)."""
        self._ended_hooks.append(hook)

    def listen(self, worker: WorkerNotices) -> None:
        self._workers.append(worker)

    def notify_submitted(self, job_type: str) -> None:
        for worker in self._workers:
            worker.on_submitted(job_type)

    def notify_cancel(self, job_id: str) -> None:
        for worker in self._workers:
            worker.on_cancel_requested(job_id)


class _Replay:
    """The last ``OUTPUT_REPLAY_MAX_CHARS`` of a job's output, one run per stream change."""

    __slots__ = ("chars", "runs")

    def __init__(self) -> None:
        self.runs: collections.deque[tuple[str, str]] = collections.deque()
        self.chars = 0

    def keep(self, stream: str, text: str) -> None:
        text = text[-OUTPUT_REPLAY_MAX_CHARS:]
        self.chars += len(text)
        if self.runs and self.runs[-1][0] == stream:
            text = self.runs.pop()[1] + text  # one run per stream change
        self.runs.append((stream, text))
        while self.chars > OUTPUT_REPLAY_MAX_CHARS:
            old_stream, old_text = self.runs.popleft()
            excess = self.chars - OUTPUT_REPLAY_MAX_CHARS
            if excess < len(old_text):
                self.runs.appendleft((old_stream, old_text[excess:]))
                self.chars -= excess
            else:
                self.chars -= len(old_text)


def _decrement(counts: defaultdict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left > 0:
        counts[key] = left
    else:
        del counts[key]
