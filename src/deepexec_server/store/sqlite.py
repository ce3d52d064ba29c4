"""The SQLite store: the embedded default, one file and no set-up.

All database work runs on one dedicated thread that owns the only connection, awaited from the
event loop, so the loop never blocks and this process's writes are serialized. Other processes
opening the same file are kept consistent by SQLite's own locking (WAL mode, a busy timeout):
every state change is a single conditional ``UPDATE`` (with ``RETURNING`` on SQLite ≥ 3.35, else
the same statements inside ``BEGIN IMMEDIATE``). The connections are in ``_sqlite_db``; this
module holds the queries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from deepexec_sdk.types import TERMINAL_STATUSES, JobStatus

from ..domain import (
    DEFAULT_SHARE,
    ApiKey,
    Job,
    JobError,
    JobFilter,
    JobSummary,
    NewJob,
    SharePolicy,
    check_transition,
    new_job_id,
)
from ._batch import GroupCommit
from ._codec import (
    API_KEY_COLUMNS,
    JOB_SUMMARY_COLUMNS,
    api_key_from_fields,
    job_from_fields,
    job_from_new,
    job_summary_from_fields,
    json_text,
    status_json_select,
    ts_to_text,
)
from ._fair import choice_params, choice_sql
from ._sqlite_batches import CANCEL_SET, SQLiteBatches, cancel_params, insert_job, job_values
from ._sqlite_db import chunks, fetch_one, from_db, marks, size_of, to_db
from ._sqlite_tenants import SQLiteTenants
from ._sqlite_webhooks import SQLiteWebhooks
from .base import PURGED_DATA_KEPT_BYTES, interrupted_error

#: The status body (see ``_codec.STATUS_JSON_FIELDS``): timestamps are kept as the API writes
#: them, and ``json()`` marks a JSON column's text as JSON rather than a string.
_STATUS_JSON = (
    status_json_select("json_object", {"json": "json({})"}) + " WHERE id = ? AND tenant_id = ?"
)
#: A list reads the summary columns only: results and input data can be megabytes each.
_SUMMARY_COLUMNS = ", ".join(JOB_SUMMARY_COLUMNS)
_INSERT_KEY = (
    f"INSERT INTO api_keys ({', '.join(API_KEY_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(API_KEY_COLUMNS))})"
)


class SQLiteStore(SQLiteBatches, SQLiteWebhooks, SQLiteTenants):
    """A ``Store`` in one SQLite file (WAL mode). Safe to share between processes on one host;
    for several hosts use ``PostgresStore``."""

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 10.0, returning: bool | None = None
    ) -> None:
        """See ``SQLiteDatabase``."""
        super().__init__(path, busy_timeout=busy_timeout, returning=returning)
        self._inserts = GroupCommit(self._insert_many, self._insert_one)

    # --- jobs -----------------------------------------------------------------------------------

    async def create_job(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        """See ``Store.create_job``. Concurrent submits share one transaction (``_batch``)."""
        job = job_from_new(new, new_job_id(), now)
        existing = await self._inserts.submit(job)
        if existing is None:
            return job, True
        return job_from_fields(from_db(existing)), False

    async def _insert_one(self, job: Job) -> sqlite3.Row | None:
        values = job_values(job)
        return await self._write(lambda conn: insert_job(conn, job, values), size_of(values))

    async def _insert_many(self, jobs: Sequence[Job]) -> list[sqlite3.Row | None]:
        values = [job_values(job) for job in jobs]

        def op(conn: sqlite3.Connection) -> list[sqlite3.Row | None]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = [insert_job(conn, job, v) for job, v in zip(jobs, values, strict=True)]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return rows

        return await self._write(op, sum(size_of(v) for v in values))

    async def get_job(self, job_id: str, tenant_id: str | None = None) -> Job | None:
        """See ``Store.get_job``."""
        sql, params = "SELECT * FROM jobs WHERE id = ?", [job_id]
        if tenant_id is not None:
            sql, params = sql + " AND tenant_id = ?", [job_id, tenant_id]
        row = await self._read_one(sql, params)
        return None if row is None else job_from_fields(from_db(row))

    async def job_for_key(self, tenant_id: str, idempotency_key: str) -> Job | None:
        """See ``Store.job_for_key``."""
        row = await self._read_one(
            "SELECT * FROM jobs WHERE tenant_id = ? AND idempotency_key = ?",
            [tenant_id, idempotency_key],
        )
        return None if row is None else job_from_fields(from_db(row))

    async def get_status_json(self, job_id: str, tenant_id: str) -> tuple[bytes, bool] | None:
        """See ``Store.get_status_json``."""
        row = await self._read_one(_STATUS_JSON, [job_id, tenant_id])
        if row is None:
            return None
        status, body = row
        return body.encode(), status in TERMINAL_STATUSES

    async def list_jobs(
        self,
        tenant_id: str,
        flt: JobFilter,
        limit: int,
        after: tuple[datetime, str] | None = None,
    ) -> list[JobSummary]:
        """See ``Store.list_jobs``."""
        if limit <= 0:
            return []
        where = ["tenant_id = ?"]
        params: list[Any] = [tenant_id]
        if flt.status is not None:
            where.append("status = ?")
            params.append(str(flt.status))
        if flt.name is not None:
            where.append("name = ?")
            params.append(flt.name)
        for tag in dict.fromkeys(flt.tags):
            where.append("EXISTS (SELECT 1 FROM json_each(jobs.tags) AS t WHERE t.value = ?)")
            params.append(tag)
        if after is not None:
            at = ts_to_text(after[0])
            where.append("(created_at < ? OR (created_at = ? AND id < ?))")
            params += [at, at, after[1]]
        sql = (
            f"SELECT {_SUMMARY_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT ?"
        )
        params.append(limit)
        rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        return [job_summary_from_fields(from_db(r)) for r in rows]

    async def claim_next(
        self,
        job_types: Collection[str],
        owner: str,
        lease_expires_at: datetime,
        now: datetime,
        policy: SharePolicy = DEFAULT_SHARE,
    ) -> Job | None:
        """See ``Store.claim_next``: one statement, so the choice and the claim are one step
        under SQLite's write lock."""
        types = list(dict.fromkeys(job_types))
        if not types:
            return None
        at = ts_to_text(now)
        set_sql = "status = 'RUNNING', started_at = ?, updated_at = ?, lease_owner = ?, "
        set_sql += "lease_expires_at = ?"
        where_sql = f"status = 'PENDING' AND id = ({choice_sql('sqlite', len(types))})"
        set_params = [at, at, owner, ts_to_text(lease_expires_at)]
        where_params = choice_params(types, policy)
        rows = await self._write(
            lambda conn: self._update(conn, "jobs", set_sql, set_params, where_sql, where_params)
        )
        return job_from_fields(from_db(rows[0])) if rows else None

    async def renew_leases(
        self, owner: str, job_ids: Collection[str], lease_expires_at: datetime
    ) -> set[str]:
        """See ``Store.renew_leases``."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return set()
        until = ts_to_text(lease_expires_at)

        def op(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            rows: list[sqlite3.Row] = []
            for chunk in chunks(ids):
                where = f"status = 'RUNNING' AND lease_owner = ? AND id IN ({marks(len(chunk))})"
                rows += self._update(
                    conn, "jobs", "lease_expires_at = ?", [until], where, [owner, *chunk]
                )
            return rows

        rows = await self._run(op)
        return {r["id"] for r in rows if r["cancel_requested_at"] is not None}

    async def set_progress(
        self, job_id: str, progress: int | None, message: str | None, now: datetime
    ) -> Job | None:
        """See ``Store.set_progress``."""
        set_params = [progress, message, ts_to_text(now)]
        rows = await self._write(
            lambda conn: self._update(
                conn,
                "jobs",
                "progress = ?, progress_message = ?, updated_at = ?",
                set_params,
                "id = ? AND status = 'RUNNING'",
                [job_id],
            )
        )
        return job_from_fields(from_db(rows[0])) if rows else None

    async def request_cancel(
        self, job_id: str, tenant_id: str, reason: str | None, now: datetime
    ) -> Job | None:
        """See ``Store.request_cancel``. A repeated request keeps the first time and reason."""
        set_sql, set_params = CANCEL_SET, cancel_params(reason, now)
        where_sql = "id = ? AND tenant_id = ? AND status IN ('PENDING', 'RUNNING')"

        def op(conn: sqlite3.Connection) -> sqlite3.Row | None:
            rows = self._update(conn, "jobs", set_sql, set_params, where_sql, [job_id, tenant_id])
            if rows:
                return rows[0]
            return fetch_one(
                conn, "SELECT * FROM jobs WHERE id = ? AND tenant_id = ?", [job_id, tenant_id]
            )

        row = await self._run(op)
        return None if row is None else job_from_fields(from_db(row))

    async def finish_job(
        self,
        job_id: str,
        owner: str | None,
        status: JobStatus,
        result: dict[str, Any] | None,
        error: JobError | None,
        now: datetime,
    ) -> Job | None:
        """See ``Store.finish_job``. Raises ``InvalidTransition`` for a non-terminal status."""
        check_transition(JobStatus.RUNNING, status)
        at = ts_to_text(now)
        set_sql = (
            "status = ?, result = ?, result_bytes = ?, error = ?, finished_at = ?, "
            "updated_at = ?, lease_owner = NULL, lease_expires_at = NULL"
        )
        text = None if result is None else json_text(result)
        set_params = [
            str(status),
            text,
            0 if text is None else len(text.encode("utf-8")),
            None if error is None else json_text(error.to_dict()),
            at,
            at,
        ]
        where_sql, where_params = "id = ? AND status = 'RUNNING'", [job_id]
        if owner is not None:
            where_sql, where_params = where_sql + " AND lease_owner = ?", [job_id, owner]
        rows = await self._write(
            lambda conn: self._update(conn, "jobs", set_sql, set_params, where_sql, where_params),
            size_of(set_params),
        )
        return job_from_fields(from_db(rows[0])) if rows else None

    async def purge_results_before(
        self, finished_before: datetime, now: datetime, limit: int
    ) -> list[str]:
        """See ``Store.purge_results_before``."""
        inner = (
            "SELECT id FROM jobs WHERE result_bytes > 0 AND finished_at < ? "
            "ORDER BY finished_at, id LIMIT ?"
        )
        return await self._purge(inner, [ts_to_text(finished_before), limit], now)

    async def purge_results_over(
        self, tenant_max_bytes: int, now: datetime, limit: int
    ) -> list[str]:
        """See ``Store.purge_results_over``."""
        # Per tenant, newest first, the bytes of its results up to each job: the jobs at
        # which that running total passes the cap, and all older ones, are purged.
        inner = (
            "SELECT id FROM (SELECT id, finished_at, SUM(result_bytes) OVER ("
            "PARTITION BY tenant_id ORDER BY finished_at DESC, id DESC) AS newer "
            "FROM jobs WHERE result_bytes > 0) WHERE newer > ? ORDER BY finished_at, id LIMIT ?"
        )
        return await self._purge(inner, [tenant_max_bytes, limit], now)

    async def _purge(self, inner: str, params: list[Any], now: datetime) -> list[str]:
        at = ts_to_text(now)
        # Large input data goes too; a small one stays, for a reader's reference.
        set_sql = (
            "result = NULL, result_bytes = 0, result_purged_at = ?, updated_at = ?, "
            f"data = CASE WHEN length(CAST(data AS BLOB)) > {PURGED_DATA_KEPT_BYTES:d} "
            "THEN '{}' ELSE data END"
        )
        where_sql = f"result_bytes > 0 AND id IN ({inner})"
        # On the writer thread: a purge frees megabytes of pages, too long for the loop.
        rows = await self._run(
            lambda conn: self._update(conn, "jobs", set_sql, [at, at], where_sql, params)
        )
        return [r["id"] for r in rows]

    async def reap_running(self, lease_expired_before: datetime, now: datetime) -> list[Job]:
        """See ``Store.reap_running``. A RUNNING job with no lease at all is reaped too."""
        at = ts_to_text(now)
        set_sql = (
            "status = 'FAILED', error = ?, finished_at = ?, updated_at = ?, "
            "lease_owner = NULL, lease_expires_at = NULL"
        )
        set_params = [json_text(interrupted_error().to_dict()), at, at]
        where_sql = "status = 'RUNNING' AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
        cutoff = [ts_to_text(lease_expired_before)]
        rows = await self._run(
            lambda conn: self._update(conn, "jobs", set_sql, set_params, where_sql, cutoff)
        )
        jobs = [job_from_fields(from_db(r)) for r in rows]
        return sorted(jobs, key=lambda j: (j.created_at, j.id))

    async def count_by_status(self) -> dict[JobStatus, int]:
        """See ``Store.count_by_status``. Every status is present, zero included."""
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT status, COUNT(*) FROM jobs GROUP BY status"
            ).fetchall()
        )
        counts = dict.fromkeys(JobStatus, 0)
        for status, n in rows:
            counts[JobStatus(status)] = n
        return counts

    # --- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKey) -> None:
        """See ``Store.create_api_key``. Raises ``ValueError`` if its id or hash exists."""
        values = [to_db({name: getattr(key, name)})[name] for name in API_KEY_COLUMNS]

        def op(conn: sqlite3.Connection) -> bool:
            try:
                conn.execute(_INSERT_KEY, values)
            except sqlite3.IntegrityError:
                return False
            return True

        if not await self._run(op):
            raise ValueError(f"an API key with id {key.id!r} or this hash already exists")

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        """See ``Store.find_api_key``."""
        row = await self._run(
            lambda conn: conn.execute(
                "SELECT * FROM api_keys WHERE key_hash = ?", [key_hash]
            ).fetchone()
        )
        return None if row is None else api_key_from_fields(from_db(row))

    async def list_api_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        """See ``Store.list_api_keys``."""
        sql, params = "SELECT * FROM api_keys", []
        if tenant_id is not None:
            sql, params = sql + " WHERE tenant_id = ?", [tenant_id]
        sql += " ORDER BY created_at, id"
        rows = await self._run(lambda conn: conn.execute(sql, params).fetchall())
        return [api_key_from_fields(from_db(r)) for r in rows]

    async def revoke_api_key(self, key_id: str, now: datetime) -> ApiKey | None:
        """See ``Store.revoke_api_key``."""
        at = ts_to_text(now)
        rows = await self._run(
            lambda conn: self._update(
                conn, "api_keys", "revoked_at = COALESCE(revoked_at, ?)", [at], "id = ?", [key_id]
            )
        )
        return api_key_from_fields(from_db(rows[0])) if rows else None
