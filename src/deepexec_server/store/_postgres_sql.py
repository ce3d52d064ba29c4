"""The PostgreSQL store's statements: every query of more than a line, and the columns they
write, for ``postgres.PostgresStore``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from ..domain import Job
from ._codec import (
    API_KEY_COLUMNS,
    JOB_COLUMNS,
    JOB_SUMMARY_COLUMNS,
    as_utc,
    job_to_fields,
    json_text,
    status_json_select,
)
from ._fair import choice_sql
from .base import PURGED_DATA_KEPT_BYTES

#: The columns of ``jobs`` that hold JSON (``jsonb``).
JSON_COLUMNS = frozenset({"data", "result", "error"})


def jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value, dumps=json_text)


def param(value: Any) -> Any:
    """A plain value as a query parameter; datetimes must be aware (naive ones are refused)."""
    return as_utc(value) if isinstance(value, datetime) else value


def insert_values(job: Job) -> list[Any]:
    """A job's column values, in ``INSERT_JOB``'s order."""
    return [jsonb(v) if k in JSON_COLUMNS else param(v) for k, v in job_to_fields(job).items()]


INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(JOB_COLUMNS))}) "
    "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
    "RETURNING id"
)
#: A list reads the summary columns only: results and input data can be megabytes each.
SUMMARY_COLUMNS = ", ".join(JOB_SUMMARY_COLUMNS)
INSERT_KEY = (
    f"INSERT INTO api_keys ({', '.join(API_KEY_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(API_KEY_COLUMNS))})"
)
#: The status body (see ``_codec.STATUS_JSON_FIELDS``): timestamps written as the API writes them,
#: in UTC with microseconds; the object as text, not parsed by the driver.
STATUS_JSON = (
    status_json_select(
        "json_build_object",
        {"time": """to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""},
        "{}::text",
    )
    + " WHERE id = %s AND tenant_id = %s"
)


def claim_sql(n_types: int) -> str:
    """Claim the job fair share gives a slot of one of ``n_types`` job types (``_fair``), in
    one statement. Its row carries ``chosen``: NULL when nothing is claimable; set, with the
    job's columns NULL, when the chosen job changed as it was taken (a cancel crossed it:
    choose again). Parameters: ``choice_params``, then the SET's four."""
    return f"""
WITH chosen AS ({choice_sql("postgres", n_types)}),
claimed AS (
    UPDATE jobs
    SET status = 'RUNNING', started_at = %s, updated_at = %s, lease_owner = %s,
        lease_expires_at = %s
    FROM chosen
    WHERE jobs.id = chosen.id AND jobs.status = 'PENDING' AND jobs.cancel_requested_at IS NULL
    RETURNING jobs.*
)
SELECT (SELECT id FROM chosen) AS chosen, claimed.* FROM (SELECT 1) AS one
LEFT JOIN claimed ON true
"""


# One statement for both cases; every expression reads the row as it was before. A repeated
# request keeps the first time and reason.
CANCEL_SET = """
    status = CASE WHEN status = 'PENDING' THEN 'CANCELED' ELSE status END,
    finished_at = CASE WHEN status = 'PENDING' THEN %(now)s ELSE finished_at END,
    cancel_reason = CASE WHEN cancel_requested_at IS NULL THEN %(reason)s::text
                         ELSE COALESCE(cancel_reason, %(reason)s::text) END,
    cancel_requested_at = COALESCE(cancel_requested_at, %(now)s),
    updated_at = %(now)s
"""
CANCEL = f"""
UPDATE jobs SET {CANCEL_SET}
WHERE id = %(id)s AND tenant_id = %(tenant)s AND status IN ('PENDING', 'RUNNING')
RETURNING *
"""
#: ``CANCEL`` for the jobs of a batch that are pending, or running with no cancel asked yet.
CANCEL_BATCH = f"""
UPDATE jobs SET {CANCEL_SET}
WHERE tenant_id = %(tenant)s
    AND (status = 'PENDING' OR (status = 'RUNNING' AND cancel_requested_at IS NULL))
    AND id IN (SELECT job_id FROM batch_jobs WHERE batch_id = %(batch)s)
RETURNING *
"""
FINISH = """
UPDATE jobs SET status = %s, result = %s::jsonb, result_bytes = %s, error = %s,
    finished_at = %s, updated_at = %s, lease_owner = NULL, lease_expires_at = NULL
WHERE id = %s AND status = 'RUNNING'
"""
REAP = """
UPDATE jobs SET status = 'FAILED', error = %s, finished_at = %s, updated_at = %s,
    lease_owner = NULL, lease_expires_at = NULL
WHERE status = 'RUNNING' AND (lease_expires_at IS NULL OR lease_expires_at < %s)
RETURNING *
"""
# Large input data goes too; a small one stays, for a reader's reference. ``result_bytes > 0``
# again outside the subquery: a concurrent purge of the same rows leaves them alone.
PURGE = f"""
UPDATE jobs SET result = NULL, result_bytes = 0, result_purged_at = %s, updated_at = %s,
    data = CASE WHEN octet_length(data::text) > {PURGED_DATA_KEPT_BYTES:d} THEN '{{{{}}}}'::jsonb
                ELSE data END
WHERE result_bytes > 0 AND id IN ({{inner}})
RETURNING id
"""
PURGE_BEFORE = PURGE.format(
    inner="SELECT id FROM jobs WHERE result_bytes > 0 AND finished_at < %s "
    "ORDER BY finished_at, id LIMIT %s"
)
# Per tenant, newest first, the bytes of its results up to each job: the jobs at which that
# running total passes the cap, and all older ones, are purged.
PURGE_OVER = PURGE.format(
    inner="SELECT id FROM (SELECT id, finished_at, SUM(result_bytes) OVER ("
    "PARTITION BY tenant_id ORDER BY finished_at DESC, id DESC) AS newer "
    "FROM jobs WHERE result_bytes > 0) AS t WHERE newer > %s ORDER BY finished_at, id LIMIT %s"
)
SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
