"""The PostgreSQL store's batches (``PostgresStore`` inherits ``PostgresBatches``).

A batch is written in one transaction on one connection: its row, then its jobs' inserts
pipelined in one round trip, then their positions in one statement; or nothing at all.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

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
    JOB_SUMMARY_COLUMNS,
    as_utc,
    batch_items,
    job_from_fields,
    job_from_new,
    job_summary_from_fields,
)
from ._postgres_sql import CANCEL_BATCH, INSERT_JOB, insert_values

Conn = AsyncConnection[DictRow]

_BATCH_COLUMNS = tuple(f.name for f in dataclasses.fields(Batch))
_INSERT_BATCH = (
    f"INSERT INTO batches ({', '.join(_BATCH_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_BATCH_COLUMNS))}) "
    "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
    "RETURNING id"
)
_BATCH_JOBS = (
    "SELECT jobs.* FROM batch_jobs JOIN jobs ON jobs.id = batch_jobs.job_id "
    "WHERE batch_jobs.batch_id = %s ORDER BY batch_jobs.position"
)
_INSERT_MEMBERS = (
    "INSERT INTO batch_jobs (batch_id, position, job_id) "
    "SELECT %s, t.position, t.job_id FROM unnest(%s::integer[], %s::text[]) AS t(position, job_id)"
)
_COUNTS = (
    "SELECT jobs.status, COUNT(*) AS n FROM batch_jobs JOIN jobs ON jobs.id = batch_jobs.job_id "
    "WHERE batch_jobs.batch_id = %s GROUP BY jobs.status"
)
_SUMMARY = ", ".join(f"jobs.{c}" for c in JOB_SUMMARY_COLUMNS)


def _batch(row: Mapping[str, Any]) -> Batch:
    fields = {name: row[name] for name in _BATCH_COLUMNS}
    fields["created_at"] = fields["created_at"].astimezone(UTC)
    return Batch(**fields)


async def _find_batch(conn: Conn, batch_id: str, tenant_id: str) -> Batch | None:
    cur = await conn.execute(
        "SELECT * FROM batches WHERE id = %s AND tenant_id = %s", [batch_id, tenant_id]
    )
    row = await cur.fetchone()
    return None if row is None else _batch(row)


async def _replay(conn: Conn, batch: Batch) -> CreatedBatch:
    """The batch that holds ``batch``'s idempotency key, as ``create_batch`` returns it."""
    cur = await conn.execute(
        "SELECT * FROM batches WHERE tenant_id = %s AND idempotency_key = %s",
        [batch.tenant_id, batch.idempotency_key],
    )
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError(f"batch key {batch.idempotency_key!r} conflicted but vanished")
    held = _batch(row)
    cur = await conn.execute(_BATCH_JOBS, [held.id])
    jobs = tuple(job_from_fields(r) for r in await cur.fetchall())
    return CreatedBatch(held, jobs, (False,) * len(jobs), replayed=True)


async def _insert_jobs(conn: Conn, jobs: Sequence[Job]) -> tuple[list[Job], list[bool]]:
    """Insert ``jobs``, pipelined; each, or the earlier job holding its key. Raises
    ``IdempotencyConflicts`` if an earlier job's fingerprint differs."""
    async with conn.pipeline():
        cursors = [await conn.execute(INSERT_JOB, insert_values(job)) for job in jobs]
    created = [await cur.fetchone() is not None for cur in cursors]
    keys = [job.idempotency_key for ok, job in zip(created, jobs, strict=True) if not ok]
    holders: dict[str, Job] = {}
    if keys:
        cur = await conn.execute(
            "SELECT * FROM jobs WHERE tenant_id = %s AND idempotency_key = ANY(%s)",
            [jobs[0].tenant_id, keys],
        )
        holders = {r["idempotency_key"]: job_from_fields(r) for r in await cur.fetchall()}
    return batch_items(
        jobs,
        [
            None if ok else holders[str(job.idempotency_key)]
            for ok, job in zip(created, jobs, strict=True)
        ],
    )


