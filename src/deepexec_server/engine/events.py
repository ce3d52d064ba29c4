"""The seam between the job service and the workers: what each tells the other.

A worker publishes a job's events (its status changes, progress and output) and the service
subscribes to them for its watchers (long-polls, event streams, cancels); the service tells
the workers that a job was submitted or that a running job's cancel was asked for. In one
process ``hub.EventHub`` carries all of it; a bus between processes (PostgreSQL's LISTEN and
NOTIFY) is another implementation of ``JobEvents``. Across processes the store carries the
same news, later: workers sweep the queue every second and learn of cancels when they renew
their leases (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from deepexec_sdk.types import MCPJobEvent


class SharedEvent:
    """One published event, the same object for every subscriber."""

    __slots__ = ("_encoded", "event")

    def __init__(self, event: MCPJobEvent) -> None:
        self.event = event
        self._encoded: dict[Callable[[MCPJobEvent], bytes], bytes] = {}

    def encoded(self, encode: Callable[[MCPJobEvent], bytes]) -> bytes:
        """``encode(event)``, computed by the first subscriber that asks and kept for the
        others (a status event carries the whole result: 500 listeners, one encoding)."""
        found = self._encoded.get(encode)
        if found is None:
            found = self._encoded[encode] = encode(self.event)
        return found


class Subscription(Protocol):
    """A watcher's view of one job's events; a context manager that unsubscribes."""

    async def get(self, timeout: float | None) -> SharedEvent | None:
        """The next event, or None after ``timeout`` seconds without one."""

    def close(self) -> None:
        """Unsubscribe. Idempotent."""

    def __enter__(self) -> Subscription: ...

    def __exit__(self, *exc: object) -> None: ...


class WorkerNotices(Protocol):
    """What a worker hears from the service."""

    def on_submitted(self, job_type: str) -> None:
        """A job of ``job_type`` was submitted: claim it when a slot is free."""

    def on_cancel_requested(self, job_id: str) -> None:
        """The job's cancel was asked for: stop it if it runs here."""


class JobEvents(Protocol):
    #: Whether the news crosses processes at once (else the workers sweep the store often).
    pushes_between_processes: bool

    # --- what workers publish -------------------------------------------------------------------

    def publish(self, event: MCPJobEvent) -> None:
        """Hand ``event`` to the job's subscribers (and keep output for late watchers)."""

    def has_subscribers(self, job_id: str) -> bool:
        """Whether anyone listens to the job's progress and output (else a worker may skip
        building those events)."""

    def run_ended(self, job_id: str) -> None:
        """The job's run ended here: forget the output kept for its late watchers."""

    # --- what the service reads -----------------------------------------------------------------

    def subscribe(
        self, job_id: str, *, tenant_id: str | None = None, statuses_only: bool = False
    ) -> Subscription:
        """Subscribe to a job's events (its status changes alone if ``statuses_only``)."""

    def subscribe_many(self, job_ids: Sequence[str], *, tenant_id: str) -> Subscription:
        """Subscribe to the status changes of all of ``job_ids`` at once (a batch's)."""

    def replay(self, job_id: str) -> list[MCPJobEvent]:
        """The latest output of a job that runs, as output events, for a watcher arriving
        late. Taken right after ``subscribe`` (no await between) it joins the live events
        without a gap or a repeat."""

    # --- what the service tells workers ---------------------------------------------------------

    def on_job_ended(self, hook: Callable[[str], None]) -> None:
        """Call ``hook(job_id)`` for every job's end published (here or by another process)."""

    def listen(self, worker: WorkerNotices) -> None:
        """Deliver the service's notices to ``worker``."""

    def notify_submitted(self, job_type: str) -> None:
        """Tell the workers a job of ``job_type`` awaits a runner."""

    def notify_cancel(self, job_id: str) -> None:
        """Tell the workers the job's cancel was asked for."""
