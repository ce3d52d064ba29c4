"""One contract for every store: the same behaviour from SQLite (with and without ``RETURNING``)
and PostgreSQL, against real databases.

PostgreSQL runs at 127.0.0.1:5432 (trust auth, database ``test``) in a schema made for this
module and dropped afterwards. If it is unreachable its cases fail, unless
``DEEPEXEC_TEST_SKIP_POSTGRES=1`` asks to skip them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from deepexec_sdk.types import JobStatus, MCPJobStatusResponse
from deepexec_server.domain import (
    ApiKey,
    AttemptOutcome,
    InvalidTransition,
    Job,
    JobError,
    JobFilter,
    JobSummary,
    NewBatch,
    NewJob,
    SharePolicy,
    Tenant,
    TenantUsage,
    WebhookAttempt,
    WebhookEndpoint,
)
from deepexec_server.errors import ServiceError, StoreError
from deepexec_server.store import Store, decode_cursor, encode_cursor, open_store
from deepexec_server.store._codec import (
    migrations,
    pending,
    ts_from_text,
    ts_to_text,
)
from deepexec_server.store.base import interrupted_error
from deepexec_server.store.postgres import PostgresStore
from deepexec_server.store.sqlite import SQLiteStore
from deepexec_server.views import job_status

pytestmark = pytest.mark.timeout(60)

PG_URL = os.environ.get("DEEPEXEC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CODE = "code_execution"
TEXT = "text_generation"
T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new(
    name: str = "job",
    *,
    tenant: str = "tenant-a",
    job_type: str = CODE,
    data: dict[str, Any] | None = None,
    priority: int = 0,
    tags: tuple[str, ...] = (),
    key: str | None = None,
) -> NewJob:
    return NewJob(
        tenant_id=tenant,
        name=name,
        job_type=job_type,
        data=data if data is not None else {"code": "print(1)"},
        timeout=60,
        priority=priority,
        tags=tags,
        idempotency_key=key,
        fingerprint=None if key is None else f"fp-{key}",
    )


# --- fixtures -----------------------------------------------------------------------------------


class PgSchemas:
    """Schemas made for this module; all dropped at its end."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.made: list[str] = []
        self.main = self.fresh()

    def fresh(self) -> str:
        name = f"deepexec_test_{uuid.uuid4().hex[:12]}"
        self.made.append(name)
        return name

    def drop_all(self) -> None:
        for name in self.made:
            self.conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
