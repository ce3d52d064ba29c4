"""Translation between the domain and what the databases keep, shared by every backend.

Pure functions only: timestamps as sortable text (SQLite), JSON text, jobs and
API keys to and from plain column mappings, and the versioned schema scripts in ``sql/``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from deepexec_sdk.types import JobStatus

from ..domain import (
    ApiKey,
    IdempotencyConflicts,
    Job,
    JobError,
    JobSummary,
    NewJob,
    Tenant,
    TenantUsage,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

#: Column names of the ``jobs`` table: exactly the fields of ``Job``, in order.
JOB_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Job))
#: The columns a list reads: those of ``JobSummary`` (never ``data`` or ``result``).
JOB_SUMMARY_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(JobSummary))
#: Column names of the ``api_keys`` table: exactly the fields of ``ApiKey``, in order.
API_KEY_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ApiKey))
#: Column names of the ``webhook_endpoints`` table: the fields of ``WebhookEndpoint``.
ENDPOINT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(WebhookEndpoint))
#: Column names of the ``tenants`` table: the fields of ``Tenant``.
TENANT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Tenant))
#: Each tenant's queued and running jobs (both dialects): rows for ``usage_from_rows``.
TENANT_USAGE = (
    "SELECT tenant_id, status, count(*) AS n FROM jobs WHERE status IN ('PENDING', 'RUNNING') "
    "GROUP BY tenant_id, status"
)
#: The upsert of a tenant's settings (both dialects): every column but its id and creation.
TENANT_UPSERT = "ON CONFLICT (tenant_id) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in TENANT_COLUMNS if c not in ("tenant_id", "created_at")
)


# --- scalars ------------------------------------------------------------------------------------


def as_utc(dt: datetime) -> datetime:
    """``dt`` in UTC. Naive datetimes are refused: their instant is a guess."""
    if dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt!r}: the store needs timezone-aware datetimes")
    return dt.astimezone(UTC)


def ts_to_text(dt: datetime) -> str:
    """A timestamp as fixed-width UTC text with microseconds, so text order is time order and
    the value round-trips exactly (``2026-05-09T07:35:25.000042Z``)."""
    u = as_utc(dt)
    return (
        f"{u.year:04d}-{u.month:02d}-{u.day:02d}T"
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d}.{u.microsecond:06d}Z"
    )


def ts_from_text(text: str) -> datetime:
    """The inverse of ``ts_to_text``: a UTC-aware datetime (Python ≥ 3.11 reads the "Z")."""
    return datetime.fromisoformat(text)


def json_text(value: Any) -> str:
    """Compact JSON text. NaN and infinities are refused: they are not JSON, and PostgreSQL's
    ``jsonb`` would reject what SQLite accepted."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


# --- rows ---------------------------------------------------------------------------------------


def job_from_new(new: NewJob, job_id: str, now: datetime) -> Job:
    """The PENDING job a submission becomes."""
    created = as_utc(now)
    return Job(
        id=job_id,
        tenant_id=new.tenant_id,
        name=new.name,
        job_type=new.job_type,
        data=new.data,
        timeout=new.timeout,
        priority=new.priority,
        tags=tuple(new.tags),
        status=JobStatus.PENDING,
        created_at=created,
        updated_at=created,
        idempotency_key=new.idempotency_key,
        fingerprint=new.fingerprint,
        webhook_url=new.webhook_url,
        webhook_format=new.webhook_format,
    )


def job_to_fields(job: Job) -> dict[str, Any]:
    """A job as plain values per column: datetimes, dicts, a list of tags, the error as a dict."""
    fields = {name: getattr(job, name) for name in JOB_COLUMNS}
    fields["status"] = str(job.status)
    fields["tags"] = list(job.tags)
    fields["error"] = job.error.to_dict() if job.error is not None else None
    return fields


def _summary_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The values of a ``JobSummary``'s fields, which a ``Job`` has too, from ``row``."""
    error = row["error"]
    return {
        "id": row["id"],
        "tenant_id": row["tenant_id"],
        "name": row["name"],
        "job_type": row["job_type"],
        "timeout": row["timeout"],
        "priority": row["priority"],
        "tags": tuple(row["tags"]),
        "status": JobStatus(row["status"]),
        "created_at": _utc(row["created_at"]),
        "updated_at": _utc(row["updated_at"]),
        "started_at": _utc_or_none(row["started_at"]),
        "finished_at": _utc_or_none(row["finished_at"]),
        "progress": row["progress"],
        "progress_message": row["progress_message"],
        "error": JobError(type=error["type"], message=error["message"]) if error else None,
        "cancel_requested_at": _utc_or_none(row["cancel_requested_at"]),
        "cancel_reason": row["cancel_reason"],
    }


