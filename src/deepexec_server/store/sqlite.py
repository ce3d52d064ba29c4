"""The SQLite store: the embedded default, one file and no set-up.

All database work runs on one dedicated thread that owns the only connection, awaited from the
event loop, so the loop never blocks and this process's writes are serialized. Other processes
opening the same file are kept consistent by SQLite's own locking (WAL mode, a busy timeout):
every state change is a single conditional ``UPDATE`` (with ``RETURNING`` on SQLite ≥ 3.35, else
the same statements inside ``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from deepexec_sdk.types import TERMINAL_STATUSES, JobStatus

from ..domain import (
    ApiKey,
    Job,
    JobError,
    JobFilter,
    JobSummary,
    NewJob,
    check_transition,
    new_job_id,
)
from ._batch import GroupCommit
from ._codec import (
    API_KEY_COLUMNS,
    JOB_COLUMNS,
    JOB_SUMMARY_COLUMNS,
    api_key_from_fields,
    job_from_fields,
    job_from_new,
    job_summary_from_fields,
    job_to_fields,
    json_text,
    migrations,
    pending,
    status_json_select,
    ts_from_text,
    ts_to_text,
)
from .base import PURGED_DATA_KEPT_BYTES, interrupted_error

logger = logging.getLogger("deepexec_server.store.sqlite")

T = TypeVar("T")

#: SQLite added ``UPDATE ... RETURNING`` in 3.35.0.
RETURNING_SUPPORTED = sqlite3.sqlite_version_info >= (3, 35, 0)
#: Bound on ``?`` placeholders per statement on old SQLite builds (their limit is 999).
_CHUNK = 500

_TIMESTAMPS = frozenset(
    {
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "cancel_requested_at",
        "lease_expires_at",
        "revoked_at",
        "result_purged_at",
    }
)
_JSON = frozenset({"data", "result", "error", "tags"})

_INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES ({', '.join('?' * len(JOB_COLUMNS))}) "
    "ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
)
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


def to_db(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Plain column values (``_codec.job_to_fields``) as SQLite keeps them: timestamps as
    sortable text, JSON values as text."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            out[name] = None
        elif name in _TIMESTAMPS:
            out[name] = ts_to_text(value)
        elif name in _JSON:
            out[name] = json_text(value)
        else:
            out[name] = value
    return out


_DECODERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(_TIMESTAMPS, ts_from_text),
    **dict.fromkeys(_JSON, json.loads),
}


def from_db(row: sqlite3.Row) -> dict[str, Any]:
    """The inverse of ``to_db`` for a fetched row."""
    out: dict[str, Any] = {}
    # By position: a lookup by name in a ``sqlite3.Row`` compares every column name.
    for name, value in zip(row.keys(), row, strict=True):
        decode = _DECODERS.get(name)
        out[name] = value if value is None or decode is None else decode(value)
    return out


def split_statements(script: str) -> Iterator[str]:
    """The complete SQL statements of a script, in order (``executescript`` would commit the
    migration's transaction first)."""
    buf: list[str] = []
    for line in script.splitlines(keepends=True):
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            yield text
            buf.clear()


def _fetch_one(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
    return row


#: How long a loop-thread read waits for a lock before it hands over to the writer thread.
READER_BUSY_TIMEOUT_MS = 20
#: A write carrying more than this many bytes goes to the writer thread, loop or not:
#: copying megabytes (a 2 MB submit, a 16 MB result) would hold the loop for milliseconds.
LOOP_WRITE_MAX_BYTES = 64 * 1024
#: WAL pages the loop's connection writes between two checkpoints (an estimate: a few pages
#: per row plus one per 4 KiB of its text); SQLite's own autocheckpoint default is 1000.
CHECKPOINT_PAGES = 1000


def _read_only_connection(path: Path) -> sqlite3.Connection:
    """The reader connection (see ``SQLiteStore._reader``): used from the event loop's thread,
    so made without the same-thread check, read-only, and quick to give up on a lock."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {READER_BUSY_TIMEOUT_MS:d}")
        conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _loop_writer_connection(path: Path) -> sqlite3.Connection:
    """The writer used on the event loop's thread (see ``SQLiteStore._write``): never waits
    for a lock and never checkpoints, so a statement on it cannot stall the loop."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        conn.close()
        raise
    return conn


def _job_values(job: Job) -> list[Any]:
    """A job's column values, in ``_INSERT_JOB``'s order."""
    return list(to_db(job_to_fields(job)).values())


def _size(values: Sequence[Any]) -> int:
    """Bytes of text and blobs among a statement's parameters."""
    return sum(len(v) for v in values if isinstance(v, str | bytes))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLite gave up on a lock another connection holds (SQLITE_BUSY / SQLITE_LOCKED)."""
    text = str(exc)
    return "locked" in text or "busy" in text


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SQLiteStore:
    """A ``Store`` in one SQLite file (WAL mode). Safe to share between processes on one host;
    for several hosts use ``PostgresStore``."""

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 10.0, returning: bool | None = None
    ) -> None:
        """``busy_timeout``: seconds to wait for another process's write lock. ``returning``:
        force (True) or avoid (False) ``UPDATE ... RETURNING``; default: use it when the linked
        SQLite has it. False exercises the path for SQLite < 3.35."""
        if returning and not RETURNING_SUPPORTED:
            raise ValueError(f"SQLite {sqlite3.sqlite_version} has no RETURNING (needs 3.35)")
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._returning = RETURNING_SUPPORTED if returning is None else returning
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        #: A second, read-only connection used on the event loop's thread for one-row reads
        #: (``get_job``): in WAL mode a reader never waits for the writer, and a point read
        #: (≈20 µs) costs far less than the hop to the writer thread and back (≈100 µs).
        self._reader: sqlite3.Connection | None = None
        #: A third connection, for the short writes of every job (insert, claim, progress,
        #: finish) on the loop's thread: the hop to the writer thread and back costs more
        #: than such a write (≈50 µs in WAL mode with synchronous=NORMAL). It never waits:
        #: when another connection holds the write lock, the write goes to the writer thread,
        #: which does. It never checkpoints either: after about ``CHECKPOINT_PAGES`` pages of
        #: its writes the writer thread does, and writes go there until it is done.
        self._loop_writer: sqlite3.Connection | None = None
        self._loop_pages = 0
        self._checkpoint: asyncio.Task[None] | None = None
        self._inserts = GroupCommit(self._insert_many, self._insert_one)

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # --- plumbing -------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"{self!r} is not open")
        return await asyncio.get_running_loop().run_in_executor(executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError(f"{self!r} is not open")
        return fn(self._conn)

    def _connect(self) -> None:
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            # Pre-create user-only: SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(path, timeout=self._busy_timeout, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000):d}")
            mode = _enable_wal(conn, time.monotonic() + self._busy_timeout)
            if str(mode).lower() != "wal":
                logger.warning("SQLite at %s runs in %s journal mode, not WAL", path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn)
            wal = str(mode).lower() == "wal"
            reader = _read_only_connection(path) if wal else None
            loop_writer = _loop_writer_connection(path) if wal else None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._reader = reader
        self._loop_writer = loop_writer

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        loop_writer, self._loop_writer = self._loop_writer, None
        for c in (reader, loop_writer, conn):  # the last to close checkpoints the WAL
            if c is not None:
                c.close()

    async def _write(self, fn: Callable[[sqlite3.Connection], T], size: int = 0) -> T:
        """Run a short write of ``size`` bytes of data on the loop's thread; on the writer
        thread when it is larger than ``LOOP_WRITE_MAX_BYTES``, when a checkpoint runs, or
        when another connection holds the write lock. ``fn`` must leave nothing behind when
        SQLite refuses it for a lock (one statement, or its own ``BEGIN IMMEDIATE``)."""
        conn = self._loop_writer
        if (
            conn is None
            or size > LOOP_WRITE_MAX_BYTES
            or (self._checkpoint is not None and not self._checkpoint.done())
        ):
            # While the writer thread checkpoints, writes queue behind it there: a checkpoint
            # that writes keep overtaking never catches up, and the WAL would only grow.
            return await self._run(fn)
        try:
            result = fn(conn)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            return await self._run(fn)
        self._loop_pages += 4 + size // 4096
        if self._loop_pages >= CHECKPOINT_PAGES:
            self._loop_pages = 0
            self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint())
        return result

    async def _run_checkpoint(self) -> None:
        try:
            await self._run(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)"))
        except Exception:  # the next one will try again; a failed one loses nothing
            logger.warning("SQLite checkpoint of %s failed", self.path, exc_info=True)

    async def _read_one(self, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
        """One short read: on the loop's thread through the reader connection, or through the
        writer thread when there is none or SQLite is busy (a checkpoint, a recovery)."""
        reader = self._reader
        if reader is not None:
            try:
                row: sqlite3.Row | None = reader.execute(sql, params).fetchone()
                return row
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
        return await self._run(lambda conn: _fetch_one(conn, sql, params))

    def _update(
        self,
        conn: sqlite3.Connection,
        table: str,
        set_sql: str,
        set_params: Sequence[Any],
        where_sql: str,
        where_params: Sequence[Any],
    ) -> list[sqlite3.Row]:
        """One conditional ``UPDATE``; returns the rows it changed, as they are after it."""
        if self._returning:
            return conn.execute(
                f"UPDATE {table} SET {set_sql} WHERE {where_sql} RETURNING *",
                [*set_params, *where_params],
            ).fetchall()
        # Without RETURNING: the same update, with the select of its targets before and of the
        # rows after, inside one write transaction so no other process slips in between.
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [
                r[0]
                for r in conn.execute(f"SELECT id FROM {table} WHERE {where_sql}", where_params)
            ]
            rows: list[sqlite3.Row] = []
            for chunk in _chunks(ids):
                marks = _marks(len(chunk))
                conn.execute(
                    f"UPDATE {table} SET {set_sql} WHERE id IN ({marks})", [*set_params, *chunk]
                )
                rows += conn.execute(f"SELECT * FROM {table} WHERE id IN ({marks})", chunk)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return rows

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file (and its directory, user-only) if needed, connect, and bring the
        schema up to date. Idempotent."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepexec-sqlite")
        self._executor = executor
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except BaseException:
            self._executor = None
            executor.shutdown(wait=True)
            raise

    async def close(self) -> None:
        """Close the connection and stop the thread. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is not None:
            await asyncio.gather(checkpoint, return_exceptions=True)
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        finally:
            executor.shutdown(wait=True)

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    # --- jobs -----------------------------------------------------------------------------------

    async def create_job(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        """See ``Store.create_job``. Concurrent submits share one transaction (``_batch``)."""
        job = job_from_new(new, new_job_id(), now)
        existing = await self._inserts.submit(job)
        if existing is None:
            return job, True
        return job_from_fields(from_db(existing)), False

    @staticmethod
    def _insert(conn: sqlite3.Connection, job: Job, values: list[Any]) -> sqlite3.Row | None:
        """Insert ``job``; None, or the job that already holds its idempotency key."""
        if conn.execute(_INSERT_JOB, values).rowcount == 1:
            return None
        return _fetch_one(
            conn,
            "SELECT * FROM jobs WHERE tenant_id = ? AND idempotency_key = ?",
            [job.tenant_id, job.idempotency_key],
        )

    async def _insert_one(self, job: Job) -> sqlite3.Row | None:
        values = _job_values(job)
        return await self._write(lambda conn: self._insert(conn, job, values), _size(values))

    async def _insert_many(self, jobs: Sequence[Job]) -> list[sqlite3.Row | None]:
        values = [_job_values(job) for job in jobs]

        def op(conn: sqlite3.Connection) -> list[sqlite3.Row | None]:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = [self._insert(conn, job, v) for job, v in zip(jobs, values, strict=True)]
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return rows

        return await self._write(op, sum(_size(v) for v in values))

    async def get_job(self, job_id: str, tenant_id: str | None = None) -> Job | None:
        """See ``Store.get_job``."""
        sql, params = "SELECT * FROM jobs WHERE id = ?", [job_id]
        if tenant_id is not None:
            sql, params = sql + " AND tenant_id = ?", [job_id, tenant_id]
        row = await self._read_one(sql, params)
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
        self, job_types: Collection[str], owner: str, lease_expires_at: datetime, now: datetime
    ) -> Job | None:
        """See ``Store.claim_next``."""
        types = list(dict.fromkeys(job_types))
        if not types:
            return None
        at = ts_to_text(now)
        set_sql = "status = 'RUNNING', started_at = ?, updated_at = ?, lease_owner = ?, "
        set_sql += "lease_expires_at = ?"
        where_sql = (
            "status = 'PENDING' AND id = (SELECT id FROM jobs WHERE status = 'PENDING' "
            f"AND cancel_requested_at IS NULL AND job_type IN ({_marks(len(types))}) "
            "ORDER BY priority DESC, created_at ASC, id ASC LIMIT 1)"
        )
        set_params = [at, at, owner, ts_to_text(lease_expires_at)]
        rows = await self._write(
            lambda conn: self._update(conn, "jobs", set_sql, set_params, where_sql, types)
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
            for chunk in _chunks(ids):
                where = f"status = 'RUNNING' AND lease_owner = ? AND id IN ({_marks(len(chunk))})"
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
        at = ts_to_text(now)
        # One statement for both cases; every expression reads the row as it was before.
        set_sql = (
            "status = CASE WHEN status = 'PENDING' THEN 'CANCELED' ELSE status END, "
            "finished_at = CASE WHEN status = 'PENDING' THEN ? ELSE finished_at END, "
            "cancel_reason = CASE WHEN cancel_requested_at IS NULL THEN ? "
            "ELSE COALESCE(cancel_reason, ?) END, "
            "cancel_requested_at = COALESCE(cancel_requested_at, ?), "
            "updated_at = ?"
        )
        set_params = [at, reason, reason, at, at]
        where_sql = "id = ? AND tenant_id = ? AND status IN ('PENDING', 'RUNNING')"

        def op(conn: sqlite3.Connection) -> sqlite3.Row | None:
            rows = self._update(conn, "jobs", set_sql, set_params, where_sql, [job_id, tenant_id])
            if rows:
                return rows[0]
            return _fetch_one(
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
            _size(set_params),
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
        try:
            await self._run(lambda conn: conn.execute(_INSERT_KEY, values))
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"an API key with id {key.id!r} or this hash already exists") from exc

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


def _enable_wal(conn: sqlite3.Connection, deadline: float) -> str:
    """Switch to WAL and return the journal mode now in force. Switching a new file needs a
    moment alone with it, and SQLite answers "busy" at once instead of waiting, so processes
    opening a new file together retry until the busy timeout."""
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the schema scripts this file lacks, each with its version, in one transaction.
    ``BEGIN IMMEDIATE`` makes two processes opening a new file together take turns."""
    scripts = migrations("sqlite")
    if not pending(scripts, conn.execute("PRAGMA user_version").fetchone()[0]):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for migration in pending(scripts, conn.execute("PRAGMA user_version").fetchone()[0]):
            for statement in split_statements(migration.script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