def pg_schemas() -> Iterator[PgSchemas]:
    try:
        conn = psycopg.connect(PG_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("DEEPEXEC_TEST_SKIP_POSTGRES") == "1":
            pytest.skip(f"PostgreSQL unreachable and DEEPEXEC_TEST_SKIP_POSTGRES=1: {exc}")
        pytest.fail(
            f"PostgreSQL at {PG_URL} is unreachable ({exc}); start it, or set "
            "DEEPEXEC_TEST_SKIP_POSTGRES=1 to skip its cases"
        )
    with conn:
        schemas = PgSchemas(conn)
        try:
            yield schemas
        finally:
            schemas.drop_all()


class Backend:
    """Makes stores of one kind, all on one database unless ``fresh``; closes them at the end."""

    def __init__(self, kind: str, tmp_path: Path, pg: PgSchemas | None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.pg = pg
        self.made: list[Store] = []
        self.emptied = False

    def make(self, *, fresh: bool = False) -> Store:
        store: Store
        if self.kind == "postgres":
            assert self.pg is not None
            schema = self.pg.fresh() if fresh else self.pg.main
            store = PostgresStore(PG_URL, schema=schema, max_size=10)
        else:
            name = f"{uuid.uuid4().hex}.db" if fresh else "deepexec.db"
            path = self.tmp_path / "data" / name
            store = SQLiteStore(path, returning=False if self.kind == "sqlite-old" else None)
        self.made.append(store)
        return store

    async def open(self, *, fresh: bool = False) -> Store:
        store = self.make(fresh=fresh)
        await store.open()
        if self.pg is not None and not fresh and not self.emptied:
            # The module shares one schema: each test starts from empty tables.
            self.emptied = True
            async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
                await conn.execute(
                    sql.SQL(
                        "TRUNCATE {}.jobs, {}.api_keys, {}.batches, {}.batch_jobs, "
                        "{}.webhook_endpoints, {}.webhook_deliveries, {}.webhook_attempts, "
                        "{}.tenants, {}.tenant_turns"
                    ).format(*[sql.Identifier(self.pg.main)] * 9)
                )
                await conn.execute(
                    sql.SQL("UPDATE {}.fair_clock SET clock = 0").format(
                        sql.Identifier(self.pg.main)
                    )
                )
        return store

    async def close_all(self) -> None:
        for store in self.made:
            await store.close()


@pytest.fixture(
    params=["sqlite", "sqlite-old", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    pg = request.getfixturevalue("pg_schemas") if request.param == "postgres" else None
    b = Backend(request.param, tmp_path, pg)
    try:
        yield b
    finally:
        await b.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    """An opened store on an empty database."""
    return await backend.open()


async def running(store: Store, n: str = "job", owner: str = "runner-1", **kw: Any) -> Job:
    """A job created and claimed (the only pending one of its type)."""
    job, _ = await store.create_job(new(n, **kw), at(0))
    claimed = await store.claim_next([job.job_type], owner, at(30), at(1))
    assert claimed is not None and claimed.id == job.id
    return claimed


# --- create and read ----------------------------------------------------------------------------


async def test_every_field_round_trips_exactly_through_the_lifecycle(store: Store) -> None:
    data = {
        "code": 'print("héllo wörld ✓")\n\ttab',
        "nested": {"list": [1, 2.5, None, True, False, {"deep": ["ü", {"x": []}]}], "empty": {}},
        "big": 2**53,
        "quote": 'it\'s "quoted" \\ back',
    }
    ist = timezone(timedelta(hours=5, minutes=30))
    created_at = datetime(2026, 3, 4, 10, 36, 7, 654321, tzinfo=ist)
    submission = NewJob(
        tenant_id="tenant-ü",
        name="ジョブ — 🚀 émoji",
        job_type=CODE,
        data=data,
        timeout=123,
        priority=-7,
        tags=("ä-tag", "with space", "🏷"),
        idempotency_key="idem-ü",
        fingerprint="f" * 64,
    )
    job, created = await store.create_job(submission, created_at)
    assert created
    assert job.id.startswith("job_")
    assert (job.status, job.created_at, job.updated_at) == (
        JobStatus.PENDING,
        created_at,
        created_at,
    )
    assert job.created_at.utcoffset() == timedelta(0)  # same instant, handed back in UTC
    assert (job.name, job.data, job.tags, job.priority) == (
        submission.name,
        data,
        submission.tags,
        -7,
    )
    assert await store.get_job(job.id) == job
    assert await store.get_job(job.id, "tenant-ü") == job

    claimed = await store.claim_next([CODE], "runner-ü", at(30.000001), at(0.000001))
    assert claimed is not None
    assert await store.get_job(job.id) == claimed
    progressed = await store.set_progress(job.id, 42, "½ done ✓", at(2))
    assert progressed is not None
    assert await store.get_job(job.id) == progressed
    cancel = await store.request_cancel(job.id, "tenant-ü", "stop — please", at(3))
    assert cancel is not None
    assert await store.get_job(job.id) == cancel
    result = {"stdout": "héllo\n", "exit_code": -9, "timings": {"wall": 0.25}, "flags": [True]}
    finished = await store.finish_job(
        job.id, "runner-ü", JobStatus.CANCELED, result, JobError("killed", "stopped ✋"), at(4)
    )
    assert finished is not None
    assert await store.get_job(job.id) == finished
    assert finished == Job(
        id=job.id,
        tenant_id="tenant-ü",
        name="ジョブ — 🚀 émoji",
        job_type=CODE,
        data=data,
        timeout=123,
        priority=-7,
        tags=("ä-tag", "with space", "🏷"),
        status=JobStatus.CANCELED,
        created_at=created_at,
        updated_at=at(4),
        started_at=at(0.000001),
        finished_at=at(4),
        progress=42,
        progress_message="½ done ✓",
        result=result,
        error=JobError("killed", "stopped ✋"),
        cancel_requested_at=at(3),
        cancel_reason="stop — please",
        lease_owner=None,
        lease_expires_at=None,
        idempotency_key="idem-ü",
        fingerprint="f" * 64,
    )
    for value in (finished.created_at, finished.started_at, finished.cancel_requested_at):
        assert value is not None and value.tzinfo is not None
        assert value.utcoffset() == timedelta(0)


async def assert_status_json(store: Store, job: Job) -> None:
    """The database-rendered status body of ``job`` is the API view of the stored job."""
    stored = await store.get_job(job.id)
    assert stored == job
    found = await store.get_status_json(job.id, job.tenant_id)
    assert found is not None
    body, terminal = found
    assert set(json.loads(body)) == set(MCPJobStatusResponse.model_fields)
    assert MCPJobStatusResponse.model_validate_json(body) == job_status(job)
    assert terminal == job.is_terminal


async def test_status_json_is_the_api_view_of_the_job_in_every_state(store: Store) -> None:
    submission = dataclasses.replace(
        new('ジョブ "quoted" \\ ✓', tags=("ä-tag", "with space", "🏷")), priority=-7
    )
    job, _ = await store.create_job(submission, at(0))  # T0 has microseconds; at(0.5) does not
    await assert_status_json(store, job)
    claimed = await store.claim_next([CODE], "runner", at(60), at(0.5))
    assert claimed is not None
    await assert_status_json(store, claimed)
    progressed = await store.set_progress(job.id, 42, "½ done ✓\n", at(1))
    assert progressed is not None
    await assert_status_json(store, progressed)
    canceling = await store.request_cancel(job.id, job.tenant_id, 'stop — "now"', at(2))
    assert canceling is not None
    await assert_status_json(store, canceling)
    result = {"stdout": "héllo\n", "exit_code": -9, "timings": {"wall": 0.25}, "x": [None]}
    ended = await store.finish_job(
        job.id, "runner", JobStatus.CANCELED, result, JobError("killed", "stopped ✋"), at(3)
    )
    assert ended is not None
    await assert_status_json(store, ended)

    # A COMPLETED job reports progress 100, whatever its program last said.
    done, _ = await store.create_job(new("done"), at(4))
    await store.claim_next([CODE], "runner", at(60), at(5))
    await store.set_progress(done.id, 40, "partway", at(6))
    completed = await store.finish_job(
        done.id, "runner", JobStatus.COMPLETED, {"stdout": ""}, None, at(7)
    )
    assert completed is not None
    await assert_status_json(store, completed)
    body = (await store.get_status_json(done.id, done.tenant_id) or (b"", False))[0]
    assert json.loads(body)["progress"] == 100

    # Another tenant's job, or none at all: nothing.
    assert await store.get_status_json(done.id, "tenant-b") is None
    assert await store.get_status_json("job_" + "0" * 32, done.tenant_id) is None


async def test_naive_datetimes_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        await store.create_job(new(), datetime(2026, 1, 1))


async def test_another_tenants_job_does_not_exist_for_you(store: Store) -> None:
    job, _ = await store.create_job(new(tenant="tenant-a"), at(0))
    assert await store.get_job(job.id, "tenant-b") is None
    assert await store.get_job(job.id, "tenant-a") == job
    assert await store.get_job(job.id) == job  # no tenant: internal callers (runners)
    assert await store.list_jobs("tenant-b", JobFilter(), 10) == []
    assert await store.request_cancel(job.id, "tenant-b", "mine now", at(1)) is None
    assert await store.get_job(job.id) == job  # untouched
    assert await store.get_job("job_" + "0" * 32) is None


# --- idempotency --------------------------------------------------------------------------------


async def test_same_idempotency_key_returns_the_first_job(store: Store) -> None:
    first, created = await store.create_job(new("one", key="k"), at(0))
    assert created
    again, created = await store.create_job(new("two", key="k", data={"x": 1}), at(5))
    assert not created
    assert again == first  # the stored job, fingerprint included, for the caller to compare
    other_tenant, created = await store.create_job(new("one", key="k", tenant="tenant-b"), at(1))
    assert created and other_tenant.id != first.id
    a, a_created = await store.create_job(new("no key"), at(2))
    b, b_created = await store.create_job(new("no key"), at(2))
    assert a_created and b_created and a.id != b.id
    assert len(await store.list_jobs("tenant-a", JobFilter(), 10)) == 3


async def test_concurrent_creates_with_one_key_make_one_job(backend: Backend) -> None:
    stores = [await backend.open() for _ in range(4)]  # four connections to one database
    results = await asyncio.gather(
        *(stores[i % 4].create_job(new(f"attempt {i}", key="same-key"), at(i)) for i in range(20))
    )
    assert sum(created for _, created in results) == 1
    assert len({job.id for job, _ in results}) == 1
    listed = await stores[0].list_jobs("tenant-a", JobFilter(), 50)
    assert [j.id for j in listed] == [results[0][0].id]


async def test_concurrent_creates_on_one_store_are_batched_yet_each_gets_its_own_job(
    store: Store,
) -> None:
    # 300 at once: the first is written alone, the rest queue into batches (of at most 256),
    # with repeated keys inside one batch.
    results = await asyncio.gather(
        *(
            store.create_job(new(f"job {i}", key=f"k{i % 100}" if i % 3 == 0 else None), at(i))
            for i in range(300)
        )
    )
    keyed: dict[str, set[str]] = {}
    for i, (job, _) in enumerate(results):
        if i % 3 == 0:
            keyed.setdefault(f"k{i % 100}", set()).add(job.id)
        else:
            assert job.name == f"job {i}"
    assert all(len(ids) == 1 for ids in keyed.values())
    assert sum(created for _, created in results) == 200 + len(keyed)
    listed = await store.list_jobs("tenant-a", JobFilter(), 200)
    page2 = await store.list_jobs(
        "tenant-a", JobFilter(), 200, (listed[-1].created_at, listed[-1].id)
    )
    assert len(listed) + len(page2) == 200 + len(keyed)
    for job, _ in results:
        assert await store.get_job(job.id, "tenant-a") == job


# --- listing ------------------------------------------------------------------------------------


async def test_list_is_newest_first_and_filters_by_status_tags_and_name(store: Store) -> None:
    a, _ = await store.create_job(new("alpha", tags=("red", "big")), at(1))
    b, _ = await store.create_job(new("beta", tags=("red",)), at(2))
    c, _ = await store.create_job(new("alpha", tags=("big", "red", "new")), at(3))
    d, _ = await store.create_job(new("gamma", job_type=TEXT), at(4))
    await store.create_job(new("alpha", tenant="tenant-b", tags=("red", "big")), at(5))
    await store.claim_next([TEXT], "runner", at(60), at(6))

    async def ids(flt: JobFilter) -> list[str]:
        return [j.id for j in await store.list_jobs("tenant-a", flt, 50)]

    assert await ids(JobFilter()) == [d.id, c.id, b.id, a.id]
    assert await ids(JobFilter(status=JobStatus.RUNNING)) == [d.id]
    assert await ids(JobFilter(status=JobStatus.PENDING)) == [c.id, b.id, a.id]
    assert await ids(JobFilter(tags=("red",))) == [c.id, b.id, a.id]
    assert await ids(JobFilter(tags=("red", "big"))) == [c.id, a.id]
    assert await ids(JobFilter(tags=("big", "red", "new"))) == [c.id]
    assert await ids(JobFilter(tags=("red", "missing"))) == []
    assert await ids(JobFilter(name="alpha")) == [c.id, a.id]
    assert await ids(JobFilter(name="alpha", tags=("new",), status=JobStatus.PENDING)) == [c.id]
    assert await ids(JobFilter(name="alph")) == []  # exact names only
    assert [j.id for j in await store.list_jobs("tenant-a", JobFilter(), 2)] == [d.id, c.id]


async def test_cursor_pages_return_every_job_once_even_with_equal_timestamps(
    store: Store,
) -> None:
    made = [(await store.create_job(new(f"same {i}"), at(10)))[0] for i in range(7)]
    made += [(await store.create_job(new(f"t{i}"), at(i)))[0] for i in (5, 20, 15)]
    ordered = sorted(made, key=lambda j: (j.created_at, j.id), reverse=True)
    expected = [JobSummary.of(j) for j in ordered]
    assert await store.list_jobs("tenant-a", JobFilter(), 100) == expected

    pages: list[list[JobSummary]] = []
    after: tuple[datetime, str] | None = None
    while True:
        page = await store.list_jobs("tenant-a", JobFilter(), 3, after)
        if not page:
            break
        pages.append(page)
        # through the opaque cursor, as the API hands it out and takes it back
        after = decode_cursor(encode_cursor(page[-1].created_at, page[-1].id))
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [j for p in pages for j in p] == expected


async def test_a_cursor_at_either_end_of_time_lists_all_or_nothing(store: Store) -> None:
    job, _ = await store.create_job(new("only"), at(0))
    first = datetime(1, 1, 1, tzinfo=UTC)
    last = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert await store.list_jobs("tenant-a", JobFilter(), 10, (first, "job_a")) == []
    listed = await store.list_jobs("tenant-a", JobFilter(), 10, (last, "job_a"))
    assert listed == [JobSummary.of(job)]


def test_cursor_round_trips_and_garbage_is_an_invalid_cursor() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-3)))
    cursor = encode_cursor(when, "job_abc")
    assert cursor.isascii() and "=" not in cursor and "/" not in cursor and "+" not in cursor
    back = decode_cursor(cursor)
    assert back == (when, "job_abc") and back[0].utcoffset() == timedelta(0)
    naive = "WyIyMDI2LTAxLTAyVDAzOjA0OjA1IiwiaiJd"  # ["2026-01-02T03:04:05","j"]
    crafted = [
        ["0001-01-01T00:00:00+01:00", "job_a"],  # before year 1 once in UTC
        ["9999-12-31T23:59:59-01:00", "job_a"],  # after year 9999 once in UTC
        {"2026-01-02T03:04:05+00:00": 1, "job_a": 2},  # an object, not a pair
        ["2026-01-02T03:04:05+00:00", "job_a", "x"],
        ["2026-01-02T03:04:05+00:00", "job\u0000a"],  # NUL: PostgreSQL refuses it
        ["2026-01-02T03:04:05+00:00", "\ud800"],  # a lone surrogate
        ["2026-01-02T03:04:05+00:00", "j" * 65],
        [[[[[]]]]],
        7,
    ]
    encoded = [
        base64.urlsafe_b64encode(json.dumps(c).encode()).decode().rstrip("=") for c in crafted
    ]
    for garbage in ["", "!!!", "not a cursor", "e30", "WyJ4IiwgMV0", naive, cursor[:-3], "ü"]:
        with pytest.raises(ValueError, match=r"^invalid cursor$"):
            decode_cursor(garbage)
    for garbage in encoded:
        with pytest.raises(ValueError, match=r"^invalid cursor$"):
            decode_cursor(garbage)


# --- the queue ----------------------------------------------------------------------------------


async def test_claim_takes_highest_priority_first_then_oldest(store: Store) -> None:
    low_old, _ = await store.create_job(new("low old", priority=0), at(0))
    high_new, _ = await store.create_job(new("high new", priority=10), at(3))
    high_old, _ = await store.create_job(new("high old", priority=10), at(1))
    mid, _ = await store.create_job(new("mid", priority=5), at(2))
    neg, _ = await store.create_job(new("negative", priority=-1), at(-5))
    order = []
    while (job := await store.claim_next([CODE], "runner", at(100), at(50))) is not None:
        order.append(job.id)
        assert job.status == JobStatus.RUNNING
        assert (job.started_at, job.lease_owner, job.lease_expires_at) == (
            at(50),
            "runner",
            at(100),
        )
    assert order == [high_old.id, high_new.id, mid.id, low_old.id, neg.id]


async def test_claim_takes_only_the_requested_job_types(store: Store) -> None:
    code, _ = await store.create_job(new("code", job_type=CODE, priority=9), at(0))
    text, _ = await store.create_job(new("text", job_type=TEXT), at(1))
    assert await store.claim_next([], "r", at(60), at(2)) is None
    got = await store.claim_next([TEXT], "r", at(60), at(2))
    assert got is not None and got.id == text.id
    assert await store.claim_next([TEXT, "other"], "r", at(60), at(2)) is None
    got = await store.claim_next([TEXT, CODE], "r", at(60), at(2))
    assert got is not None and got.id == code.id


async def test_concurrent_claimers_take_each_job_exactly_once(backend: Backend) -> None:
    stores = [await backend.open() for _ in range(4)]
    made = {
        (await stores[0].create_job(new(f"j{i}", priority=i % 3), at(i)))[0].id for i in range(50)
    }
    claims: dict[str, list[str]] = {}

    async def claimer(owner: str, store: Store) -> None:
        mine = claims.setdefault(owner, [])
        while (job := await store.claim_next([CODE], owner, at(600), at(100))) is not None:
            mine.append(job.id)
            await asyncio.sleep(0)

    await asyncio.gather(*(claimer(f"runner-{i}", s) for i, s in enumerate(stores)))
    everything = [jid for ids in claims.values() for jid in ids]
    assert sorted(everything) == sorted(made)  # each claimed once, none lost
    assert sum(bool(ids) for ids in claims.values()) >= 2  # they really competed
    for owner, ids in claims.items():
        for jid in ids:
            job = await stores[0].get_job(jid)
            assert job is not None and (job.status, job.lease_owner) == (JobStatus.RUNNING, owner)
    counts = await stores[0].count_by_status()
    assert (counts[JobStatus.RUNNING], counts[JobStatus.PENDING]) == (50, 0)


# --- fair share and tenants -----------------------------------------------------------------


async def saturate(store: Store, slots: int, claims: int) -> dict[str, int]:
    """Keep ``slots`` jobs running, the oldest finished as each next one is claimed; how many
    of the first ``claims`` claims went to each tenant."""
    running_now: list[Job] = []
    taken: dict[str, int] = {}
    for i in range(claims):
        while len(running_now) >= slots:
            done = running_now.pop(0)
            await store.finish_job(
                done.id, "r", JobStatus.COMPLETED, {"ok": True}, None, at(10 + i)
            )
        job = await store.claim_next([CODE], "r", at(10_000), at(10 + i))
        assert job is not None
        taken[job.tenant_id] = taken.get(job.tenant_id, 0) + 1
        running_now.append(job)
    return taken


@pytest.mark.parametrize("slots", [1, 3])
async def test_weights_2_to_1_split_the_slots_2_to_1(store: Store, slots: int) -> None:
    await store.save_tenant(Tenant("heavy", at(0), at(0), weight=2.0))
    for tenant in ("heavy", "light"):
        await store.create_batch(
            NewBatch(tenant, tuple(new(tenant=tenant) for _ in range(300))), at(1)
        )
    taken = await saturate(store, slots, 300)
    assert abs(taken["heavy"] - 200) <= 20 and abs(taken["light"] - 100) <= 10, taken


async def test_a_newcomer_takes_the_next_slot_whatever_the_backlog_and_priority(
    store: Store,
) -> None:
    await store.create_batch(
        NewBatch("big", tuple(new(tenant="big", priority=100) for _ in range(1000))), at(0)
    )
    first = await store.claim_next([CODE], "r", at(600), at(1))
    assert first is not None and first.tenant_id == "big"
    small, _ = await store.create_job(new("small", tenant="small", priority=-5), at(2))
    await store.finish_job(first.id, "r", JobStatus.COMPLETED, {}, None, at(3))
    # Both have nothing running: the newcomer's turn comes first.
    got = await store.claim_next([CODE], "r", at(600), at(3))
    assert got is not None and got.id == small.id
    # Within a tenant its own priority still orders its jobs.
    mine = [await store.create_job(new(f"p{p}", tenant="small", priority=p), at(4)) for p in (1, 7)]
    got = await store.claim_next([CODE], "r", at(600), at(5))
    assert got is not None and got.tenant_id == "big"  # small is running one, big none
    got = await store.claim_next([CODE], "r", at(600), at(5))
    assert got is not None and got.id == mine[1][0].id  # small's priority 7 before its 1


async def test_max_running_passes_a_tenant_over_until_its_jobs_end(store: Store) -> None:
    await store.save_tenant(Tenant("capped", at(0), at(0), max_running=1))
    a, _ = await store.create_job(new("a", tenant="capped"), at(0))
    b, _ = await store.create_job(new("b", tenant="capped"), at(1))
    other, _ = await store.create_job(new("o", tenant="free"), at(2))
    got = [await store.claim_next([CODE], "r", at(600), at(3)) for _ in range(3)]
    assert [j.id if j else None for j in got] == [a.id, other.id, None]
    await store.finish_job(a.id, "r", JobStatus.COMPLETED, {}, None, at(4))
    after = await store.claim_next([CODE], "r", at(600), at(5))
    assert after is not None and after.id == b.id
    # The server-wide default applies to a tenant without its own, 0 meaning no cap.
    c, _ = await store.create_job(new("c", tenant="free"), at(6))
    assert await store.claim_next([CODE], "r", at(600), at(7), SharePolicy(max_running=1)) is None
    got_c = await store.claim_next([CODE], "r", at(600), at(7), SharePolicy(max_running=0))
    assert got_c is not None and got_c.id == c.id


async def test_max_running_by_type_caps_one_job_type_of_a_tenant(store: Store) -> None:
    await store.save_tenant(Tenant("t", at(0), at(0), max_running_by_type={TEXT: 1}))
    t1, _ = await store.create_job(new("t1", tenant="t", job_type=TEXT), at(0))
    await store.create_job(new("t2", tenant="t", job_type=TEXT), at(1))
    code, _ = await store.create_job(new("c", tenant="t", job_type=CODE), at(2))
    first = await store.claim_next([TEXT], "r", at(600), at(3))
    assert first is not None and first.id == t1.id
    assert await store.claim_next([TEXT], "r", at(600), at(3)) is None  # its one text slot
    other = await store.claim_next([TEXT, CODE], "r", at(600), at(3))
    assert other is not None and other.id == code.id  # its code jobs are not held
    await store.finish_job(t1.id, "r", JobStatus.COMPLETED, {}, None, at(4))
    second = await store.claim_next([TEXT], "r", at(600), at(5))
    assert second is not None and second.name == "t2"


async def test_tenant_settings_usage_and_pending_counts(store: Store) -> None:
    assert await store.get_tenant("t") is None and await store.list_tenants() == []
    saved = await store.save_tenant(Tenant("t", at(0), at(0), weight=2.5, max_pending=10))
    assert saved == Tenant("t", at(0), at(0), weight=2.5, max_pending=10)
    maps = {"max_running_by_type": {TEXT: 1}, "code_limits": {"memory_mb": 256}}
    again = await store.save_tenant(
        Tenant("t", at(5), at(5), max_running=3, submit_rate=0.5, max_timeout=600, **maps)
    )
    # The first creation time stays; every setting is replaced.
    assert again == Tenant(
        "t", at(0), at(5), max_running=3, submit_rate=0.5, max_timeout=600, **maps
    )
    assert await store.list_tenants() == [again]
    for i in range(3):
        await store.create_job(new(f"j{i}", tenant="t"), at(i))
    await store.create_job(new("u", tenant="u"), at(4))
    claimed = await store.claim_next([CODE], "r", at(600), at(5))
    assert claimed is not None and claimed.tenant_id == "t"  # its job has waited longest
    assert (await store.count_pending("t"), await store.count_pending("u")) == (2, 1)
    assert await store.count_pending("nobody") == 0
    assert await store.count_pending() == 3
    assert await store.tenant_usage() == {
        "t": TenantUsage(pending=2, running=1),
        "u": TenantUsage(pending=1, running=0),
    }
    assert await store.delete_tenant("t") is True
    assert await store.delete_tenant("t") is False
    assert await store.get_tenant("t") is None


async def test_job_for_key_finds_the_tenants_keyed_job_only(store: Store) -> None:
    job, _ = await store.create_job(new("keyed", key="k1"), at(0))
    found = await store.job_for_key("tenant-a", "k1")
    assert found is not None and found.id == job.id
    assert await store.job_for_key("tenant-b", "k1") is None
    assert await store.job_for_key("tenant-a", "k2") is None


async def test_renew_leases_extends_only_own_running_jobs_and_reports_cancels(
    store: Store,
) -> None:
    a1 = await running(store, "a1", owner="A")
    a2 = await running(store, "a2", owner="A")
    b1 = await running(store, "b1", owner="B")
    waiting, _ = await store.create_job(new("waiting"), at(2))
    await store.request_cancel(a2.id, "tenant-a", "enough", at(3))

    canceled = await store.renew_leases("A", [a1.id, a2.id, b1.id, waiting.id, "job_x"], at(90))
    assert canceled == {a2.id}
    assert await store.renew_leases("A", [], at(95)) == set()
    after: dict[str, Job] = {}
    for j in (a1, a2, b1, waiting):
        now = await store.get_job(j.id)
        assert now is not None
        after[j.id] = now
    assert after[a1.id].lease_expires_at == at(90)
    assert after[a2.id].lease_expires_at == at(90)
    assert after[b1.id].lease_expires_at == b1.lease_expires_at == at(30)
    assert after[waiting.id] == waiting
    assert after[a1.id].updated_at == a1.updated_at  # a lease is not a visible change


async def test_finish_is_guarded_by_owner_and_status(store: Store) -> None:
    job = await running(store, owner="A")
    assert await store.finish_job(job.id, "B", JobStatus.COMPLETED, {"r": 1}, None, at(5)) is None
    assert (await store.get_job(job.id)) == job
    done = await store.finish_job(job.id, "A", JobStatus.COMPLETED, {"r": 1}, None, at(5))
    assert done is not None
    assert (done.status, done.result, done.error, done.finished_at) == (
        JobStatus.COMPLETED,
        {"r": 1},
        None,
        at(5),
    )
    assert (done.lease_owner, done.lease_expires_at) == (None, None)
    assert await store.finish_job(job.id, "A", JobStatus.FAILED, None, None, at(6)) is None
    assert await store.finish_job(job.id, None, JobStatus.FAILED, None, None, at(6)) is None
    assert await store.get_job(job.id) == done

    pending, _ = await store.create_job(new("pending"), at(7))
    assert await store.finish_job(pending.id, None, JobStatus.COMPLETED, {}, None, at(8)) is None
    other = await running(store, "other", owner="A", job_type=TEXT)
    with pytest.raises(InvalidTransition):
        await store.finish_job(other.id, "A", JobStatus.PENDING, None, None, at(8))
    unowned = await store.finish_job(
        other.id, None, JobStatus.FAILED, None, JobError("timeout", "too slow"), at(9)
    )
    assert unowned is not None and unowned.error == JobError("timeout", "too slow")


async def test_reaped_job_cannot_be_finished_by_its_old_runner(store: Store) -> None:
    job = await running(store, owner="A")  # lease until at(30)
    assert await store.reap_running(at(29), at(29)) == []
    assert (await store.get_job(job.id)) == job
    reaped = await store.reap_running(at(31), at(31))
    assert [j.id for j in reaped] == [job.id]
    dead = reaped[0]
    assert (dead.status, dead.error, dead.finished_at) == (
        JobStatus.FAILED,
        interrupted_error(),
        at(31),
    )
    assert dead.error is not None and dead.error.type == "interrupted"
    assert (dead.lease_owner, dead.lease_expires_at) == (None, None)
    late = await store.finish_job(job.id, "A", JobStatus.COMPLETED, {"r": 1}, None, at(32))
    assert late is None
    assert await store.get_job(job.id) == dead
    assert await store.renew_leases("A", [job.id], at(99)) == set()


async def test_far_future_cutoff_reaps_every_running_job_and_nothing_else(store: Store) -> None:
    r1 = await running(store, "r1", owner="A")
    r2 = await running(store, "r2", owner="B", job_type=TEXT)
    pending, _ = await store.create_job(new("pending"), at(3))
    done = await running(store, "done", owner="A", job_type="other")
    done2 = await store.finish_job(done.id, "A", JobStatus.COMPLETED, {}, None, at(4))
    reaped = await store.reap_running(FAR_FUTURE, at(5))
    assert {j.id for j in reaped} == {r1.id, r2.id}
    assert all(j.status == JobStatus.FAILED for j in reaped)
    assert await store.get_job(pending.id) == pending
    assert await store.get_job(done.id) == done2
    assert await store.reap_running(FAR_FUTURE, at(6)) == []


async def test_cancel_pending_job_ends_it_at_once(store: Store) -> None:
    job, _ = await store.create_job(new(), at(0))
    canceled = await store.request_cancel(job.id, "tenant-a", "not needed", at(2))
    assert canceled is not None
    assert (canceled.status, canceled.finished_at, canceled.cancel_requested_at) == (
        JobStatus.CANCELED,
        at(2),
        at(2),
    )
    assert canceled.cancel_reason == "not needed"
    assert canceled.started_at is None
    assert await store.claim_next([CODE], "r", at(60), at(3)) is None
    # a terminal job is returned unchanged
    assert await store.request_cancel(job.id, "tenant-a", "again", at(4)) == canceled


async def test_cancel_running_job_flags_it_and_keeps_the_first_request(store: Store) -> None:
    job = await running(store, owner="A")
    first = await store.request_cancel(job.id, "tenant-a", "first reason", at(5))
    assert first is not None
    assert (first.status, first.cancel_requested_at, first.cancel_reason) == (
        JobStatus.RUNNING,
        at(5),
        "first reason",
    )
    assert (first.finished_at, first.lease_owner) == (None, "A")
    second = await store.request_cancel(job.id, "tenant-a", "second reason", at(6))
    assert second is not None
    assert (second.cancel_requested_at, second.cancel_reason) == (at(5), "first reason")
    ended = await store.finish_job(job.id, "A", JobStatus.CANCELED, {"partial": "out"}, None, at(7))
    assert ended is not None and ended.status == JobStatus.CANCELED


async def test_cancel_of_a_finished_job_changes_nothing(store: Store) -> None:
    job = await running(store)
    done = await store.finish_job(job.id, "runner-1", JobStatus.COMPLETED, {"ok": 1}, None, at(3))
    assert await store.request_cancel(job.id, "tenant-a", "too late", at(4)) == done
    assert await store.get_job(job.id) == done


async def test_progress_is_recorded_only_while_running(store: Store) -> None:
    job, _ = await store.create_job(new(), at(0))
    assert await store.set_progress(job.id, 10, "early", at(0.5)) is None
    await store.claim_next([CODE], "A", at(30), at(1))
    p = await store.set_progress(job.id, 55, "halfway", at(2))
    assert p is not None
    assert (p.progress, p.progress_message, p.updated_at) == (55, "halfway", at(2))
    cleared = await store.set_progress(job.id, None, None, at(2.5))
    assert cleared is not None and (cleared.progress, cleared.progress_message) == (None, None)
    await store.set_progress(job.id, 80, "nearly", at(3))
    await store.finish_job(job.id, "A", JobStatus.COMPLETED, {}, None, at(4))
    assert await store.set_progress(job.id, 99, "late", at(5)) is None
    final = await store.get_job(job.id)
    assert final is not None and (final.progress, final.progress_message) == (80, "nearly")
    assert await store.set_progress("job_missing", 1, None, at(6)) is None


# --- result retention -------------------------------------------------------------------------


async def finished(store: Store, n: str, when: float, result: dict[str, Any], **kw: Any) -> Job:
    """A job created, claimed and COMPLETED at ``at(when)`` with ``result``."""
    job = await running(store, n, **kw)
    done = await store.finish_job(job.id, "runner-1", JobStatus.COMPLETED, result, None, at(when))
    assert done is not None
    return done


async def test_purge_by_age_drops_old_results_and_large_data_and_keeps_the_job(
    store: Store,
) -> None:
    big_data = {"code": "x" * 100_000}
    old = await finished(store, "old", 10, {"stdout": "a" * 500, "exit_code": 0}, data=big_data)
    older = await finished(store, "older", 5, {"stdout": "b"})
    recent = await finished(store, "recent", 30, {"stdout": "c"})
    pending, _ = await store.create_job(new("pending"), at(1))

    assert sorted(await store.purge_results_before(at(20), at(100), 100)) == sorted(
        [old.id, older.id]
    )
    purged = await store.get_job(old.id)
    assert purged is not None
    assert purged.result is None and purged.result_purged_at == at(100)
    assert purged.data == {}  # large input data goes with the result
    assert (purged.status, purged.finished_at, purged.error) == (
        JobStatus.COMPLETED,
        old.finished_at,
        None,
    )
    small = await store.get_job(older.id)
    assert small is not None and small.data == older.data  # small data stays
    await assert_status_json(store, purged)
    body = json.loads((await store.get_status_json(old.id, old.tenant_id) or (b"{}", 0))[0])
    assert body["result"] is None and body["result_purged_at"] is not None
    # The recent result and the pending job are untouched; a second purge finds nothing.
    assert await store.get_job(recent.id) == recent
    assert await store.get_job(pending.id) == pending
    assert await store.purge_results_before(at(20), at(101), 100) == []
    # The limit bounds one call; the oldest go first.
    assert await store.purge_results_before(at(1000), at(102), 1) == [recent.id]


async def test_purge_over_the_tenant_cap_drops_that_tenants_oldest_results_first(
    store: Store,
) -> None:
    jobs = [await finished(store, f"a{i}", 10 * i, {"out": "x" * 1000}) for i in range(1, 5)]
    other = await finished(store, "b", 1, {"out": "y" * 2000}, tenant="tenant-b")
    # Tenant A keeps 4 results of ~1 KB; a cap of 2,500 bytes keeps its newest two.
    assert await store.purge_results_over(2_500, at(100), 1) == [jobs[0].id]
    assert await store.purge_results_over(2_500, at(100), 100) == [jobs[1].id]
    assert await store.purge_results_over(2_500, at(101), 100) == []
    for job, kept in zip(jobs, (False, False, True, True), strict=True):
        stored = await store.get_job(job.id)
        assert stored is not None and (stored.result is not None) == kept
        assert (stored.result_purged_at is None) == kept
    # Tenant B, older but under the cap, kept its result; a cap of 1,500 bytes purges its one
    # result of 2 KB, and A's older of two, oldest first.
    b = await store.get_job(other.id)
    assert b is not None and b.result is not None
    assert sorted(await store.purge_results_over(1_500, at(102), 100)) == sorted(
        [other.id, jobs[2].id]
    )


async def test_count_by_status_counts_every_tenant_and_lists_every_status(store: Store) -> None:
    assert await store.count_by_status() == dict.fromkeys(JobStatus, 0)
    for i in range(3):
        await store.create_job(new(f"p{i}", tenant=f"t{i}"), at(i))
    r = await running(store, "r", job_type=TEXT)
    c = await running(store, "c", job_type="other")
    await store.finish_job(c.id, None, JobStatus.COMPLETED, {}, None, at(5))
    pending, _ = await store.create_job(new("x", job_type="x"), at(6))
    await store.request_cancel(pending.id, "tenant-a", None, at(7))
    counts = await store.count_by_status()
    assert counts == {
        JobStatus.PENDING: 3,
        JobStatus.RUNNING: 1,
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 0,
        JobStatus.CANCELED: 1,
    }
    assert r.status == JobStatus.RUNNING


# --- API keys -----------------------------------------------------------------------------------


async def test_api_keys_are_created_found_listed_and_revoked(store: Store) -> None:
    k1 = ApiKey("key_1", "tenant-a", "laptop ü", "a" * 64, at(1))
    k2 = ApiKey("key_2", "tenant-b", "ci", "b" * 64, at(2))
    k3 = ApiKey("key_3", "tenant-a", "server", "c" * 64, at(3))
    for key in (k3, k1, k2):
        await store.create_api_key(key)
    assert await store.find_api_key("b" * 64) == k2
    assert await store.find_api_key("d" * 64) is None
    assert await store.list_api_keys() == [k1, k2, k3]
    assert await store.list_api_keys("tenant-a") == [k1, k3]
    assert await store.list_api_keys("nobody") == []

    revoked = await store.revoke_api_key("key_1", at(10))
    assert revoked is not None and revoked.revoked_at == at(10) and not revoked.active
    again = await store.revoke_api_key("key_1", at(20))
    assert again is not None and again.revoked_at == at(10)
    assert await store.find_api_key("a" * 64) == revoked  # revoked keys are still found
    assert await store.revoke_api_key("key_missing", at(10)) is None

    with pytest.raises(ValueError, match="already exists"):
        await store.create_api_key(ApiKey("key_4", "tenant-a", "dup", "a" * 64, at(4)))
    assert len(await store.list_api_keys()) == 3


# --- opening and durability ---------------------------------------------------------------------


async def test_opening_is_idempotent_and_concurrent_first_opens_agree(backend: Backend) -> None:
    one = backend.make(fresh=True)
    await one.open()
    await one.open()
    job, _ = await one.create_job(new(), at(0))
    await one.ping()
    await one.close()
    await one.close()
    await one.open()  # reopening runs the schema step again, harmlessly, and keeps the data
    assert await one.get_job(job.id) == job
    await one.close()

    # Several processes starting together on a new database: each creates/migrates safely.
    first = backend.make(fresh=True)
    twins = [first]
    if isinstance(first, PostgresStore):
        twins += [PostgresStore(PG_URL, schema=first.schema) for _ in range(3)]
    elif isinstance(first, SQLiteStore):
        twins += [SQLiteStore(first.path) for _ in range(3)]
    backend.made += twins
    await asyncio.gather(*(s.open() for s in twins))
    made, _ = await twins[1].create_job(new(), at(0))
    assert await twins[3].get_job(made.id) == made


async def test_a_driver_error_reaches_callers_as_the_store_error(backend: Backend) -> None:
    # The jobs table goes away under an open store (an operator's mistake): what callers get
    # is the project's StoreError (a 500 internal_error at the API), the driver's own error
    # its cause, on every backend.
    import sqlite3

    s = await backend.open(fresh=True)
    if isinstance(s, PostgresStore):
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP TABLE {}.jobs").format(sql.Identifier(s.schema)))
    else:
        assert isinstance(s, SQLiteStore)
        with sqlite3.connect(s.path, isolation_level=None) as raw:
            raw.execute("DROP TABLE jobs")
        raw.close()
    reads_and_writes = [
        lambda: s.get_job("job_x"),
        lambda: s.get_status_json("job_x", "tenant-a"),
        lambda: s.list_jobs("tenant-a", JobFilter(), 10),
        lambda: s.create_job(new("lost"), at(0)),
        lambda: s.claim_next([CODE], "runner-1", at(60), at(1)),
        lambda: s.reap_running(at(100), at(100)),
    ]
    for call in reads_and_writes:
        with pytest.raises(StoreError) as info:
            await call()
        assert isinstance(info.value, ServiceError) and info.value.status_code == 500
        assert isinstance(info.value.__cause__, sqlite3.Error | psycopg.Error)
    # What the driver did not fail on is unchanged: keys still work.
    await s.create_api_key(ApiKey("key_9", "tenant-a", "k", "f" * 64, at(1)))
    with pytest.raises(ValueError, match="already exists"):
        await s.create_api_key(ApiKey("key_9", "tenant-a", "k", "f" * 64, at(1)))


async def test_a_closed_store_refuses_work(backend: Backend) -> None:
    s = await backend.open(fresh=True)
    await s.close()
    with pytest.raises(RuntimeError, match="not open"):
        await s.get_job("job_x")


@pytest.mark.parametrize("returning", [None, False])
async def test_sqlite_file_keeps_everything_after_reopen(
    tmp_path: Path, returning: bool | None
) -> None:
    path = tmp_path / "state" / "deepexec.db"
    first = SQLiteStore(path, returning=returning)
    await first.open()
    try:
        done = await running(first, "done", owner="A")
        await first.finish_job(done.id, "A", JobStatus.COMPLETED, {"out": "ü"}, None, at(5))
        live = await running(first, "live", owner="B", job_type=TEXT, tags=("t",))
        waiting, _ = await first.create_job(new("waiting", key="k"), at(6))
        key = ApiKey("key_1", "tenant-a", "k", "e" * 64, at(1))
        await first.create_api_key(key)
        before = await first.list_jobs("tenant-a", JobFilter(), 10)
    finally:
        await first.close()

    again = SQLiteStore(path, returning=returning)
    await again.open()
    try:
        assert await again.list_jobs("tenant-a", JobFilter(), 10) == before
        assert {j.id for j in before} == {done.id, live.id, waiting.id}
        assert await again.list_api_keys() == [key]
        assert (await again.create_job(new("retry", key="k"), at(9)))[0] == waiting
    finally:
        await again.close()

    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    import sqlite3

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] >= 1
    raw.close()


