"""Wire types shared by the SDK and the server.

The server imports these models for its request and response bodies, so the two sides cannot
drift. Every model ignores fields it does not know when *reading* a response (a newer server may
add fields) but the server validates requests strictly (see ``JobSubmitRequest``).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: Version of the REST protocol spoken by this SDK. Sent as ``DeepExec-Protocol`` on every
#: request; the server answers with its own and refuses a major version it does not speak.
PROTOCOL_VERSION = "1"
PROTOCOL_HEADER = "DeepExec-Protocol"
REQUEST_ID_HEADER = "X-Request-Id"
IDEMPOTENCY_HEADER = "Idempotency-Key"

MAX_TAGS = 32
#: Most jobs one ``POST /v1/jobs/batch`` (``submit_mcp_jobs``) may carry, and most job ids one
#: ``POST /v1/jobs/wait`` may name.
MAX_BATCH_JOBS = 1000
#: Longest hold of a long-poll (``wait`` of a status read, a batch or ``POST /v1/jobs/wait``).
MAX_WAIT_SECONDS = 60
IDEMPOTENCY_KEY_PATTERN = r"^[\x20-\x7e]+$"
MAX_TAG_LENGTH = 64
MAX_NAME_LENGTH = 200
MAX_WEBHOOK_URL_LENGTH = 2048
#: The event types a webhook is sent for: a job's end, one per terminal status.
WebhookEvent = Literal["job.completed", "job.failed", "job.canceled"]
TAG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/=+-]*$"


class JobStatus(enum.StrEnum):
    """A job's status. Compares equal to its plain string (``status == "COMPLETED"``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED})


class JobType(enum.StrEnum):
    CODE_EXECUTION = "code_execution"
    TEXT_GENERATION = "text_generation"


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class JobError(_Response):
    """Why a job failed: a machine-readable ``type`` and a human ``message``."""

    type: str
    message: str

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


class MCPJobResponse(_Response):
    """What ``submit_mcp_job`` returns: the new job's id and initial status."""

    job_id: str
    status: JobStatus
    name: str
    job_type: str
    priority: int
    timeout: int
    tags: list[str] = Field(default_factory=list)
    created_at: datetime


class MCPJobSummary(_Response):
    """A job as ``list_mcp_jobs`` shows it: its state, without its result.

    Results can be large (a code job keeps up to 16 MiB of each output stream), so a page of
    jobs leaves them out; ``get_mcp_job_status(job_id)`` returns the job with its result.
    """

    job_id: str
    name: str
    job_type: str
    status: JobStatus
    progress: int | None = None
    progress_message: str | None = None
    error: JobError | None = None
    tags: list[str] = Field(default_factory=list)
    priority: int = 0
    timeout: int = 60
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime
    cancel_requested_at: datetime | None = None
    cancel_reason: str | None = None
    #: Set when the server purged the job's result after its retention period (or to keep
    #: the tenant under its cap on stored results): ``result`` is then None for good.
    #: Optional, so servers that predate it still parse.
    result_purged_at: datetime | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


class MCPJobStatusResponse(MCPJobSummary):
    """A job's full current state, result included, as ``get_mcp_job_status`` returns it."""

    result: dict[str, Any] | None = None


class MCPCancelJobResponse(_Response):
    """What ``cancel_mcp_job`` returns. ``status`` is ``CANCELED`` unless the job was already
    running and had not stopped when the server answered (then ``RUNNING``; it will end soon)."""

    job_id: str
    status: JobStatus
    canceled_at: datetime


class MCPJobListResponse(_Response):
    """A page of jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page.
    The jobs are summaries, without their results: ``get_mcp_job_status`` gives one in full."""

    jobs: list[MCPJobSummary]
    next_cursor: str | None = None


class MCPBatchJob(MCPJobResponse):
    """One job of a submitted batch. ``created`` is False when the item's idempotency key
    named a job submitted before (that job is returned, no new one is made)."""

    created: bool = True


class MCPBatchResponse(_Response):
    """What ``submit_mcp_jobs`` returns: the batch's id and its jobs, in request order."""

    batch_id: str
    created_at: datetime
    jobs: list[MCPBatchJob]

    @property
    def job_ids(self) -> list[str]:
        return [job.job_id for job in self.jobs]


class MCPBatchStatusResponse(_Response):
    """A batch's progress: how many of its jobs are in each status. ``done``: every one of
    them has ended (COMPLETED, FAILED or CANCELED)."""

    batch_id: str
    created_at: datetime
    total: int
    counts: dict[JobStatus, int]
    finished: int
    done: bool


class MCPBatchCancelResponse(MCPBatchStatusResponse):
    """What canceling a batch returns: its progress, and how many of its jobs this request
    canceled (pending ones) or asked to stop (running ones)."""

    canceled: int


class MCPJobsWaitResponse(_Response):
    """``POST /v1/jobs/wait``: the named jobs that have ended, in full, and the ids of the
    others (still running, or left for the next call to keep the answer bounded)."""

    jobs: list[MCPJobStatusResponse]
    pending: list[str]


EventType = Literal["status", "progress", "output"]


class MCPJobEvent(_Response):
    """One event of a job's live stream.

    - ``status``: ``job`` holds the full job state; the last event of a stream is always a
      ``status`` event whose job is terminal.
    - ``progress``: ``progress`` (0-100) and ``message``.
    - ``output``: ``stream`` (``stdout``, ``stderr`` or ``text`` for generated tokens) and ``text``.
    """

    type: EventType
    job_id: str
    job: MCPJobStatusResponse | None = None
    progress: int | None = None
    message: str | None = None
    stream: str | None = None
    text: str | None = None