def job_from_fields(row: Mapping[str, Any]) -> Job:
    """A job from plain values per column (the shape ``job_to_fields`` makes). Datetimes come
    back in UTC whatever zone the driver used."""
    return Job(
        **_summary_fields(row),
        data=row["data"],
        result=row["result"],
        lease_owner=row["lease_owner"],
        lease_expires_at=_utc_or_none(row["lease_expires_at"]),
        idempotency_key=row["idempotency_key"],
        fingerprint=row["fingerprint"],
        result_purged_at=_utc_or_none(row["result_purged_at"]),
        webhook_url=row["webhook_url"],
        webhook_format=row["webhook_format"],
    )


def job_summary_from_fields(row: Mapping[str, Any]) -> JobSummary:
    """A job summary from plain values per column (``JOB_SUMMARY_COLUMNS`` at least)."""
    return JobSummary(**_summary_fields(row))


def api_key_from_fields(row: Mapping[str, Any]) -> ApiKey:
    """An API key from plain values per column."""
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        key_hash=row["key_hash"],
        created_at=_utc(row["created_at"]),
        revoked_at=_utc_or_none(row["revoked_at"]),
    )


def tenant_from_fields(row: Mapping[str, Any]) -> Tenant:
    """A tenant's settings from plain values per column."""
    weight, rate = row["weight"], row["submit_rate"]
    return Tenant(
        tenant_id=row["tenant_id"],
        created_at=_utc(row["created_at"]),
        updated_at=_utc(row["updated_at"]),
        weight=None if weight is None else float(weight),
        max_running=row["max_running"],
        max_pending=row["max_pending"],
        submit_rate=None if rate is None else float(rate),
        max_timeout=row["max_timeout"],
        max_running_by_type=row["max_running_by_type"],
        code_limits=row["code_limits"],
    )


def usage_from_rows(rows: Iterable[tuple[str, str, int]]) -> dict[str, TenantUsage]:
    """``(tenant_id, status, count)`` rows (PENDING and RUNNING) as each tenant's usage."""
    usage: dict[str, TenantUsage] = {}
    for tenant_id, status, n in rows:
        was = usage.get(tenant_id, TenantUsage())
        if status == "PENDING":
            usage[tenant_id] = dataclasses.replace(was, pending=int(n))
        else:
            usage[tenant_id] = dataclasses.replace(was, running=int(n))
    return usage


