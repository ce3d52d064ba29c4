"""The store: the source of truth for jobs and API keys, and the owner of the queue.

Written against the domain, never against SQL: ``SQLiteStore`` and ``PostgresStore`` implement
this protocol and pass one contract test suite (tests/test_store_contract.py).

Every state change is one atomic, conditional update, so concurrent runners, reapers and API
calls can never move a job along a transition ``domain.TRANSITIONS`` forbids.

The driver's exceptions (sqlite3's, psycopg's) do not leave a store: each becomes
``errors.StoreError`` (``driver_failure``), logged with the driver's message.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Collection
from datetime import datetime
from typing import Any, Protocol

import psycopg

from deepexec_sdk.types import JobStatus

from ..domain import (
    DEFAULT_SHARE,
    ApiKey,
    AttemptOutcome,
    Batch,
    CreatedBatch,
    Job,
    JobError,
    JobFilter,
    JobSummary,
    NewBatch,
    NewJob,
    SharePolicy,
    Tenant,
    TenantUsage,
    WebhookDelivery,
    WebhookEndpoint,
)
from ..errors import StoreError, StoreFull, StoreUnavailable

logger = logging.getLogger("deepexec_server.store")


class Store(Protocol):
    async def open(self) -> None:
        """Connect and create or migrate the schema. Idempotent."""

    async def close(self) -> None:
        """Release connections."""

    async def ping(self) -> None:
        """Raise if the database does not answer (used by /readyz)."""

    # --- jobs -----------------------------------------------------------------------------------

    async def create_job(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        """Insert a PENDING job with a fresh id. If ``new.idempotency_key`` is set and the tenant
        already has a job with that key, insert nothing and return ``(existing, False)``; the
        caller compares fingerprints. Otherwise return ``(job, True)``. Safe under races: two
        concurrent creates with one key yield one job."""

    async def get_job(self, job_id: str, tenant_id: str | None = None) -> Job | None:
        """The job, or None if it does not exist or (when ``tenant_id`` is given) belongs to
        another tenant."""

    async def job_for_key(self, tenant_id: str, idempotency_key: str) -> Job | None:
        """The tenant's job stored under ``idempotency_key``; None if it has none."""

    async def get_status_json(self, job_id: str, tenant_id: str) -> tuple[bytes, bool] | None:
        """The tenant's job as the API's status body (the JSON of ``views.job_status``, rendered
        by the database from ``_codec.STATUS_JSON_FIELDS``) and whether it is terminal; None as
        for ``get_job``. Status reads are the commonest request: this one builds no ``Job``."""

    async def list_jobs(
        self,
        tenant_id: str,
        flt: JobFilter,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[JobSummary]:
        """Up to ``limit`` of the tenant's jobs matching ``flt``, newest first (``created_at``
        DESC, then ``id`` DESC), as summaries: ``data`` and ``result`` are not read. ``after``
        is the ``(created_at, id)`` of the last job of the previous page: only jobs strictly
        after it in that order are returned."""

    async def claim_next(
        self,
        job_types: Collection[str],
        owner: str,
        lease_expires_at: datetime,
        now: datetime,
        policy: SharePolicy = DEFAULT_SHARE,
    ) -> Job | None:
        """Atomically take the PENDING job of one of ``job_types`` that fair share gives the
        slot (``_fair``): of the tenants under their ``max_running`` (and the job type under
        their ``max_running_by_type``), the one with the fewest running jobs per unit of
        weight, then the one whose turn it is, and of its jobs the highest ``priority``, then
        oldest ``created_at``, then ``id``. A tenant without its own ``max_running`` takes
        ``policy``'s. The job becomes RUNNING with
        ``started_at = now``, ``lease_owner = owner`` and ``lease_expires_at``. None if
        nothing is claimable. Safe across processes: a job is claimed by exactly one caller,
        and the choice is made once for all of them."""

    async def renew_leases(
        self, owner: str, job_ids: Collection[str], lease_expires_at: datetime
    ) -> set[str]:
        """Extend the leases of ``owner``'s RUNNING jobs among ``job_ids``. Returns the ids (of
        those) whose cancellation has been requested, so a runner in another process than the
        API learns of a cancel."""

    async def set_progress(
        self, job_id: str, progress: int | None, message: str | None, now: datetime
    ) -> Job | None:
        """Record progress (0-100) and its message on a RUNNING job; None if it is not running."""

    async def request_cancel(
        self, job_id: str, tenant_id: str, reason: str | None, now: datetime
    ) -> Job | None:
        """Cancel on behalf of a tenant. A PENDING job becomes CANCELED at once (``finished_at``
        and ``cancel_requested_at`` = now). A RUNNING job gets ``cancel_requested_at`` = now (if
        not already set) and ``cancel_reason``; its runner finishes it. A terminal job is
        returned unchanged. None if the tenant has no such job."""

    async def finish_job(
        self,
        job_id: str,
        owner: str | None,
        status: JobStatus,
        result: dict[str, Any] | None,
        error: JobError | None,
        now: datetime,
    ) -> Job | None:
        """Move a RUNNING job to the terminal ``status`` with its result and error, clearing the
        lease and setting ``finished_at``. When ``owner`` is given, only if the job's lease
        belongs to it (a reaped job is never overwritten by a runner that came back). Returns
        the updated job, or None if nothing was updated."""

    async def purge_results_before(
        self, finished_before: datetime, now: datetime, limit: int
    ) -> list[str]:
        """Purge the results of up to ``limit`` jobs that finished before ``finished_before``,
        oldest first: ``result`` becomes None, ``result_purged_at = now`` (and ``updated_at``),
        and input data over ``PURGED_DATA_KEPT_BYTES`` becomes ``{}``. The rest of the job
        stays. Returns the ids purged; a job whose result is already purged (or that has
        none) is left alone."""

    async def purge_results_over(
        self, tenant_max_bytes: int, now: datetime, limit: int
    ) -> list[str]:
        """Purge, as ``purge_results_before`` does, up to ``limit`` results of tenants that
        keep more than ``tenant_max_bytes`` bytes of results: for each, its oldest results
        (by ``finished_at``) until its newest ones fit under the cap. Returns the ids."""

    async def reap_running(self, lease_expired_before: datetime, now: datetime) -> list[Job]:
        """End every RUNNING job whose lease expires before ``lease_expired_before`` as FAILED
        with ``error.type = "interrupted"`` (their runner died). Pass a far-future cutoff to
        reap every running job, as a single embedded server does at start. Returns them."""

    async def count_by_status(self) -> dict[JobStatus, int]:
        """Number of jobs per status, across tenants (for /metrics)."""

    # --- batches --------------------------------------------------------------------------------

    async def create_batch(self, new: NewBatch, now: datetime) -> CreatedBatch:
        """Store a batch and its jobs (PENDING, fresh ids) in one transaction. An item whose
        idempotency key the tenant already holds takes that job instead, if its fingerprint
        matches; if any does not, raise ``IdempotencyConflicts`` and store nothing. If
        ``new.idempotency_key`` names a batch of the tenant, store nothing and return that
        batch (``replayed``); the caller compares fingerprints."""

    async def batch_progress(
        self, batch_id: str, tenant_id: str
    ) -> tuple[Batch, dict[JobStatus, int]] | None:
        """The tenant's batch and its jobs' number per status (every status, zero included);
        None if the tenant has no such batch."""

    async def batch_job_ids(self, batch_id: str, tenant_id: str) -> list[str] | None:
        """The ids of the batch's jobs by position; None if the tenant has no such batch."""

    async def list_batch_jobs(
        self,
        batch_id: str,
        tenant_id: str,
        status: JobStatus | None,
        limit: int,
        after: int | None = None,
    ) -> list[tuple[int, JobSummary]] | None:
        """Up to ``limit`` of the batch's jobs (with ``status`` if given) by position, each with
        its position; only positions after ``after``. None if the tenant has no such batch."""

    async def cancel_batch(
        self, batch_id: str, tenant_id: str, reason: str | None, now: datetime
    ) -> list[Job] | None:
        """``request_cancel`` for every job of the batch that is PENDING, or RUNNING with no
        cancel requested yet, in one statement. Returns those jobs as changed; None if the
        tenant has no such batch."""

    async def job_states(
        self, job_ids: Collection[str], tenant_id: str
    ) -> dict[str, tuple[JobStatus, int]]:
        """Status and stored result bytes of those of ``job_ids`` the tenant has."""

    async def get_jobs(self, job_ids: Collection[str], tenant_id: str) -> list[Job]:
        """Those of ``job_ids`` the tenant has, in full, in no particular order."""

    # --- tenants --------------------------------------------------------------------------------

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        """The operator's settings for the tenant; None if it has none (all defaults)."""

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant with settings, by id."""

    async def save_tenant(self, tenant: Tenant) -> Tenant:
        """Write every setting of the tenant, creating it if new (its first ``created_at`` is
        kept); returns it as stored."""

    async def delete_tenant(self, tenant_id: str) -> bool:
        """Forget the tenant's settings (it takes the defaults again); False if it had none."""

    async def count_pending(self, tenant_id: str | None = None) -> int:
        """The tenant's PENDING jobs; every tenant's when None."""

    async def tenant_usage(self) -> dict[str, TenantUsage]:
        """Each tenant with jobs queued or running, and how many."""

    # --- webhooks -------------------------------------------------------------------------------
    # A job's deliveries are written by the store itself, in the transaction that ends the job
    # (a trigger in both databases): one to the job's ``webhook_url``, one to each enabled
    # endpoint of its tenant whose events include the job's (``domain.JOB_EVENT_TYPES``).

    async def create_endpoint(self, endpoint: WebhookEndpoint) -> None:
        """Store a new endpoint."""

    async def save_endpoint(self, endpoint: WebhookEndpoint) -> WebhookEndpoint | None:
        """Write every field of an existing endpoint of ``endpoint.tenant_id``; None if it has
        none with that id. Re-enabling clears ``disabled_at`` and ``disabled_reason``."""

    async def get_endpoint(self, endpoint_id: str, tenant_id: str) -> WebhookEndpoint | None:
        """The tenant's endpoint (with a URL or not)."""

    async def list_endpoints(self, tenant_id: str) -> list[WebhookEndpoint]:
        """The tenant's endpoints that have a URL, oldest first."""

    async def delete_endpoint(self, endpoint_id: str, tenant_id: str, now: datetime) -> bool:
        """Delete the tenant's endpoint (with a URL) and give up its pending deliveries."""

    async def job_url_key(self, fresh: WebhookEndpoint) -> WebhookEndpoint:
        """The endpoint without a URL of ``fresh.tenant_id`` (the key of its jobs' own URLs):
        the stored one, or ``fresh`` stored now. Safe under races: one per tenant."""

    async def disable_endpoint(self, endpoint_id: str, reason: str, now: datetime) -> None:
        """Disable an endpoint (its target answered 410) and give up its pending deliveries."""

    async def claim_deliveries(
        self, owner: str, lease_expires_at: datetime, now: datetime, limit: int
    ) -> list[WebhookDelivery]:
        """Take up to ``limit`` pending deliveries that are due (``next_attempt_at <= now``)
        and not leased by another sender, soonest first, leased to ``owner`` until
        ``lease_expires_at``. Safe across processes: a delivery is taken by one sender."""

    async def finish_attempt(
        self, delivery: WebhookDelivery, owner: str, outcome: AttemptOutcome, now: datetime
    ) -> bool:
        """Log ``outcome.attempt`` and move the delivery to ``outcome.state`` (its body, now
        fixed; the lease released), and disable its endpoint when ``outcome`` says so; all in
        one transaction, only while ``owner`` holds the lease. False if it no longer does."""

    async def next_delivery_at(self) -> datetime | None:
        """When the soonest pending delivery may be taken: due, and its lease (if any)
        expired. None: there is none."""

    async def job_deliveries(self, job_id: str, tenant_id: str) -> list[WebhookDelivery]:
        """The deliveries of the tenant's job, oldest first, each with its attempts."""

    # --- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKey) -> None:
        """Store a new key (its hash only)."""

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        """The key with this SHA-256 hash, revoked or not."""

    async def list_api_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        """All keys (of one tenant if given), oldest first."""

    async def revoke_api_key(self, key_id: str, now: datetime) -> ApiKey | None:
        """Mark a key revoked; None if no such key. Revoking twice keeps the first time."""


#: Input data larger than this (bytes of JSON) is purged with the result; smaller is kept.
PURGED_DATA_KEPT_BYTES = 64 * 1024


def interrupted_error() -> JobError:
    return JobError(
        type="interrupted",
        message="the runner executing this job stopped (server crash or restart); "
        "the job was not retried, so its code ran at most once",
    )


#: SQLite's result codes (the low byte of ``sqlite_errorcode``) for a full disk, and for a
#: database another connection holds or that cannot be read now.
_SQLITE_FULL = 13
_SQLITE_TRANSIENT = frozenset({5, 6, 10, 14})  # BUSY, LOCKED, IOERR, CANTOPEN
#: Seconds a client should wait before retrying while the database is unreachable.
STORE_RETRY_AFTER_S = 1.0


def driver_failure(store: object, exc: Exception) -> StoreError:
    """The ``StoreError`` to raise (``from exc``) for the driver's ``exc``; logs it, since the
    error reaching callers says no more than what kind of failure it was: a full disk
    (``StoreFull``, 507), a database unreachable now (``StoreUnavailable``, 503 with
    Retry-After: PostgreSQL down or restarting, the pool exhausted, SQLite busy), or else a
    plain ``StoreError`` (500)."""
    logger.error("%r failed: %s: %s", store, type(exc).__name__, exc, exc_info=exc)
    if isinstance(exc, psycopg.errors.DiskFull):
        return StoreFull("the job store's disk is full; nothing was written")
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailable(
            "the job store is unreachable; try again shortly", retry_after=STORE_RETRY_AFTER_S
        )
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.Error) and code is not None:
        if code & 0xFF == _SQLITE_FULL:
            return StoreFull("the job store's disk is full; nothing was written")
        if code & 0xFF in _SQLITE_TRANSIENT:
            return StoreUnavailable(
                "the job store is busy or unreadable; try again shortly",
                retry_after=STORE_RETRY_AFTER_S,
            )
    return StoreError()