class PostgresBatches:
    """The batch operations of ``Store``, on PostgreSQL."""

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        raise NotImplementedError  # ``PostgresStore._connection``

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
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(_INSERT_BATCH, [getattr(batch, c) for c in _BATCH_COLUMNS])
            if await cur.fetchone() is None:
                return await _replay(conn, batch)
            stored, created = await _insert_jobs(conn, jobs)
            await conn.execute(
                _INSERT_MEMBERS, [batch.id, list(range(len(stored))), [j.id for j in stored]]
            )
        return CreatedBatch(batch, tuple(stored), tuple(created))

    async def batch_progress(
        self, batch_id: str, tenant_id: str
    ) -> tuple[Batch, dict[JobStatus, int]] | None:
        """See ``Store.batch_progress``."""
        async with self._connection() as conn:
            batch = await _find_batch(conn, batch_id, tenant_id)
            if batch is None:
                return None
            cur = await conn.execute(_COUNTS, [batch_id])
            counts = dict.fromkeys(JobStatus, 0)
            for row in await cur.fetchall():
                counts[JobStatus(row["status"])] = int(row["n"])
        return batch, counts

    async def batch_job_ids(self, batch_id: str, tenant_id: str) -> list[str] | None:
        """See ``Store.batch_job_ids``."""
        async with self._connection() as conn:
            if await _find_batch(conn, batch_id, tenant_id) is None:
                return None
            cur = await conn.execute(
                "SELECT job_id FROM batch_jobs WHERE batch_id = %s ORDER BY position", [batch_id]
            )
            return [r["job_id"] for r in await cur.fetchall()]

    async def list_batch_jobs(
        self,
        batch_id: str,
        tenant_id: str,
        status: JobStatus | None,
        limit: int,
        after: int | None = None,
    ) -> list[tuple[int, JobSummary]] | None:
        """See ``Store.list_batch_jobs``."""
        query = (
            f"SELECT batch_jobs.position, {_SUMMARY} FROM batch_jobs "
            "JOIN jobs ON jobs.id = batch_jobs.job_id "
            "WHERE batch_jobs.batch_id = %s AND jobs.tenant_id = %s"
        )
        params: list[Any] = [batch_id, tenant_id]
        if status is not None:
            query += " AND jobs.status = %s"
            params.append(str(status))
        if after is not None:
            query += " AND batch_jobs.position > %s"
            params.append(after)
        query += " ORDER BY batch_jobs.position LIMIT %s"
        params.append(max(limit, 0))
        async with self._connection() as conn:
            if await _find_batch(conn, batch_id, tenant_id) is None:
                return None
            cur = await conn.execute(query, params)
            rows = await cur.fetchall()
        return [(int(r["position"]), job_summary_from_fields(r)) for r in rows]

    async def cancel_batch(
        self, batch_id: str, tenant_id: str, reason: str | None, now: datetime
    ) -> list[Job] | None:
        """See ``Store.cancel_batch``."""
        params = {"now": as_utc(now), "reason": reason, "tenant": tenant_id, "batch": batch_id}
        async with self._connection() as conn:
            if await _find_batch(conn, batch_id, tenant_id) is None:
                return None
            cur = await conn.execute(CANCEL_BATCH, params)
            return [job_from_fields(r) for r in await cur.fetchall()]

    async def job_states(
        self, job_ids: Collection[str], tenant_id: str
    ) -> dict[str, tuple[JobStatus, int]]:
        """See ``Store.job_states``."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT id, status, result_bytes FROM jobs WHERE tenant_id = %s AND id = ANY(%s)",
                [tenant_id, list(dict.fromkeys(job_ids))],
            )
            rows = await cur.fetchall()
        return {r["id"]: (JobStatus(r["status"]), int(r["result_bytes"])) for r in rows}

    async def get_jobs(self, job_ids: Collection[str], tenant_id: str) -> list[Job]:
        """See ``Store.get_jobs``."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM jobs WHERE tenant_id = %s AND id = ANY(%s)",
                [tenant_id, list(dict.fromkeys(job_ids))],
            )
            return [job_from_fields(r) for r in await cur.fetchall()]