def endpoint_to_fields(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as plain values per column (``ENDPOINT_COLUMNS``), events as a list."""
    fields = {name: getattr(endpoint, name) for name in ENDPOINT_COLUMNS}
    fields["events"] = None if endpoint.events is None else list(endpoint.events)
    return fields


def endpoint_from_fields(row: Mapping[str, Any]) -> WebhookEndpoint:
    """A webhook endpoint from plain values per column."""
    events = row["events"]
    return WebhookEndpoint(
        id=row["id"],
        tenant_id=row["tenant_id"],
        url=row["url"],
        events=None if events is None else tuple(events),
        secret=row["secret"],
        created_at=_utc(row["created_at"]),
        updated_at=_utc(row["updated_at"]),
        previous_secret=row["previous_secret"],
        previous_until=_utc_or_none(row["previous_until"]),
        disabled_at=_utc_or_none(row["disabled_at"]),
        disabled_reason=row["disabled_reason"],
    )


def attempt_from_fields(row: Mapping[str, Any]) -> WebhookAttempt:
    """One logged delivery attempt from plain values per column."""
    return WebhookAttempt(
        attempt=row["attempt"],
        started_at=_utc(row["started_at"]),
        duration_ms=row["duration_ms"],
        status_code=row["status_code"],
        error=row["error_message"],
    )


def delivery_from_fields(
    row: Mapping[str, Any], log: Sequence[WebhookAttempt] = ()
) -> WebhookDelivery:
    """A webhook delivery from plain values per column, with its attempts if read."""
    return WebhookDelivery(
        id=row["id"],
        tenant_id=row["tenant_id"],
        job_id=row["job_id"],
        endpoint_id=row["endpoint_id"],
        url=row["url"],
        format=row["format"],
        event_type=row["event_type"],
        state=row["state"],
        attempts=row["attempts"],
        created_at=_utc(row["created_at"]),
        updated_at=_utc(row["updated_at"]),
        next_attempt_at=_utc_or_none(row["next_attempt_at"]),
        body=row["body"],
        delivered_at=_utc_or_none(row["delivered_at"]),
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        log=tuple(log),
    )


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


# --- the status body, rendered by the database ---------------------------------------------------

#: The API's status body (``MCPJobStatusResponse``, as ``views.job_status`` fills it), key by
#: key: the column it comes from and its kind. "value": the column as it is; "json": a JSON
#: column; "time": a timestamp, written as ``ts_to_text`` writes it; "progress": the column,
#: except that a COMPLETED job reports 100 whatever its program last said. Each store turns this
#: into one ``SELECT`` that returns the body as text, so a status read builds no ``Job`` and no
#: model (``Store.get_status_json``); tests/test_store_contract.py checks it against the view.
STATUS_JSON_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("job_id", "id", "value"),
    ("name", "name", "value"),
    ("job_type", "job_type", "value"),
    ("status", "status", "value"),
    ("progress", "progress", "progress"),
    ("progress_message", "progress_message", "value"),
    ("result", "result", "json"),
    ("error", "error", "json"),
    ("tags", "tags", "json"),
    ("priority", "priority", "value"),
    ("timeout", "timeout", "value"),
    ("created_at", "created_at", "time"),
    ("started_at", "started_at", "time"),
    ("finished_at", "finished_at", "time"),
    ("updated_at", "updated_at", "time"),
    ("cancel_requested_at", "cancel_requested_at", "time"),
    ("cancel_reason", "cancel_reason", "value"),
    ("result_purged_at", "result_purged_at", "time"),
)


def status_json_select(build_object: str, expressions: Mapping[str, str], body: str = "{}") -> str:
    """``SELECT status, <build_object>('job_id', id, ...) AS body``: the job's status and its
    status body, from one row of ``jobs`` (the caller appends the ``WHERE``). ``expressions``
    gives the dialect's SQL for the "json" and "time" kinds where a column will not do as it
    is, and ``body`` the whole object's (as text); ``{}`` stands for the column or object."""
    kinds = {
        "value": "{}",
        "json": "{}",
        "time": "{}",
        "progress": f"CASE WHEN status = '{JobStatus.COMPLETED}' THEN 100 ELSE {{}} END",
        **expressions,
    }
    pairs = ", ".join(
        f"'{key}', {kinds[kind].format(column)}" for key, column, kind in STATUS_JSON_FIELDS
    )
    return f"SELECT status, {body.format(f'{build_object}({pairs})')} AS body FROM jobs"


# --- schema -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Migration:
    """One schema script: ``sql/<dialect>_<version>_<name>.sql``."""

    version: int
    name: str
    script: str


def migrations(dialect: str) -> list[Migration]:
    """The schema scripts of one dialect (``sqlite`` or ``postgres``), oldest first."""
    found = []
    for entry in resources.files(__name__.rpartition(".")[0]).joinpath("sql").iterdir():
        stem, dot, ext = entry.name.partition(".")
        parts = stem.split("_", 2)
        if ext != "sql" or not dot or len(parts) != 3 or parts[0] != dialect:
            continue
        found.append(Migration(int(parts[1]), parts[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} schema scripts are not numbered 1..n: {versions}")
    return found


def pending(available: Sequence[Migration], current_version: int) -> list[Migration]:
    """The migrations a database at ``current_version`` still needs. A database newer than this
    code is refused rather than used blindly."""
    latest = available[-1].version if available else 0
    if current_version > latest:
        raise RuntimeError(
            f"the database schema is version {current_version}, newer than this DeepExec "
            f"understands ({latest}); upgrade DeepExec"
        )
    return [m for m in available if m.version > current_version]


def batch_items(jobs: Sequence[Job], holders: Sequence[Job | None]) -> tuple[list[Job], list[bool]]:
    """A batch's jobs as stored, and whether each insert created its job: ``holders[i]`` is
    None where ``jobs[i]`` was inserted, else the earlier job holding its idempotency key.
    Raises ``IdempotencyConflicts`` naming the items whose earlier job was submitted with
    another request (another fingerprint)."""
    stored: list[Job] = []
    conflicts: list[tuple[int, str]] = []
    for position, (job, earlier) in enumerate(zip(jobs, holders, strict=True)):
        if earlier is not None and earlier.fingerprint != job.fingerprint:
            conflicts.append((position, earlier.id))
        stored.append(job if earlier is None else earlier)
    if conflicts:
        raise IdempotencyConflicts(conflicts)
    return stored, [earlier is None for earlier in holders]
