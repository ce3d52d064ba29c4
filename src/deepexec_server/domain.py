"""The job, its states and the rules between them. Pure: no I/O, no framework.

Status transitions live in ``TRANSITIONS`` and are checked by ``check_transition`` only:

    PENDING ──▶ RUNNING ──▶ COMPLETED | FAILED | CANCELED
       └────────────────▶ CANCELED | FAILED (reaped before it could start)

Cancellation is a flag (``cancel_requested_at``), not a status: a pending job moves straight to
CANCELED; a running one keeps running until its runner honours the flag.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from deepexec_sdk.types import JobStatus

from .errors import DeepExecError

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


class InvalidTransition(DeepExecError):
    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"a {current} job cannot become {target}")
        self.current = current
        self.target = target


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise ``InvalidTransition`` unless ``current → target`` is allowed."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(current, target)


def find_nul(value: Any, loc: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where the first NUL character (U+0000) hides in a JSON-like value, or None. NUL is
    refused at the edge: PostgreSQL cannot store it in text or jsonb, SQLite can, and both
    stores must accept the same jobs."""
    if isinstance(value, str):
        return loc if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            if "\x00" in str(k):
                return (*loc, str(k))
            if (found := find_nul(v, (*loc, str(k)))) is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if (found := find_nul(v, (*loc, i))) is not None:
                return found
    return None


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    """An unguessable job id (128 random bits): ids double as bearer handles (MCP task ids)."""
    return "job_" + secrets.token_hex(16)


def new_batch_id() -> str:
    """An unguessable batch id, as ``new_job_id``."""
    return "bat_" + secrets.token_hex(16)


@dataclasses.dataclass(frozen=True, slots=True)
class JobError:
    """Why a job failed. ``type`` is one of the documented error types (see ``ErrorType``)."""

    type: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


class ErrorType:
    """The ``error.type`` values a FAILED job can carry."""

    TIMEOUT = "timeout"
    RUNTIME_ERROR = "runtime_error"
    MEMORY_LIMIT = "memory_limit"
    CPU_LIMIT = "cpu_limit"
    OUTPUT_LIMIT = "output_limit"
    DISK_LIMIT = "disk_limit"
    COMPILE_ERROR = "compile_error"
    KILLED = "killed"
    INTERRUPTED = "interrupted"
    INTERNAL = "internal_error"
    MODEL_ERROR = "model_error"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    UPSTREAM_AUTH = "upstream_auth"
    UPSTREAM_RATE_LIMITED = "upstream_rate_limited"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"


