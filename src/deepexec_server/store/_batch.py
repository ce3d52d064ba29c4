"""Group commit: concurrent calls share one write transaction.

A submit's cost in either store is mostly per transaction, not per row: the hop to SQLite's
writer thread and back, or a PostgreSQL round trip and its WAL flush. ``GroupCommit`` queues
the rows that arrive while a batch is being written and writes them all in the next one, so
under load N submits cost one transaction; alone, a submit is a batch of one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item, as in the typing docs
O = TypeVar("O")  # noqa: E741

#: Most rows written in one transaction; more wait for the next.
MAX_BATCH = 256


class GroupCommit(Generic[I, O]):
    """Feeds items to ``write_batch`` in batches; each caller gets its own item's result.

    ``write_batch`` returns one result per item, in order, or raises: then each item of that
    batch is written again alone through ``write_one``, so one bad row fails only its caller.
    """

    def __init__(
        self,
        write_batch: Callable[[Sequence[I]], Awaitable[Sequence[O]]],
        write_one: Callable[[I], Awaitable[O]],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._write_batch = write_batch
        self._write_one = write_one
        self._max_batch = max_batch
        self._pending: list[tuple[I, asyncio.Future[O]]] = []
        #: A write is in flight: new items queue for the next batch.
        self._busy = False
        #: The task writing the current batch (a reference keeps it from being collected).
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> O:
        """Write ``item`` in the next batch and return its result."""
        if not self._busy:
            # Nothing in flight: write it now, alone; what arrives meanwhile queues.
            self._busy = True
            try:
                return await self._write_one(item)
            finally:
                self._next()
        future: asyncio.Future[O] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        # Shielded: a caller that goes away does not cancel the write of the others.
        return await asyncio.shield(future)

    def _next(self) -> None:
        """After a write: start on what queued meanwhile, or become idle."""
        if self._pending:
            self._writer = asyncio.create_task(self._drain())
        else:
            self._busy = False

    async def _drain(self) -> None:
        try:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            await self._write(batch)
        finally:
            self._writer = None
            self._next()

    async def _write(self, batch: list[tuple[I, asyncio.Future[O]]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = list(await self._write_batch(items)) if len(items) > 1 else []
        except Exception:
            results = []
        if len(results) != len(batch):
            for item, future in batch:
                try:
                    _settle(future, await self._write_one(item))
                except Exception as exc:
                    _fail(future, exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)


def _settle(future: asyncio.Future[O], result: O) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[O], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