@pytest.mark.parametrize("returning", [None, False])
async def test_sqlite_writes_wait_for_a_lock_held_elsewhere_without_stalling_the_loop(
    tmp_path: Path, returning: bool | None
) -> None:
    # Another process (a CLI command, a second server) holds the write lock: the job writes
    # made on the loop's thread must neither fail nor block the loop; they land once the
    # lock is released.
    import sqlite3

    path = tmp_path / "data" / "x.db"
    store = SQLiteStore(path, returning=returning)
    await store.open()
    try:
        job, _ = await store.create_job(new("first"), at(0))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        writes = asyncio.gather(
            store.create_job(new("second"), at(1)),
            store.claim_next([CODE], "runner-1", at(60), at(2)),
        )
        await asyncio.sleep(0.3)
        assert not writes.done()  # waiting for the lock ...
        assert ticks >= 10  # ... while the loop runs on
        other.execute("COMMIT")
        other.close()
        (second, created), claimed = await asyncio.wait_for(writes, 10)
        ticker.cancel()
        assert created and claimed is not None and claimed.id == job.id
        finished = await store.finish_job(
            job.id, "runner-1", JobStatus.COMPLETED, {"stdout": "1\n"}, None, at(3)
        )
        assert finished is not None and finished.status == JobStatus.COMPLETED
        again = await store.get_job(second.id)
        assert again is not None and again.status == JobStatus.PENDING
    finally:
        await store.close()


