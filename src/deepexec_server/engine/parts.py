"""What the job service and the worker of one process share."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..executors.base import Executor
from ..metrics import Metrics
from ..settings import Settings
from ..store import Store
from .events import JobEvents
from .quotas import Quotas


@dataclasses.dataclass(frozen=True, slots=True)
class EngineParts:
    """The settings, the store, the executors by job type, the events between the service
    and the workers, the metrics they count into, and the tenants' quotas."""

    settings: Settings
    store: Store
    executors: Mapping[str, Executor]
    hub: JobEvents
    metrics: Metrics
    quotas: Quotas


class EnginePart:
    """The base of ``JobService`` and ``Worker``: their shared parts as attributes."""

    def __init__(self, parts: EngineParts) -> None:
        self.settings = parts.settings
        self.store = parts.store
        self.executors = dict(parts.executors)
        self.hub = parts.hub
        self.metrics = parts.metrics
        self.quotas = parts.quotas
