"""What a running job sees: ``RunContext``, the ``ExecutionContext`` of executors/base.py,
which coalesces the job's progress and output into events for its watchers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from deepexec_sdk.types import MCPJobEvent

from ..domain import Job, utcnow
from ..settings import Settings
from ..store import Store
from .events import JobEvents
from .outcomes import clamp_progress

logger = logging.getLogger("deepexec_server.engine")

#: Most output text held for listeners between two deliveries of a job's output.
OUTPUT_PENDING_MAX_CHARS = 256 * 1024


class RunContext:
    """The ``ExecutionContext`` a running job sees (executors/base.py).

    A program may report progress or print as fast as it can. What it reports is coalesced
    per job, the latest value winning: listeners get at most ``progress_events_per_second``
    progress events (and as many store writes) and ``output_events_per_second`` output events
    (adjacent chunks merged), and always the last value before the job's end. A report costs
    the caller a tuple assignment, so a flooding job cannot take the event loop from others.
    The event hub keeps the latest published output for late watchers.
    """

    def __init__(self, job: Job, settings: Settings, store: Store, events: JobEvents) -> None:
        self._store = store
        self._events = events
        self.job = job
        self._cancel = asyncio.Event()
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
            if self._events.has_subscribers(self.job.id):
                progress, message = update
                self._events.publish(
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
            await self._store.set_progress(self.job.id, *update, utcnow())
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
            self._events.publish(
                MCPJobEvent(type="output", job_id=self.job.id, stream=stream, text=text)
            )

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