async def test_sqlite_wal_stays_bounded_under_a_stream_of_job_writes(tmp_path: Path) -> None:
    # Writes on the loop's connection never checkpoint; the writer thread must, or the WAL
    # grows with every job.
    path = tmp_path / "data" / "x.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        for i in range(1500):
            job, _ = await store.create_job(new(f"j{i}", data={"code": "x" * 2000}), at(i))
            claimed = await store.claim_next([CODE], "r", at(i + 60), at(i))
            assert claimed is not None
            await store.finish_job(
                job.id, "r", JobStatus.COMPLETED, {"out": "y" * 2000}, None, at(i)
            )
            await asyncio.sleep(0)  # as a server's loop does between requests
        await asyncio.sleep(0.2)  # the last checkpoint
        wal = path.with_name(path.name + "-wal").stat().st_size
        db = path.stat().st_size
    finally:
        await store.close()
    # 4,500 writes of ≈4 KB rows: with no checkpoint the WAL holds every page written,
    # ≈ 85 MB; with one every CHECKPOINT_PAGES pages it stays near 5 MB.
    assert db > 5_000_000
    assert wal < 12_000_000, f"WAL {wal} bytes, database {db} bytes"


async def test_sqlite_wal_stays_bounded_under_large_submits(tmp_path: Path) -> None:
    # Large rows are few writes but many pages: the WAL must not wait for a count of writes.
    path = tmp_path / "data" / "x.db"
    store = SQLiteStore(path)
    await store.open()
    try:
        for i in range(60):
            await store.create_job(new(f"j{i}", data={"code": "x" * 1_000_000}), at(i))
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        wal = path.with_name(path.name + "-wal").stat().st_size
    finally:
        await store.close()
    assert wal < 12_000_000, f"WAL {wal} bytes after 60 MB of submits"


