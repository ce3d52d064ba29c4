"""The job engine: the service every door calls (``service.JobService``, also named
``Engine``) and the worker that runs the jobs (``worker.Worker``), joined by the events of
``events.JobEvents`` (``hub.EventHub`` in one process); ``runtime.EngineRuntime`` holds both."""

from .events import JobEvents, SharedEvent
from .hub import EventHub
from .runtime import EngineRuntime
from .service import JobService
from .worker import Worker

#: The object the doors call: the job service.
Engine = JobService

__all__ = [
    "Engine",
    "EngineRuntime",
    "EventHub",
    "JobEvents",
    "JobService",
    "SharedEvent",
    "Worker",
]
