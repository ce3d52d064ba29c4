"""Prometheus metrics, on a registry owned by one app (no process-global state)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

#: Distinct methods counted by name; any further one is counted as "other".
MAX_METHODS = 32


class RequestCounts(Collector):
    """``deepexec_http_requests_total`` by method and status. Called for every request, so a
    plain dict bumped on the event loop's thread (a ``Counter`` takes a lock and looks up its
    label child each time); the registry reads it when scraped."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self._methods: set[str] = set()

    def __call__(self, method: str, status: int) -> None:
        key = (method, status)
        counts = self.counts
        n = counts.get(key)
        if n is None:
            if method not in self._methods:
                if len(self._methods) >= MAX_METHODS:  # methods are client-chosen strings
                    key = ("other", status)
                else:
                    self._methods.add(method)
            n = counts.get(key, 0)
        counts[key] = n + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "deepexec_http_requests", "HTTP requests answered", labels=["method", "status"]
        )
        for (method, status), n in list(self.counts.items()):
            family.add_metric([method, str(status)], n)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.jobs_submitted = Counter(
            "deepexec_jobs_submitted_total", "Jobs accepted", ["job_type"], registry=self.registry
        )
        self.jobs_finished = Counter(
            "deepexec_jobs_finished_total",
            "Jobs that reached a terminal status",
            ["job_type", "status"],
            registry=self.registry,
        )
        self.job_duration = Histogram(
            "deepexec_job_run_seconds",
            "Time from start to end of a job's execution",
            ["job_type"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
            registry=self.registry,
        )
        self.job_queue_seconds = Histogram(
            "deepexec_job_queue_seconds",
            "Time from submission to start",
            ["job_type"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
            registry=self.registry,
        )
        self.jobs_by_status = Gauge(
            "deepexec_jobs", "Jobs in the store by status", ["status"], registry=self.registry
        )
        self.running_jobs = Gauge(
            "deepexec_running_jobs",
            "Jobs running on this server",
            ["job_type"],
            registry=self.registry,
        )
        self.webhook_attempts = Counter(
            "deepexec_webhook_attempts_total",
            "Webhook delivery attempts by outcome (delivered, retry, failed)",
            ["outcome"],
            registry=self.registry,
        )
        self.submits_rejected = Counter(
            "deepexec_submits_rejected_total",
            "Submits refused by a quota or the server's full queue, by tenant and reason "
            "(max_pending, submit_rate, max_timeout, queue_full)",
            ["tenant", "reason"],
            registry=self.registry,
        )
        self.tenant_queue_seconds = Histogram(
            "deepexec_tenant_queue_seconds",
            "Time from submission to start, by tenant",
            ["tenant"],
            buckets=(0.005, 0.05, 0.5, 1, 5, 30, 120, 600, 3600),
            registry=self.registry,
        )
        self.tenant_jobs = Gauge(
            "deepexec_tenant_jobs",
            "Jobs queued (PENDING) and running (RUNNING) in the store, by tenant",
            ["tenant", "status"],
            registry=self.registry,
        )
        self.http_requests = RequestCounts()
        self.registry.register(self.http_requests)
