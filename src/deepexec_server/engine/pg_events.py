"""``JobEvents`` for processes sharing one PostgreSQL store: the in-process hub, plus
LISTEN/NOTIFY (``peers.PgPeers``) to and from the other processes.

- A job's events published here reach this process's watchers at once and the other
  processes' through one notification (several, batched, in a burst); events from the others
  reach this process's watchers, and feed the late watchers' output replay as local ones do,
  so an SSE stream opened in the API process shows what the job printed in a worker process.
- ``notify_submitted`` and ``notify_cancel`` reach every worker: a pending job wakes the
  processes that can claim its type, a cancel reaches the process that runs the job.
- A lost listening connection loses nothing for long: once it listens again, every worker
  claims (jobs submitted meanwhile) and checks its running jobs' cancels in the store; waiters
  re-read the store on their own every few seconds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from deepexec_sdk.types import MCPJobEvent

from .hub import EventHub
from .peers import PeerHandlers, PgPeers


class PgJobEvents(EventHub):
    pushes_between_processes = True

    def __init__(self, peers: PgPeers, *, max_per_job: int = 0, max_per_tenant: int = 0) -> None:
        super().__init__(max_per_job=max_per_job, max_per_tenant=max_per_tenant)
        self.peers = peers
        #: Called after a reconnection, with the process's own checks (see ``start``).
        self._resync_hooks: list[Callable[[], Awaitable[None]]] = []

    async def start(self) -> None:
        """Listen to the other processes (returns once listening)."""
        await self.peers.start(
            PeerHandlers(
                job_event=self._from_peer,
                job_pending=super().notify_submitted,
                cancel=super().notify_cancel,
                resync=self._resync,
            )
        )

    async def stop(self) -> None:
        await self.peers.stop()

    def on_resync(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` whenever messages may have been missed."""
        self._resync_hooks.append(hook)

    async def _resync(self) -> None:
        for hook in self._resync_hooks:
            await hook()

    # --- what workers publish ----------------------------------------------------------------

    def publish(self, event: MCPJobEvent) -> None:
        super().publish(event)
        self.peers.job_event(event)

    def has_subscribers(self, job_id: str) -> bool:
        """Watchers may be in any process: always build the events."""
        return True

    def _from_peer(self, event: MCPJobEvent) -> None:
        super().publish(event)
        if event.type == "status" and event.job is not None and event.job.is_terminal:
            self.run_ended(event.job_id)

    # --- what the service tells workers ------------------------------------------------------

    def notify_submitted(self, job_type: str) -> None:
        super().notify_submitted(job_type)
        self.peers.job_pending(job_type)

    def notify_cancel(self, job_id: str) -> None:
        super().notify_cancel(job_id)
        self.peers.cancel(job_id)