@dataclasses.dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission, before the store gives it an identity."""

    tenant_id: str
    name: str
    job_type: str
    data: dict[str, Any]
    timeout: int
    priority: int
    tags: tuple[str, ...]
    idempotency_key: str | None = None
    #: Hash of the request body, to tell a retry from a different request reusing a key.
    fingerprint: str | None = None
    #: Where to POST the job's end (``webhooks``), and in which shape (None: Standard
    #: Webhooks; ``judge0``: a Judge0 callback).
    webhook_url: str | None = None
    webhook_format: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    """A job as stored. Immutable: every change is a new value returned by the store."""

    id: str
    tenant_id: str
    name: str
    job_type: str
    data: dict[str, Any]
    timeout: int
    priority: int
    tags: tuple[str, ...]
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: int | None = None
    progress_message: str | None = None
    result: dict[str, Any] | None = None
    error: JobError | None = None
    cancel_requested_at: datetime | None = None
    cancel_reason: str | None = None
    #: Which runner holds the job while RUNNING, and until when its lease is valid.
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None
    #: When the result (and the input data, if large) was purged by the retention policy or
    #: the tenant's cap on stored result bytes; the job itself is kept.
    result_purged_at: datetime | None = None
    #: As ``NewJob``'s: the store turns the job's end into a delivery to this URL.
    webhook_url: str | None = None
    webhook_format: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


@dataclasses.dataclass(frozen=True, slots=True)
class JobSummary:
    """A job as a list shows it: its state, without its input data and its result (both can
    be megabytes; a list of them exhausted the server's memory). ``Store.list_jobs`` does
    not even read those columns."""

    id: str
    tenant_id: str
    name: str
    job_type: str
    timeout: int
    priority: int
    tags: tuple[str, ...]
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: int | None = None
    progress_message: str | None = None
    error: JobError | None = None
    cancel_requested_at: datetime | None = None
    cancel_reason: str | None = None

    @classmethod
    def of(cls, job: Job) -> JobSummary:
        """The summary of a whole job."""
        return cls(**{f.name: getattr(job, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True, slots=True)
class JobFilter:
    """What ``list_jobs`` selects, always within one tenant."""

    status: JobStatus | None = None
    tags: tuple[str, ...] = ()  # a job must carry every tag listed
    name: str | None = None  # exact name


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: only the SHA-256 of the secret is kept."""

    id: str
    tenant_id: str
    name: str
    key_hash: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


#: A quota of ``Tenant`` set to this has no limit (None takes the server-wide default), as
#: a 0 in the settings has none.
UNLIMITED = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Tenant:
    """An operator's settings for one tenant. A None field takes the server-wide default
    (``Settings.tenant_*``); a quota of ``UNLIMITED`` has none. ``weight`` is the tenant's
    share of the slots against the others' (fair share); ``max_running`` caps its running
    jobs, ``max_pending`` its queued ones, ``submit_rate`` its submits
    per second, ``max_timeout`` the timeout its jobs may ask for."""

    tenant_id: str
    created_at: datetime
    updated_at: datetime
    weight: float | None = None
    max_running: int | None = None
    max_pending: int | None = None
    submit_rate: float | None = None
    max_timeout: int | None = None
    #: Most running jobs of one job type (``{"text_generation": 1}``), within ``max_running``.
    max_running_by_type: Mapping[str, int] | None = None
    #: The most a code job of the tenant may ask for in ``data.limits`` (``{"memory_mb":
    #: 1024}``), within the server's ``code_limits_max``; its defaults are lowered to them.
    code_limits: Mapping[str, int] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SharePolicy:
    """What a claim takes for a tenant without its own ``max_running`` (its weight is 1)."""

    max_running: int = UNLIMITED


DEFAULT_SHARE = SharePolicy()


@dataclasses.dataclass(frozen=True, slots=True)
class TenantUsage:
    """A tenant's jobs queued and running now."""

    pending: int = 0
    running: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class NewBatch:
    """Validated submissions to store together, in request order."""

    tenant_id: str
    jobs: tuple[NewJob, ...]
    idempotency_key: str | None = None
    #: Hash of the whole request, to tell a retry from a different batch reusing its key.
    fingerprint: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Batch:
    """A batch as stored: its jobs are listed by position (``Store.list_batch_jobs``)."""

    id: str
    tenant_id: str
    size: int
    created_at: datetime
    idempotency_key: str | None = None
    fingerprint: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CreatedBatch:
    """What storing a batch gave: the batch and its jobs in request order, and per job
    whether this call created it (False: an item's idempotency key named an earlier job).
    ``replayed``: the batch's own key named an earlier batch, which is returned as it is."""

    batch: Batch
    jobs: tuple[Job, ...]
    created: tuple[bool, ...]
    replayed: bool = False


class IdempotencyConflicts(DeepExecError):
    """Items of a batch whose idempotency keys already name jobs submitted with other
    requests; nothing of the batch was stored. ``items``: (position, the holder's job id)."""

    def __init__(self, items: list[tuple[int, str]]) -> None:
        super().__init__(f"{len(items)} idempotency key(s) already used for other requests")
        self.items = items


#: The id under which a tenant reads and rotates the key of its jobs' own webhook URLs.
JOB_URLS_ID = "job-urls"


def new_endpoint_id() -> str:
    return "whe_" + secrets.token_hex(12)


#: The event types of a job's end, one per terminal status: what a webhook endpoint may filter.
JOB_EVENT_TYPES: dict[JobStatus, str] = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
}


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """Where a tenant's job ends are sent, and the key that signs them.

    An endpoint with a ``url`` receives the end of every job of its tenant whose event type
    is in ``events`` (None: every type). The tenant's one endpoint without a ``url`` only
    holds the key that signs the deliveries to the jobs' own ``webhook_url``. A rotated key
    (``previous_secret``) still signs, beside the new one, until ``previous_until``."""

    id: str
    tenant_id: str
    url: str | None
    events: tuple[str, ...] | None
    secret: str
    created_at: datetime
    updated_at: datetime
    previous_secret: str | None = None
    previous_until: datetime | None = None
    disabled_at: datetime | None = None
    disabled_reason: str | None = None

    def secrets_at(self, now: datetime) -> list[str]:
        """The keys that sign a delivery made at ``now``: the current one, then the previous
        one while it overlaps."""
        keys = [self.secret]
        if self.previous_secret and self.previous_until and now < self.previous_until:
            keys.append(self.previous_secret)
        return keys


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One try of a delivery: the answer's status code, or why there was none."""

    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One message about one job's end to one URL, tried until it is delivered or given up.
    ``id`` is the message's ``webhook-id``: the same at every attempt (the receiver's
    idempotency key). ``body`` is fixed at the first attempt, so every attempt sends the
    same bytes. ``state``: ``pending``, ``delivered`` or ``failed`` (given up)."""

    id: str
    tenant_id: str
    job_id: str
    endpoint_id: str | None
    url: str
    format: str
    event_type: str
    state: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    next_attempt_at: datetime | None = None
    body: str | None = None
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    log: tuple[WebhookAttempt, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What a delivery attempt decides: the attempt to log, and the delivery's next state
    (``pending`` with ``next_attempt_at``, ``delivered`` or ``failed``). ``disable_endpoint``:
    a reason to disable the delivery's endpoint (a 410)."""

    attempt: WebhookAttempt
    state: str
    next_attempt_at: datetime | None
    body: str
    disable_endpoint: str | None = None