class ModelInfo(_Response):
    """One model a ``text_generation`` job may name, and whether it is usable now.

    When it is not, ``missing`` names what is lacking (``DEEPSEEK_API_KEY``...) and ``hint``
    says what to set on the server.
    """

    name: str
    aliases: list[str] = Field(default_factory=list)
    backend: str
    model_id: str | None = None
    context_length: int | None = None
    available: bool
    missing: list[str] = Field(default_factory=list)
    hint: str | None = None
    default: bool = False
    description: str = ""


class ModelListResponse(_Response):
    """``GET /v1/models``: every model of the server, and the one used when a job names none."""

    default_model: str | None = None
    models: list[ModelInfo] = Field(default_factory=list)


class LanguageInfo(_Response):
    """A language ``code_execution`` jobs can use on this server."""

    name: str
    version: str | None = None
    path: str | None = None


class LanguageListResponse(_Response):
    """``GET /v1/languages``: the languages available on this server."""

    languages: list[LanguageInfo] = Field(default_factory=list)


class ErrorBody(_Response):
    type: str
    message: str
    details: Any = None
    request_id: str | None = None


class ErrorEnvelope(_Response):
    """The body of every error response: ``{"error": {type, message, details, request_id}}``."""

    error: ErrorBody


# --- requests ---------------------------------------------------------------------------------

Tag = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TAG_LENGTH, pattern=TAG_PATTERN)
]


class JobSubmitRequest(BaseModel):
    """Body of ``POST /v1/jobs``. ``data`` is validated per job type by the server."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    job_type: str = Field(min_length=1, max_length=64)
    data: dict[str, Any]
    timeout: int = Field(default=60, ge=1, description="Wall-clock limit in seconds.")
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher runs first.")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    webhook_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_WEBHOOK_URL_LENGTH,
        description="Where to POST the job's end, signed (Standard Webhooks); see docs/api.md.",
    )


class CancelRequest(BaseModel):
    """Body of ``POST /v1/jobs/{job_id}/cancel`` (optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1000)


IdempotencyKey = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=IDEMPOTENCY_KEY_PATTERN)
]


class BatchJobRequest(JobSubmitRequest):
    """One item of ``POST /v1/jobs/batch``: ``POST /v1/jobs``'s body, plus the item's own
    optional ``idempotency_key`` (the same key returns the same job, within and across
    batches and single submits)."""

    idempotency_key: IdempotencyKey | None = None


class BatchSubmitRequest(BaseModel):
    """Body of ``POST /v1/jobs/batch``: 1 to ``MAX_BATCH_JOBS`` jobs, stored all or none."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[BatchJobRequest] = Field(min_length=1, max_length=MAX_BATCH_JOBS)


class JobsWaitRequest(BaseModel):
    """Body of ``POST /v1/jobs/wait``: answered once one of ``job_ids`` has ended, or after
    ``wait`` seconds."""

    model_config = ConfigDict(extra="forbid")

    job_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=MAX_BATCH_JOBS
    )
    wait: float = Field(default=0, ge=0, le=MAX_WAIT_SECONDS)


class BatchCancelRequest(CancelRequest):
    """Body of ``POST /v1/batches/{batch_id}/cancel`` (optional)."""


class WebhookEndpointRequest(BaseModel):
    """Body of ``POST /v1/webhooks``: a URL that receives the end of every job of the tenant
    whose event type is in ``events`` (omitted: every type)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=MAX_WEBHOOK_URL_LENGTH)
    events: list[WebhookEvent] | None = Field(default=None, min_length=1)


class WebhookEndpointUpdate(BaseModel):
    """Body of ``PATCH /v1/webhooks/{id}``: what to change. ``enabled: true`` re-enables an
    endpoint that was disabled (its target answered 410)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, max_length=MAX_WEBHOOK_URL_LENGTH)
    events: list[WebhookEvent] | None = Field(default=None, min_length=1)
    enabled: bool | None = None


class WebhookEndpointResponse(_Response):
    """A webhook endpoint. ``url`` is null for ``job-urls``, the key that signs the deliveries
    to jobs' own ``webhook_url``. ``secret`` (``whsec_...``) verifies the signatures;
    ``previous_secret`` still signs too until ``previous_until``, after a rotation."""

    id: str
    url: str | None
    events: list[str] | None
    secret: str | None = None
    previous_secret: str | None = None
    previous_until: datetime | None = None
    enabled: bool
    disabled_at: datetime | None = None
    disabled_reason: str | None = None
    created_at: datetime
    updated_at: datetime


class WebhookDeletedResponse(_Response):
    """``DELETE /v1/webhooks/{id}``: the endpoint is gone, its pending deliveries given up."""

    id: str
    deleted: bool


class WebhookEndpointListResponse(_Response):
    endpoints: list[WebhookEndpointResponse]


class WebhookAttemptResponse(_Response):
    """One attempt of a delivery: the receiver's status code, or why there was none."""

    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None


class WebhookDeliveryResponse(_Response):
    """One message about a job's end to one URL. ``id`` is its ``webhook-id``. ``state``:
    ``pending`` (``next_attempt_at`` says when), ``delivered`` or ``failed`` (given up)."""

    id: str
    url: str
    endpoint_id: str | None = None
    event_type: str
    state: Literal["pending", "delivered", "failed"]
    attempts: list[WebhookAttemptResponse]
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime


class WebhookDeliveryListResponse(_Response):
    job_id: str
    deliveries: list[WebhookDeliveryResponse]
