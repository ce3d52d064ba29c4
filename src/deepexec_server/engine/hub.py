"""In-process fan-out of job events, so waiters are woken by a state change, not by polling.

Each subscriber has a bounded queue. A slow subscriber loses output chunks, never a status
event: when its queue is full, the oldest event is dropped to make room for a status.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from deepexec_sdk.types import MCPJobEvent

QUEUE_SIZE = 1024


class Subscription:
    def __init__(self, hub: EventHub, job_id: str) -> None:
        self._hub = hub
        self.job_id = job_id
        self.queue: asyncio.Queue[MCPJobEvent] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0

    def offer(self, event: MCPJobEvent) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if event.type != "status":
                return
            self.queue.get_nowait()
            self.queue.put_nowait(event)

    async def get(self, timeout: float | None) -> MCPJobEvent | None:
        """The next event, or None after ``timeout`` seconds without one."""
        if not self.queue.empty():
            return self.queue.get_nowait()
        # A timeout scope, not ``wait_for``: no task per call (this runs once per streamed
        # token); ``asyncio.timeout`` cancels only this wait.
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None

    def close(self) -> None:
        self._hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    def __init__(self) -> None:
        self._subs: defaultdict[str, set[Subscription]] = defaultdict(set)

    def subscribe(self, job_id: str) -> Subscription:
        sub = Subscription(self, job_id)
        self._subs[job_id].add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.job_id]

    def publish(self, event: MCPJobEvent) -> None:
        for sub in tuple(self._subs.get(event.job_id, ())):
            sub.offer(event)

    def has_subscribers(self, job_id: str) -> bool:
        return job_id in self._subs
