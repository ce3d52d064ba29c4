"""The SQLite store's batches (``SQLiteStore`` inherits ``SQLiteBatches``), and the job insert
and cancel they share with single submits and cancels.

A batch is written in one ``BEGIN IMMEDIATE`` transaction on the writer thread: its row, its
jobs and their positions, or nothing at all.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from deepexec_sdk.types import JobStatus

from ..domain import (
    Batch,
    CreatedBatch,
    Job,
    JobSummary,
    NewBatch,
    new_batch_id,
    new_job_id,
)
from ._codec import (
    JOB_COLUMNS,
    JOB_SUMMARY_COLUMNS,
    as_utc,
    batch_items,
    job_from_fields,
    job_from_new,
    job_summary_from_fields,
    job_to_fields,
    ts_to_text,
)
from ._sqlite_db import SQLiteDatabase, chunks, fetch_one, from_db, marks, to_db

INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join('?' * len(JOB_COLUMNS))}) "
    "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
)
#: A tenant's cancel: a PENDING job becomes CANCELED, a RUNNING one is flagged. One statement
#: for both cases; every expression reads the row as it was before. A repeated request keeps
#: the first time and reason. Parameters: ``cancel_params``.
CANCEL_SET = (
    "status = CASE WHEN status = 'PENDING' THEN 'CANCELED' ELSE status END, "
    "finished_at = CASE WHEN status = 'PENDING' THEN ? ELSE finished_at END, "
    "cancel_reason = CASE WHEN cancel_requested_at IS NULL THEN ? "
    "ELSE COALESCE(cancel_reason, ?) END, "
    "cancel_requested_at = COALESCE(cancel_requested_at, ?), "
    "updated_at = ?"
)

_BATCH_COLUMNS = tuple(f.name for f in dataclasses.fields(Batch))
_INSERT_BATCH = (
    f"INSERT INTO batches ({', '.join(_BATCH_COLUMNS)}) VALUES ({marks(len(_BATCH_COLUMNS))}) "
    "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
)
_MEMBERS = "SELECT job_id FROM batch_jobs WHERE batch_id = ?"
_BATCH_JOBS = (
    "SELECT jobs.* FROM batch_jobs JOIN jobs ON jobs.id = batch_jobs.job_id "
    "WHERE batch_jobs.batch_id = ? ORDER BY batch_jobs.position"
)
_COUNTS = (
    "SELECT jobs.status, COUNT(*) FROM batch_jobs JOIN jobs ON jobs.id = batch_jobs.job_id "
    "WHERE batch_jobs.batch_id = ? GROUP BY jobs.status"
)
_SUMMARY = ", ".join(f"jobs.{c}" for c in JOB_SUMMARY_COLUMNS)


def cancel_params(reason: str | None, now: datetime) -> list[Any]:
    at = ts_to_text(now)
    return [at, reason, reason, at, at]


def job_values(job: Job) -> list[Any]:
    """A job's column values, in ``INSERT_JOB``'s order."""
    return list(to_db(job_to_fields(job)).values())


def insert_job(conn: sqlite3.Connection, job: Job, values: list[Any]) -> sqlite3.Row | None:
    """Insert ``job``; None, or the job that already holds its idempotency key."""
    if conn.execute(INSERT_JOB, values).rowcount == 1:
        return None
    return fetch_one(
        conn,
        "SELECT * FROM jobs WHERE tenant_id = ? AND idempotency_key = ?",
        [job.tenant_id, job.idempotency_key],
    )


def _batch(row: sqlite3.Row) -> Batch:
    fields = from_db(row)
    return Batch(**{name: fields[name] for name in _BATCH_COLUMNS})


def _find_batch(conn: sqlite3.Connection, batch_id: str, tenant_id: str) -> Batch | None:
    row = fetch_one(
        conn, "SELECT * FROM batches WHERE id = ? AND tenant_id = ?", [batch_id, tenant_id]
    )
    return None if row is None else _batch(row)


def _store_batch(
    conn: sqlite3.Connection, batch: Batch, jobs: Sequence[Job], values: Sequence[list[Any]]
) -> CreatedBatch:
    """The writes of ``create_batch``, inside its transaction."""
    if conn.execute(_INSERT_BATCH, list(to_db(dataclasses.asdict(batch)).values())).rowcount == 0:
        row = fetch_one(
            conn,
            "SELECT * FROM batches WHERE tenant_id = ? AND idempotency_key = ?",
            [batch.tenant_id, batch.idempotency_key],
        )
        assert row is not None  # the insert conflicted on it
        held = _batch(row)
        rows = conn.execute(_BATCH_JOBS, [held.id]).fetchall()
        found = tuple(job_from_fields(from_db(r)) for r in rows)
        return CreatedBatch(held, found, (False,) * len(found), replayed=True)
    holders = [insert_job(conn, job, v) for job, v in zip(jobs, values, strict=True)]
    stored, created = batch_items(
        jobs, [None if h is None else job_from_fields(from_db(h)) for h in holders]
    )
    conn.executemany(
        "INSERT INTO batch_jobs (batch_id, position, job_id) VALUES (?, ?, ?)",
        [(batch.id, position, job.id) for position, job in enumerate(stored)],
    )
    return CreatedBatch(batch, tuple(stored), tuple(created))


class SQLiteBatches(SQLiteDatabase):
    """The batch operations of ``Store``, on SQLite."""

    async def create_batch(self, new: NewBatch, now: datetime) -> CreatedBatch:
        """See ``Store.create_batch``."""
        batch = Batch(
            new_batch_id(),
            new.tenant_id,
            len(new.jobs),
            as_utc(now),
            new.idempotency_key,
            new.fingerprint,
        )
        jobs = [job_from_new(j, new_job_id(), now) for j in new.jobs]
        values = [job_values(job) for job in jobs]

        def op(conn: sqlite3.Connection) -> CreatedBatch:
            conn.execute("BEGIN IMMEDIATE")
            try:
                created = _store_batch(conn, batch, jobs, values)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return created

        return await self._run(op)

    async def batch_progress(
        self, batch_id: str, tenant_id: str
    ) -> tuple[Batch, dict[JobStatus, int]] | None:
        """See ``Store.batch_progress``."""

        def op(conn: sqlite3.Connection) -> tuple[Batch, dict[JobStatus, int]] | None:
            batch = _find_batch(conn, batch_id, tenant_id)
            if batch is None:
                return None
            counts = dict.fromkeys(JobStatus, 0)
            for status, n in conn.execute(_COUNTS, [batch_id]):
                counts[JobStatus(status)] = n
            return batch, counts

        return await self._run(op)

    async def batch_job_ids(self, batch_id: str, tenant_id: str) -> list[str] | None:
        """See ``Store.batch_job_ids``."""

        def op(conn: sqlite3.Connection) -> list[str] | None:
            if _find_batch(conn, batch_id, tenant_id) is None:
                return None
            return [r[0] for r in conn.execute(_MEMBERS + " ORDER BY position", [batch_id])]

        return await self._run(op)

    async def list_batch_jobs(
        self,
        batch_id: str,
        tenant_id: str,
        status: JobStatus | None,
        limit: int,
        after: int | None = None,
    ) -> list[tuple[int, JobSummary]] | None:
        """See ``Store.list_batch_jobs``."""
        sql = (
            f"SELECT batch_jobs.position, {_SUMMARY} FROM batch_jobs "
            "JOIN jobs ON jobs.id = batch_jobs.job_id "
            "WHERE batch_jobs.batch_id = ? AND jobs.tenant_id = ?"
        )
        params: list[Any] = [batch_id, tenant_id]
        if status is not None:
            sql += " AND jobs.status = ?"
            params.append(str(status))
        if after is not None:
            sql += " AND batch_jobs.position > ?"
            params.append(after)
        sql += " ORDER BY batch_jobs.position LIMIT ?"
        params.append(max(limit, 0))

        def op(conn: sqlite3.Connection) -> list[sqlite3.Row] | None:
            if _find_batch(conn, batch_id, tenant_id) is None:
                return None
            return conn.execute(sql, params).fetchall()

        rows = await self._run(op)
        if rows is None:
            return None
        return [(r["position"], job_summary_from_fields(from_db(r))) for r in rows]

    async def cancel_batch(
        self, batch_id: str, tenant_id: str, reason: str | None, now: datetime
    ) -> list[Job] | None:
        """See ``Store.cancel_batch``."""
        where = (
            "tenant_id = ? AND (status = 'PENDING' OR "
            "(status = 'RUNNING' AND cancel_requested_at IS NULL)) "
            f"AND id IN ({_MEMBERS})"
        )
        set_params = cancel_params(reason, now)

        def op(conn: sqlite3.Connection) -> list[sqlite3.Row] | None:
            if _find_batch(conn, batch_id, tenant_id) is None:
                return None
            return self._update(conn, "jobs", CANCEL_SET, set_params, where, [tenant_id, batch_id])

        rows = await self._run(op)
        return None if rows is None else [job_from_fields(from_db(r)) for r in rows]

    async def job_states(
        self, job_ids: Collection[str], tenant_id: str
    ) -> dict[str, tuple[JobStatus, int]]:
        """See ``Store.job_states``."""
        ids = list(dict.fromkeys(job_ids))

        def op(conn: sqlite3.Connection) -> dict[str, tuple[JobStatus, int]]:
            states: dict[str, tuple[JobStatus, int]] = {}
            for chunk in chunks(ids):
                for job_id, status, size in conn.execute(
                    "SELECT id, status, result_bytes FROM jobs "
                    f"WHERE tenant_id = ? AND id IN ({marks(len(chunk))})",
                    [tenant_id, *chunk],
                ):
                    states[job_id] = (JobStatus(status), size)
            return states

        return await self._run(op)

    async def get_jobs(self, job_ids: Collection[str], tenant_id: str) -> list[Job]:
        """See ``Store.get_jobs``."""
        ids = list(dict.fromkeys(job_ids))

        def op(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            rows: list[sqlite3.Row] = []
            for chunk in chunks(ids):
                rows += conn.execute(
                    f"SELECT * FROM jobs WHERE tenant_id = ? AND id IN ({marks(len(chunk))})",
                    [tenant_id, *chunk],
                ).fetchall()
            return rows

        return [job_from_fields(from_db(r)) for r in await self._run(op)]
