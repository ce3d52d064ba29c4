"""The engine of one process: the job service and a worker over one store, one event hub and
one set of executors, started and stopped together. ``app.build_engine`` makes it for both
``deepexec serve`` and ``deepexec worker``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..executors.base import Executor
from ..metrics import Metrics
from ..settings import Settings
from ..store import Store
from ..store.pg_notify import PgEventBus
from ..store.postgres import PostgresStore
from ..webhooks.sender import WebhookSender
from .hub import EventHub
from .parts import EngineParts
from .peers import PgPeers
from .pg_events import PgJobEvents
from .quotas import Quotas
from .service import JobService
from .worker import Worker


class EngineRuntime:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        executors: Mapping[str, Executor],
        *,
        metrics: Metrics | None = None,
        exclusive_store: bool = False,
    ) -> None:
        """``exclusive_store``: this process is the only one using the store (the embedded
        SQLite mode); see ``Worker``."""
        self.settings = settings
        self.store = store
        self.executors = dict(executors)
        self.metrics = metrics or Metrics()
        self.hub = events_for(store, settings)
        self.quotas = Quotas(settings, store, self.metrics)
        parts = EngineParts(settings, store, self.executors, self.hub, self.metrics, self.quotas)
        self.service = JobService(parts)
        self.worker = Worker(parts, exclusive_store=exclusive_store)
        self.webhooks = WebhookSender(settings, store, self.metrics, self._describe_code)
        self.hub.on_job_ended(self.webhooks.job_ended)

    def _describe_code(self) -> Mapping[str, Any]:
        code = self.executors.get("code_execution")
        return code.describe() if code is not None else {}

    async def start(self, *, run_jobs: bool = True) -> None:
        """Reap what a crash left, listen to the other processes sharing the store (on
        PostgreSQL), start the executors, take submissions, and start the worker: its
        scheduler and runners only if ``run_jobs`` (a server without them only serves the API,
        and reaps), and the webhook sender. The store must be open."""
        await self.worker.reap_orphans()
        if isinstance(self.hub, PgJobEvents):
            self.hub.on_resync(self.worker.resync)
            await self.hub.start()
        for executor in self.executors.values():
            await executor.start()
        self.service.open()
        self.worker.start(run_jobs=run_jobs)
        self.webhooks.start()

    async def stop(self) -> None:
        """Refuse submissions, stop every running job (they end FAILED, ``interrupted``), and
        close the executors."""
        self.service.close()
        await self.worker.stop()
        await self.webhooks.stop()
        if isinstance(self.hub, PgJobEvents):
            await self.hub.stop()
        for executor in self.executors.values():
            with contextlib.suppress(Exception):
                await executor.close()

    @contextlib.asynccontextmanager
    async def running(self, *, run_jobs: bool = True) -> AsyncIterator[EngineRuntime]:
        """Open the store and start; on the way out stop and close the store."""
        await self.store.open()
        try:
            await self.start(run_jobs=run_jobs)
            yield self
        finally:
            await self.stop()
            await self.store.close()


def events_for(store: Store, settings: Settings) -> EventHub:
    """The process's ``JobEvents``: in-process alone on SQLite, with LISTEN/NOTIFY between the
    processes sharing a PostgreSQL store."""
    caps = {
        "max_per_job": settings.max_subscribers_per_job,
        "max_per_tenant": settings.max_subscribers_per_tenant,
    }
    if isinstance(store, PostgresStore):
        bus = PgEventBus(store.url, store.connection, schema=store.schema)
        return PgJobEvents(PgPeers(bus), **caps)
    return EventHub(**caps)
