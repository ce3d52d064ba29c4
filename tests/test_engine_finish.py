"""A job always ends, whatever goes wrong while the engine finishes it: in process, on the real
SQLite and PostgreSQL stores, with an executor (the engine's seam) whose outcome the store
cannot keep, as a file name that is not UTF-8 once made a code job's result."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from deepexec_sdk.types import JobSubmitRequest
from deepexec_server.app import build_engine
from deepexec_server.domain import NewJob, utcnow
from deepexec_server.engine import EngineRuntime
from deepexec_server.engine.outcomes import storable_remainder
from deepexec_server.executors.base import ExecutionContext, Outcome
from deepexec_server.settings import Settings
from deepexec_server.store import Store
from deepexec_server.store.postgres import PostgresStore
from deepexec_server.store.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(60)

PG_URL = os.environ.get("DEEPEXEC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
JOB_TYPE = "unstorable"


class UnstorableResultExecutor:
    """Returns a result holding a lone surrogate: what ``os.listdir`` makes of a file name
    that is not UTF-8. Neither SQLite nor PostgreSQL can store that text."""

    job_type = JOB_TYPE

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def validate(self, data: Mapping[str, Any], timeout: int) -> dict[str, Any]:
        return dict(data)

    async def admit(self, data: Mapping[str, Any]) -> None:
        pass

    async def execute(self, data: Mapping[str, Any], ctx: ExecutionContext) -> Outcome:
        return Outcome({"exit_code": 0, "stdout": "done\n", "files": {"bad-\udcff.txt": "x"}}, None)

    def describe(self) -> dict[str, Any]:
        return {}


@pytest.fixture
def pg_schema() -> Iterator[str]:
    name = f"deepexec_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EngineRuntime]:
    store: Store
    if request.param == "postgres":
        store = PostgresStore(PG_URL, schema=request.getfixturevalue("pg_schema"))
    else:
        store = SQLiteStore(tmp_path / "jobs.db")
    await store.open()
    settings = Settings(data_dir=tmp_path, concurrency={JOB_TYPE: 1}, lease_seconds=1)
    eng = build_engine(
        settings,
        store=store,
        executors={JOB_TYPE: UnstorableResultExecutor()},
        exclusive_store=request.param == "sqlite",
    )
    await eng.start()
    try:
        yield eng
    finally:
        await eng.stop()
        await store.close()


async def test_a_result_the_store_cannot_keep_ends_the_job_failed_and_wakes_its_waiter(
    engine: EngineRuntime,
) -> None:
    req = JobSubmitRequest(name="t", job_type=JOB_TYPE, data={}, timeout=10)
    job, _ = await engine.service.submit("tenant", req)
    final = await asyncio.wait_for(engine.service.wait("tenant", job.id, 20), 30)
    assert final.status == "FAILED", final
    assert final.error is not None and final.error.type == "internal_error"
    assert "could not be stored" in final.error.message
    # What could be kept is kept: the exit code, not the unstorable text.
    assert final.result is not None and final.result.get("exit_code") == 0
    assert "files" not in final.result
    # And the store agrees: no job is left RUNNING.
    stored = await engine.store.get_job(job.id, "tenant")
    assert stored is not None and stored.status == "FAILED"


async def test_a_running_job_whose_lease_nobody_renews_is_reaped_on_every_store(
    engine: EngineRuntime,
) -> None:
    # A job this engine's owner holds but no run task of it runs (the task ended without
    # storing the job's end): its lease is not renewed, and the reaper ends it, on the
    # embedded SQLite store too.
    new = NewJob(
        tenant_id="tenant",
        name="orphan",
        job_type="orphan",
        data={},
        timeout=10,
        priority=0,
        tags=(),
    )
    job, _ = await engine.store.create_job(new, utcnow())
    lease = utcnow() + timedelta(seconds=0.5)
    claimed = await engine.store.claim_next(["orphan"], engine.worker.owner, lease, utcnow())
    assert claimed is not None and claimed.id == job.id
    final = await asyncio.wait_for(engine.service.wait("tenant", job.id, 20), 30)
    assert final.status == "FAILED"
    assert final.error is not None and final.error.type == "interrupted"


def test_storable_remainder_keeps_plain_fields_and_drops_unstorable_text() -> None:
    result = {
        "exit_code": 3,
        "duration_s": 0.25,
        "nan": float("nan"),
        "truncated": False,
        "signal": None,
        "stdout": "x" * 1000,
        "bad\udcff": 1,
        "short": "ok",
        "nul": "a\x00b",
        "files": {"a": "b"},
    }
    assert storable_remainder(result) == {
        "exit_code": 3,
        "duration_s": 0.25,
        "truncated": False,
        "signal": None,
        "short": "ok",
    }
    assert storable_remainder(None) == {}
