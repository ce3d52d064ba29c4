"""The other processes sharing this process's store, and what the engine tells them.

Three things cross processes: a job's events (status, progress, output: a waiter, an SSE
stream or an MCP task may be in another process than the job's run), "a job of this type is
pending" (wakes the processes that can claim it), and "cancel this job" (reaches the process
running it). ``Peers`` is the one interface the engine uses for them, whatever the store:

- ``NoPeers``: the embedded SQLite mode, one process; nothing to send.
- ``PgPeers``: PostgreSQL LISTEN/NOTIFY through ``store.pg_notify.PgEventBus``.

Sending never blocks the caller (a run emitting output, a submit): messages are queued and one
sender task sends them in order, several per notification when they come faster than one round
trip. A process that lost its listening connection calls ``resync`` once it listens again:
it re-reads what it waits for, since messages sent meanwhile did not reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import ValidationError

from deepexec_sdk.types import MCPJobEvent

from ..store.pg_notify import Message, PgEventBus

log = logging.getLogger("deepexec_server.engine.peers")

#: Messages sent in one notification at most (a burst of output chunks, progress lines).
BATCH_MAX = 64


@dataclasses.dataclass(frozen=True, slots=True)
class PeerHandlers:
    """What this process does with what the others send."""

    #: A job's event, to this process's listeners of that job.
    job_event: Callable[[MCPJobEvent], None]
    #: A job of this type was submitted: claim if there is a free slot.
    job_pending: Callable[[str], None]
    #: A job's cancel was requested: stop it if it runs here.
    cancel: Callable[[str], None]
    #: Messages may have been missed: re-read what this process waits for.
    resync: Callable[[], Awaitable[None]]


class Peers(Protocol):
    async def start(self, handlers: PeerHandlers) -> None: ...

    async def stop(self) -> None: ...

    def job_event(self, event: MCPJobEvent) -> None: ...

    def job_pending(self, job_type: str) -> None: ...

    def cancel(self, job_id: str) -> None: ...


class NoPeers:
    """One process alone on its store: nothing crosses."""

    async def start(self, handlers: PeerHandlers) -> None:
        return None

    async def stop(self) -> None:
        return None

    def job_event(self, event: MCPJobEvent) -> None:
        return None

    def job_pending(self, job_type: str) -> None:
        return None

    def cancel(self, job_id: str) -> None:
        return None


class PgPeers:
    """``Peers`` over PostgreSQL LISTEN/NOTIFY."""

    def __init__(self, bus: PgEventBus) -> None:
        self.bus = bus
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._handlers: PeerHandlers | None = None

    async def start(self, handlers: PeerHandlers) -> None:
        self._handlers = handlers
        await self.bus.start(self._received, handlers.resync)
        self._sender = asyncio.create_task(self._send_loop(), name="deepexec-peers-send")

    async def stop(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            await self._flush()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        await self.bus.stop()

    async def _flush(self, within: float = 2.0) -> None:
        """Give queued messages a moment to leave (a stopping worker's last statuses)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._outbox.join()

    # --- sending ----------------------------------------------------------------------------

    def job_event(self, event: MCPJobEvent) -> None:
        self._outbox.put_nowait({"k": "e", "e": event.model_dump(mode="json")})

    def job_pending(self, job_type: str) -> None:
        self._outbox.put_nowait({"k": "p", "t": job_type})

    def cancel(self, job_id: str) -> None:
        self._outbox.put_nowait({"k": "c", "j": job_id})

    async def _send_loop(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while len(batch) < BATCH_MAX and not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                await self.bus.publish({"b": batch})
            except Exception as exc:
                # The store's pool reconnects by itself; what was lost here is recovered by
                # the receivers' store re-reads (waiters) and the workers' claim safety net.
                log.warning("could not tell other processes %d message(s): %s", len(batch), exc)
            for _ in batch:
                self._outbox.task_done()

    # --- receiving --------------------------------------------------------------------------

    def _received(self, message: Message) -> None:
        handlers = self._handlers
        batch = message.get("b")
        if handlers is None or not isinstance(batch, list):
            return
        for item in batch:
            if isinstance(item, dict):
                _dispatch(handlers, item)


def _dispatch(handlers: PeerHandlers, item: dict[str, Any]) -> None:
    kind = item.get("k")
    if kind == "e":
        try:
            event = MCPJobEvent.model_validate(item.get("e"))
        except ValidationError:
            log.warning("ignoring a malformed job event from another process")
            return
        handlers.job_event(event)
    elif kind == "p" and isinstance(item.get("t"), str):
        handlers.job_pending(item["t"])
    elif kind == "c" and isinstance(item.get("j"), str):
        handlers.cancel(item["j"])
