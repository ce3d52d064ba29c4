"""The PostgreSQL store: the one to share between processes and machines.

psycopg 3 with an async connection pool; every operation is one autocommitted statement, and
every state change one conditional ``UPDATE``, so row locks alone keep concurrent engines
consistent. The one exception is the claim: fair share between tenants (``_fair``) is one
decision for every process, so claims take turns under a transaction-scoped advisory lock,
the lock and the claiming ``UPDATE`` in one short transaction.

One class over 500 lines: the jobs' queries, the pool and the schema's life cycle belong
together; batches, webhooks and tenants are its mixins (``_postgres_*.py``), its longer
statements in ``_postgres_sql``.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import weakref
from collections.abc import AsyncIterator, Collection, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

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
from ..errors import StoreError
from ._batch import GroupCommit
from ._codec import (
    API_KEY_COLUMNS,
    api_key_from_fields,
    as_utc,
    job_from_fields,
    job_from_new,
    job_summary_from_fields,
    json_text,
    migrations,
    pending,
)
from ._fair import choice_params
from ._postgres_batches import PostgresBatches
from ._postgres_sql import (
    CANCEL,
    FINISH,
    INSERT_JOB,
    INSERT_KEY,
    PURGE_BEFORE,
    PURGE_OVER,
    REAP,
    SCHEMA_VERSION,
    STATUS_JSON,
    SUMMARY_COLUMNS,
    claim_sql,
    insert_values,
    jsonb,
    param,
)
from ._postgres_tenants import PostgresTenants
from ._postgres_webhooks import PostgresWebhooks
from .base import driver_failure, interrupted_error

Conn = AsyncConnection[DictRow]

#: How many times a claim chooses again when the job it chose changed as it was taken.
CLAIM_TRIES = 3

#: How long a call waits for a pooled connection (all busy, or the database down).
POOL_WAIT_S = 5.0

#: A pooled connection idle longer than this is checked (one round trip) before it is used.
CHECK_IDLE_SECONDS = 1.0


def _advisory_key(schema: str | None, purpose: str = "schema") -> int:
    """A stable 64-bit lock id per schema and purpose: migrations of one schema take turns
    (``schema``), and so do its claims (``claim``)."""
    digest = hashlib.sha256(f"deepexec-{purpose}:{schema or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def describe(url: str) -> str:
    """Where ``url`` points, without its password (for error messages)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an invalid URL"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresStore(PostgresBatches, PostgresWebhooks, PostgresTenants):
    """A ``Store`` in a PostgreSQL database, optionally in its own schema."""

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        """``schema``: keep every table in this schema (created if missing) instead of the
        default search path. ``connect_timeout``: seconds ``open`` waits for the server."""
        self.url = url
        self.schema = schema
        self._claim_key = _advisory_key(schema, "claim")
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._pool: AsyncConnectionPool[Conn] | None = None
        #: When each pooled connection was last given back (see ``_live_connection``).
        self._used_at: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()
        self._inserts = GroupCommit(self._insert_many, self._insert_one)

    def __repr__(self) -> str:
        return f"PostgresStore({describe(self.url)!r}, schema={self.schema!r})"

    # --- plumbing -------------------------------------------------------------------------------

    async def _prepare(self, conn: Conn) -> None:
        """Session settings for every connection: our schema, and UTC."""
        if self.schema is not None:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        await conn.execute("SET TIME ZONE 'UTC'")
        # Every statement here is short: JIT compiling one (whenever the planner's estimate,
        # wrong on a young table, passes jit_above_cost) took 0.7 s for a 1 ms claim.
        await conn.execute("SET jit = off")

    async def _one(self, query: str, params: Any) -> DictRow | None:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchone()

    async def _all(self, query: str, params: Any) -> list[DictRow]:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    def connection(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        """A connection of the pool, in the store's schema (the event bus between processes
        sends through it: ``pg_notify``)."""
        return self._connection()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        """A live connection of the pool; psycopg's errors inside become ``StoreError``."""
        pool = self._pool
        if pool is None:
            raise RuntimeError(f"{self!r} is not open")
        try:
            conn = await self._live_connection(pool)
            try:
                yield conn
            finally:
                self._used_at[conn] = time.monotonic()
                await pool.putconn(conn)
        except psycopg.Error as exc:
            raise driver_failure(self, exc) from exc

    async def _live_connection(self, pool: AsyncConnectionPool[Conn]) -> Conn:
        """A connection from ``pool``, checked (one round trip) if it has been idle more than
        ``CHECK_IDLE_SECONDS``: a server restart breaks idle connections, and one used a
        moment ago is very likely fine (if it is not, its call fails with a retryable
        ``StoreUnavailable`` and it is replaced). A dead one is closed, so the pool replaces
        it, and the next is taken at once. Our own check, not the pool's ``check=``: the pool
        sleeps 1, 2, 4 s... between dead connections, 7 s for a pool of four after a
        restart, where this takes a few milliseconds."""
        for _ in range(self._max_size):
            conn = await pool.getconn()
            used = self._used_at.get(conn)
            if used is not None and time.monotonic() - used <= CHECK_IDLE_SECONDS:
                return conn
            try:
                await AsyncConnectionPool.check_connection(conn)
            except psycopg.Error:
                await conn.close()
                await pool.putconn(conn)
                continue
            return conn
        return await pool.getconn()  # every one was dead: a fresh one, or the pool's error

    async def _migrate(self, conn: Conn) -> None:
        """Create the schema and apply missing scripts in one transaction, under an advisory
        lock so processes starting together take turns."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_advisory_key(self.schema)])
            if self.schema is not None:
                await conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
            await self._prepare(conn)
            await conn.execute(SCHEMA_VERSION)
            cur = await conn.execute("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
            row = await cur.fetchone()
            current = 0 if row is None else int(row["v"])
            for migration in pending(migrations("postgres"), current):
                # bytes: a script of several statements, sent as it is, without parameters.
                await conn.execute(migration.script.encode())
                await conn.execute(
                    "INSERT INTO schema_version (version, name) VALUES (%s, %s)",
                    [migration.version, migration.name],
                )

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create or migrate the schema, and open the pool. Idempotent."""
        if self._pool is not None:
            return
        try:
            conn = await AsyncConnection.connect(
                self.url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=max(1, round(self._connect_timeout)),
            )
        except psycopg.OperationalError as exc:
            raise ConnectionError(
                f"cannot connect to PostgreSQL at {describe(self.url)}: {exc}".strip()
            ) from exc
        try:
            async with conn:
                await self._migrate(conn)
        except psycopg.Error as exc:
            raise StoreError(f"cannot migrate {self!r}: {exc}") from exc
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.url,
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            name="deepexec-store",
            connection_class=AsyncConnection[DictRow],
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=self._prepare,
            # A call waits this long for a connection; then it fails StoreUnavailable (503,
            # retryable): during an outage a client hears so in seconds, not after 30 s.
            timeout=POOL_WAIT_S,
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"cannot open {self!r}: {exc}") from exc
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close the pool. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        await self._one("SELECT 1", None)

    # --- jobs -----------------------------------------------------------------------------------

    async def create_job(self, new: NewJob, now: datetime) -> tuple[Job, bool]:
        """See ``Store.create_job``. Concurrent submits share one transaction (``_batch``)."""
        job = job_from_new(new, new_job_id(), now)
        existing = await self._inserts.submit(job)
        if existing is None:
            return job, True
        return job_from_fields(existing), False

    @staticmethod
    async def _holder(conn: Conn, job: Job) -> DictRow:
        """The job that holds ``job``'s idempotency key (ON CONFLICT waited for its commit)."""
        cur = await conn.execute(
            "SELECT * FROM jobs WHERE tenant_id = %s AND idempotency_key = %s",
            [job.tenant_id, job.idempotency_key],
        )
        row = await cur.fetchone()
        if row is None:
            raise RuntimeError(f"idempotency key {job.idempotency_key!r} conflicted but vanished")
        return row

    async def _insert_one(self, job: Job) -> DictRow | None:
        async with self._connection() as conn:
            cur = await conn.execute(INSERT_JOB, insert_values(job))
            if await cur.fetchone() is not None:
                return None
            return await self._holder(conn, job)

    async def _insert_many(self, jobs: Sequence[Job]) -> list[DictRow | None]:
        """All of ``jobs`` in one transaction, the inserts pipelined in one round trip."""
        async with self._connection() as conn, conn.transaction():
            async with conn.pipeline():
                cursors = [await conn.execute(INSERT_JOB, insert_values(job)) for job in jobs]
            created = [await cur.fetchone() is not None for cur in cursors]
            return [
                None if ok else await self._holder(conn, job)
                for ok, job in zip(created, jobs, strict=True)
            ]

    async def get_job(self, job_id: str, tenant_id: str | None = None) -> Job | None:
        """See ``Store.get_job``."""
        if tenant_id is None:
            row = await self._one("SELECT * FROM jobs WHERE id = %s", [job_id])
        else:
            row = await self._one(
                "SELECT * FROM jobs WHERE id = %s AND tenant_id = %s", [job_id, tenant_id]
            )
        return None if row is None else job_from_fields(row)

    async def job_for_key(self, tenant_id: str, idempotency_key: str) -> Job | None:
        """See ``Store.job_for_key``."""
        row = await self._one(
            "SELECT * FROM jobs WHERE tenant_id = %s AND idempotency_key = %s",
            [tenant_id, idempotency_key],
        )
        return None if row is None else job_from_fields(row)

    async def get_status_json(self, job_id: str, tenant_id: str) -> tuple[bytes, bool] | None:
        """See ``Store.get_status_json``."""
        row = await self._one(STATUS_JSON, [job_id, tenant_id])
        if row is None:
            return None
        return row["body"].encode(), row["status"] in TERMINAL_STATUSES

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
        where = ["tenant_id = %s"]
        params: list[Any] = [tenant_id]
        if flt.status is not None:
            where.append("status = %s")
            params.append(str(flt.status))
        if flt.name is not None:
            where.append("name = %s")
            params.append(flt.name)
        if flt.tags:
            where.append("tags @> %s::text[]")
            params.append(list(dict.fromkeys(flt.tags)))
        if after is not None:
            where.append("(created_at, id) < (%s, %s)")
            params += [as_utc(after[0]), after[1]]
        query = (
            f"SELECT {SUMMARY_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "
            "ORDER BY created_at DESC, id DESC LIMIT %s"
        )
        params.append(limit)
        return [job_summary_from_fields(r) for r in await self._all(query, params)]

    async def claim_next(
        self,
        job_types: Collection[str],
        owner: str,
        lease_expires_at: datetime,
        now: datetime,
        policy: SharePolicy = DEFAULT_SHARE,
    ) -> Job | None:
        """See ``Store.claim_next``. Claims take turns under a transaction-scoped advisory
        lock: fair share is one decision for every process (each claim sees the jobs the one
        before it started), where ``SKIP LOCKED`` would let two claims pick for the same
        tenant at once. A claim is one short statement, so the turns cost little (see
        ``bench/``)."""
        types = list(dict.fromkeys(job_types))
        if not types:
            return None
        at = as_utc(now)
        query = claim_sql(len(types))
        params = [*choice_params(types, policy), at, at, owner, as_utc(lease_expires_at)]
        for _ in range(CLAIM_TRIES):
            async with self._connection() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", [self._claim_key])
                cur = await conn.execute(query, params)
                row = await cur.fetchone()
            if row is None or row["chosen"] is None:
                return None
            if row["id"] is not None:
                return job_from_fields(row)
        return None  # chosen jobs kept changing under us: the next wake tries again

    async def renew_leases(
        self, owner: str, job_ids: Collection[str], lease_expires_at: datetime
    ) -> set[str]:
        """See ``Store.renew_leases``."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return set()
        rows = await self._all(
            "UPDATE jobs SET lease_expires_at = %s "
            "WHERE status = 'RUNNING' AND lease_owner = %s AND id = ANY(%s) "
            "RETURNING id, cancel_requested_at",
            [as_utc(lease_expires_at), owner, ids],
        )
        return {r["id"] for r in rows if r["cancel_requested_at"] is not None}

    async def set_progress(
        self, job_id: str, progress: int | None, message: str | None, now: datetime
    ) -> Job | None:
        """See ``Store.set_progress``."""
        row = await self._one(
            "UPDATE jobs SET progress = %s, progress_message = %s, updated_at = %s "
            "WHERE id = %s AND status = 'RUNNING' RETURNING *",
            [progress, message, as_utc(now), job_id],
        )
        return None if row is None else job_from_fields(row)

    async def request_cancel(
        self, job_id: str, tenant_id: str, reason: str | None, now: datetime
    ) -> Job | None:
        """See ``Store.request_cancel``. A repeated request keeps the first time and reason."""
        params = {"now": as_utc(now), "reason": reason, "id": job_id, "tenant": tenant_id}
        async with self._connection() as conn:
            cur = await conn.execute(CANCEL, params)
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    "SELECT * FROM jobs WHERE id = %s AND tenant_id = %s", [job_id, tenant_id]
                )
                row = await cur.fetchone()
        return None if row is None else job_from_fields(row)

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
        at = as_utc(now)
        text = None if result is None else json_text(result)
        params: list[Any] = [
            str(status),
            text,
            0 if text is None else len(text.encode("utf-8")),
            jsonb(None if error is None else error.to_dict()),
            at,
            at,
            job_id,
        ]
        query = FINISH
        if owner is not None:
            query += " AND lease_owner = %s"
            params.append(owner)
        row = await self._one(query + " RETURNING *", params)
        return None if row is None else job_from_fields(row)

    async def purge_results_before(
        self, finished_before: datetime, now: datetime, limit: int
    ) -> list[str]:
        """See ``Store.purge_results_before``."""
        at = as_utc(now)
        rows = await self._all(PURGE_BEFORE, [at, at, as_utc(finished_before), limit])
        return [r["id"] for r in rows]

    async def purge_results_over(
        self, tenant_max_bytes: int, now: datetime, limit: int
    ) -> list[str]:
        """See ``Store.purge_results_over``."""
        at = as_utc(now)
        rows = await self._all(PURGE_OVER, [at, at, tenant_max_bytes, limit])
        return [r["id"] for r in rows]

    async def reap_running(self, lease_expired_before: datetime, now: datetime) -> list[Job]:
        """See ``Store.reap_running``. A RUNNING job with no lease at all is reaped too."""
        at = as_utc(now)
        rows = await self._all(
            REAP, [jsonb(interrupted_error().to_dict()), at, at, as_utc(lease_expired_before)]
        )
        return sorted((job_from_fields(r) for r in rows), key=lambda j: (j.created_at, j.id))

    async def count_by_status(self) -> dict[JobStatus, int]:
        """See ``Store.count_by_status``. Every status is present, zero included."""
        rows = await self._all("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status", None)
        counts = dict.fromkeys(JobStatus, 0)
        for row in rows:
            counts[JobStatus(row["status"])] = int(row["n"])
        return counts

    # --- API keys -------------------------------------------------------------------------------

    async def create_api_key(self, key: ApiKey) -> None:
        """See ``Store.create_api_key``. Raises ``ValueError`` if its id or hash exists."""
        values = [param(getattr(key, name)) for name in API_KEY_COLUMNS]
        async with self._connection() as conn:
            try:
                await conn.execute(INSERT_KEY, values)
            except psycopg.errors.UniqueViolation as exc:
                raise ValueError(
                    f"an API key with id {key.id!r} or this hash already exists"
                ) from exc

    async def find_api_key(self, key_hash: str) -> ApiKey | None:
        """See ``Store.find_api_key``."""
        row = await self._one("SELECT * FROM api_keys WHERE key_hash = %s", [key_hash])
        return None if row is None else api_key_from_fields(row)

    async def list_api_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        """See ``Store.list_api_keys``."""
        if tenant_id is None:
            rows = await self._all("SELECT * FROM api_keys ORDER BY created_at, id", None)
        else:
            rows = await self._all(
                "SELECT * FROM api_keys WHERE tenant_id = %s ORDER BY created_at, id",
                [tenant_id],
            )
        return [api_key_from_fields(r) for r in rows]

    async def revoke_api_key(self, key_id: str, now: datetime) -> ApiKey | None:
        """See ``Store.revoke_api_key``."""
        row = await self._one(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE id = %s RETURNING *",
            [as_utc(now), key_id],
        )
        return None if row is None else api_key_from_fields(row)
