"""Prometheus metrics, on a registry owned by one app (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.http_requests = Counter(
            "deepexec_http_requests_total",
            "HTTP requests answered",
            ["method", "status"],
            registry=self.registry,
        )