async def test_sqlite_file_stops_growing_once_results_are_purged(tmp_path: Path) -> None:
    # The pages a purge frees are reused by the next results: a store that purges as fast as
    # it stores keeps its size.
    path = tmp_path / "data" / "x.db"

    async def store_results(rounds: int, purge: bool) -> int:
        store = SQLiteStore(path)
        await store.open()
        try:
            for i in range(rounds):
                await finished(store, f"j{i}", i, {"stdout": "x" * 1_000_000})
                if purge:
                    await store.purge_results_before(at(1_000_000), at(i), 100)
        finally:
            await store.close()  # checkpoints the WAL into the file
        return path.stat().st_size

    first = await store_results(20, purge=False)  # 20 MB of results kept
    await store_results(1, purge=True)  # ... purged
    after = await store_results(20, purge=True)
    assert first > 20_000_000
    assert after < first * 1.1, f"{first} bytes, then {after} after purging and storing again"


def test_sqlite_commits_survive_an_abrupt_process_exit(tmp_path: Path) -> None:
    path = tmp_path / "deepexec.db"
    program = textwrap.dedent(
        f"""
        import asyncio, os
        from datetime import UTC, datetime
        from deepexec_server.domain import NewJob
        from deepexec_server.store.sqlite import SQLiteStore

        async def main():
            store = SQLiteStore({str(path)!r})
            await store.open()
            job, _ = await store.create_job(
                NewJob("t", "survivor", "code_execution", {{"code": "1"}}, 60, 0, ()),
                datetime.now(UTC),
            )
            print(job.id, flush=True)
            os._exit(0)  # no close, no checkpoint: like a crash right after the commit

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    job_id = proc.stdout.strip()

    async def read() -> Job | None:
        store = SQLiteStore(path)
        await store.open()
        try:
            return await store.get_job(job_id, "t")
        finally:
            await store.close()

    job = asyncio.run(read())
    assert job is not None and job.name == "survivor" and job.status == JobStatus.PENDING


async def test_sqlite_refuses_a_database_newer_than_the_code(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "future.db"
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 999")
    raw.close()
    store = SQLiteStore(path)
    with pytest.raises(RuntimeError, match="newer than this DeepExec"):
        await store.open()
    await store.close()


async def test_unreachable_postgres_fails_to_open_naming_the_server() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    with pytest.raises(ConnectionError, match=r"127\.0\.0\.1:1/test"):
        await store.open()
    await store.close()


# --- open_store ---------------------------------------------------------------------------------


def test_open_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "x.db"
    rel = open_store("sqlite:///relative/x.db")
    assert isinstance(rel, SQLiteStore) and rel.path == Path("relative/x.db")
    for url in (PG_URL, "postgres://postgres@127.0.0.1/test"):
        pg = open_store(url)
        assert isinstance(pg, PostgresStore) and pg.url == url


@pytest.mark.parametrize(
    "url",
    ["mysql://db/x", "sqlite://x.db", "sqlite:///", "/var/lib/x.db", "", "sqlite:///:memory:"],
)
def test_open_store_rejects_other_urls_naming_the_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite|SQLite") as info:
        open_store(url)
    if "memory" not in url:
        assert "sqlite:///" in str(info.value) and "postgresql://" in str(info.value)


# --- pure helpers -------------------------------------------------------------------------------


_AWARE = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.timezones()
)


@given(_AWARE, _AWARE)
def test_sqlite_timestamp_text_round_trips_and_sorts_like_time(a: datetime, b: datetime) -> None:
    # compared in UTC: Python never calls ambiguous local times (fold=1) equal across zones
    ua, ub = a.astimezone(UTC), b.astimezone(UTC)
    for value, utc in ((a, ua), (b, ub)):
        back = ts_from_text(ts_to_text(value))
        assert back == utc and back.utcoffset() == timedelta(0)
    assert (ts_to_text(a) < ts_to_text(b)) == (ua < ub)


def test_schema_scripts_are_applied_in_order_and_a_newer_database_is_refused() -> None:
    for dialect in ("sqlite", "postgres"):
        scripts = migrations(dialect)
        assert [m.version for m in scripts] == list(range(1, len(scripts) + 1))
        assert pending(scripts, 0) == scripts
        assert pending(scripts, len(scripts)) == []
        with pytest.raises(RuntimeError, match="newer"):
            pending(scripts, len(scripts) + 1)


# --- webhooks -----------------------------------------------------------------------------------


def endpoint(
    tenant: str, url: str | None, events: tuple[str, ...] | None = None
) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=f"whe_{uuid.uuid4().hex[:12]}",
        tenant_id=tenant,
        url=url,
        events=events,
        secret="whsec_" + base64.b64encode(os.urandom(32)).decode(),
        created_at=at(0),
        updated_at=at(0),
    )


def tried(
    number: int, state: str, *, status: int | None, disable: str | None = None
) -> AttemptOutcome:
    attempt = WebhookAttempt(number, at(5), 1.5, status, None if status == 200 else "failed")
    return AttemptOutcome(attempt, state, at(60) if state == "pending" else None, "{}", disable)


async def test_a_jobs_end_writes_its_deliveries_whichever_path_ends_it(store: Store) -> None:
    everything = endpoint("tenant-a", "https://a.example/all")
    failures = endpoint("tenant-a", "https://a.example/failures", ("job.failed",))
    elsewhere = endpoint("tenant-b", "https://b.example/all")
    for e in (everything, failures, elsewhere):
        await store.create_endpoint(e)
    hooked = dataclasses.replace(new("hooked"), webhook_url="https://a.example/own")
    job, _ = await store.create_job(hooked, at(0))
    assert job.webhook_url == "https://a.example/own"
    assert (await store.get_job(job.id)) == job
    assert await store.job_deliveries(job.id, "tenant-a") == []  # nothing before it ends
    claimed = await store.claim_next([CODE], "r", at(30), at(1))
    assert claimed is not None
    await store.finish_job(job.id, "r", JobStatus.COMPLETED, {"stdout": ""}, None, at(2))
    made = await store.job_deliveries(job.id, "tenant-a")
    assert sorted((d.url, d.event_type, d.format) for d in made) == [
        ("https://a.example/all", "job.completed", "standard"),
        ("https://a.example/own", "job.completed", "standard"),
    ]
    assert all(d.state == "pending" and d.next_attempt_at == at(2) for d in made)
    assert await store.job_deliveries(job.id, "tenant-b") == []
    # A cancel of a pending job and a reap end jobs too: the failures endpoint gets the reap.
    pending_job, _ = await store.create_job(new("canceled"), at(3))
    await store.request_cancel(pending_job.id, "tenant-a", None, at(4))
    assert [d.event_type for d in await store.job_deliveries(pending_job.id, "tenant-a")] == [
        "job.canceled"
    ]
    reaped = await running(store, "reaped")
    await store.reap_running(FAR_FUTURE, at(5))
    urls = sorted(d.url for d in await store.job_deliveries(reaped.id, "tenant-a"))
    assert urls == ["https://a.example/all", "https://a.example/failures"]


async def test_deliveries_are_claimed_once_and_finished_under_their_lease(store: Store) -> None:
    await store.create_endpoint(endpoint("tenant-a", "https://a.example/all"))
    jobs = [await running(store, f"j{i}") for i in range(3)]
    for job in jobs:
        await store.finish_job(job.id, "runner-1", JobStatus.COMPLETED, None, None, at(2))
    assert await store.next_delivery_at() == at(2)
    first = await store.claim_deliveries("s1", at(40), at(3), 2)
    second = await store.claim_deliveries("s2", at(40), at(3), 5)
    assert len(first) == 2 and len(second) == 1
    assert not {d.id for d in first} & {d.id for d in second}
    assert await store.claim_deliveries("s3", at(40), at(3), 5) == []
    assert await store.next_delivery_at() == at(40)  # leased until then
    d = first[0]
    assert not await store.finish_attempt(d, "s2", tried(1, "delivered", status=200), at(6))
    assert await store.finish_attempt(d, "s1", tried(1, "pending", status=500), at(6))
    (again,) = [x for x in await store.job_deliveries(d.job_id, "tenant-a")]
    assert again.state == "pending" and again.attempts == 1 and again.next_attempt_at == at(60)
    assert again.body == "{}" and again.last_status_code == 500
    assert [(a.attempt, a.status_code) for a in again.log] == [(1, 500)]
    # A lease that expired lets another sender take it.
    taken = await store.claim_deliveries("s4", at(200), at(100), 5)
    assert {x.id for x in taken} == {x.id for x in first + second}


async def test_a_410_disables_the_endpoint_and_gives_up_its_deliveries(store: Store) -> None:
    target = endpoint("tenant-a", "https://a.example/gone")
    await store.create_endpoint(target)
    for name in ("one", "two"):
        job = await running(store, name)
        await store.finish_job(job.id, "runner-1", JobStatus.COMPLETED, None, None, at(2))
    (first,) = await store.claim_deliveries("s", at(40), at(3), 1)
    gone = tried(1, "failed", status=410, disable="410 Gone")
    assert await store.finish_attempt(first, "s", gone, at(4))
    disabled = await store.get_endpoint(target.id, "tenant-a")
    assert disabled is not None and disabled.disabled_at == at(4)
    assert disabled.disabled_reason == "410 Gone"
    assert await store.claim_deliveries("s", at(40), at(5), 5) == []
    assert await store.next_delivery_at() is None
    later = await running(store, "later")
    await store.finish_job(later.id, "runner-1", JobStatus.COMPLETED, None, None, at(6))
    assert await store.job_deliveries(later.id, "tenant-a") == []


async def test_endpoints_per_tenant_and_one_job_url_key(store: Store) -> None:
    mine = endpoint("tenant-a", "https://a.example/x", ("job.failed", "job.canceled"))
    await store.create_endpoint(mine)
    assert await store.list_endpoints("tenant-a") == [mine]
    assert await store.get_endpoint(mine.id, "tenant-b") is None
    keys = await asyncio.gather(*[store.job_url_key(endpoint("tenant-a", None)) for _ in range(4)])
    assert len({k.id for k in keys}) == 1 and keys[0].url is None
    assert await store.list_endpoints("tenant-a") == [mine]  # the key is not an endpoint
    moved = dataclasses.replace(mine, url="https://a.example/y", updated_at=at(9))
    assert await store.save_endpoint(moved) == moved
    assert await store.get_endpoint(mine.id, "tenant-a") == moved
    assert await store.save_endpoint(dataclasses.replace(moved, tenant_id="tenant-b")) is None
    assert not await store.delete_endpoint(keys[0].id, "tenant-a", at(10))
    assert not await store.delete_endpoint(mine.id, "tenant-b", at(10))
    assert await store.delete_endpoint(mine.id, "tenant-a", at(10))
    assert await store.list_endpoints("tenant-a") == []
