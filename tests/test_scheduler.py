"""The worker's scheduler in process, on a real SQLite store and the real sandbox: it claims
in priority order when a slot is free, does not ask the store for a job type that has
nothing queued each time another type's submit wakes it, and in burst mode runs until the
queue is idle. Two races, interleaved into the real store at the exact point: a cancel that
crosses the claim, and a job that ends while a waiter subscribes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection
from datetime import datetime
from pathlib import Path

import pytest

from deepexec_sdk.types import JobStatus, JobSubmitRequest
from deepexec_server.app import build_engine
from deepexec_server.domain import DEFAULT_SHARE, Job, JobFilter, SharePolicy
from deepexec_server.engine import EngineRuntime
from deepexec_server.executors.code import CodeExecutor
from deepexec_server.settings import Settings
from deepexec_server.store.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(60)


class CountingStore(SQLiteStore):
    """The real SQLite store, recording the job types of every claim it is asked for."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.claims: list[tuple[str, ...]] = []

    async def claim_next(
        self,
        job_types: Collection[str],
        owner: str,
        lease_expires_at: datetime,
        now: datetime,
        policy: SharePolicy = DEFAULT_SHARE,
    ) -> Job | None:
        self.claims.append(tuple(job_types))
        return await super().claim_next(job_types, owner, lease_expires_at, now, policy)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[EngineRuntime, CountingStore]]:
    settings = Settings(data_dir=tmp_path, concurrency={"code_execution": 1, "other_code": 1})
    executor = CodeExecutor(settings)
    store = CountingStore(tmp_path / "jobs.db")
    await store.open()
    eng = build_engine(
        settings,
        store=store,
        executors={"code_execution": executor, "other_code": executor},
        exclusive_store=True,
    )
    await eng.start()
    try:
        yield eng, store
    finally:
        await eng.stop()
        await store.close()


def job(code: str, job_type: str = "code_execution") -> JobSubmitRequest:
    return JobSubmitRequest(name="t", job_type=job_type, data={"code": code}, timeout=60)


async def test_submits_to_a_busy_type_do_not_claim_for_an_idle_one(
    engine: tuple[EngineRuntime, CountingStore],
) -> None:
    runtime, store = engine
    eng, worker = runtime.service, runtime.worker
    blocker, _ = await eng.submit("t1", job("import time; time.sleep(30)"))

    t0 = time.monotonic()
    while (await eng.get("t1", blocker.id)).status != "RUNNING":
        assert time.monotonic() - t0 < 10
        await asyncio.sleep(0.01)
    await worker.settled()  # the scheduler has claimed all it could after the blocker
    store.claims.clear()
    for _ in range(30):  # queue behind the busy code_execution slot
        await eng.submit("t1", job("print(1)"))
        await worker.settled()  # each submit wakes the scheduler
    # At most the first wake asks for other_code (and finds nothing); none asks for the
    # busy code_execution type.
    assert len(store.claims) <= 1, store.claims
    assert all("code_execution" not in c for c in store.claims)

    # A job of the idle type is still claimed at once, not at the next once-a-second sweep.
    other, _ = await eng.submit("t1", job("print(2)", "other_code"))
    t_other = time.monotonic()
    while (await eng.get("t1", other.id)).status == "PENDING":
        assert time.monotonic() - t_other < 10
        await asyncio.sleep(0.005)
    assert time.monotonic() - t_other < 0.5
    await eng.cancel("t1", blocker.id, "test over")


async def test_burst_mode_runs_until_the_queue_is_idle(
    engine: tuple[EngineRuntime, CountingStore],
) -> None:
    runtime, store = engine
    eng, worker = runtime.service, runtime.worker
    jobs = [
        (await eng.submit("t1", job(f"print({i})", job_type)))[0]
        for i, job_type in enumerate(["code_execution", "other_code"] * 3)
    ]
    await asyncio.wait_for(worker.run_until_idle(), 30)
    for submitted in jobs:
        done = await eng.get("t1", submitted.id)
        assert done.status == "COMPLETED", done
        assert done.result is not None
    # Idle: nothing pending, nothing running; a second burst returns at once.
    assert await store.list_jobs("t1", JobFilter(status=JobStatus.PENDING), 10) == []
    t0 = time.monotonic()
    await asyncio.wait_for(worker.run_until_idle(), 5)
    assert time.monotonic() - t0 < 0.5


class CancelDuringClaimStore(SQLiteStore):
    """The real SQLite store; once a claim has committed, and before the worker sees its
    answer, the job's cancel is asked for and its notice delivered, as another request (or
    another process) could do at that moment."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.runtime: EngineRuntime | None = None
        self.crossed: list[str] = []

    async def claim_next(
        self,
        job_types: Collection[str],
        owner: str,
        lease_expires_at: datetime,
        now: datetime,
        policy: SharePolicy = DEFAULT_SHARE,
    ) -> Job | None:
        claimed = await super().claim_next(job_types, owner, lease_expires_at, now, policy)
        if claimed is not None and self.runtime is not None:
            await self.request_cancel(claimed.id, claimed.tenant_id, "crossed the claim", now)
            self.runtime.hub.notify_cancel(claimed.id)
            self.crossed.append(claimed.id)
        return claimed


async def test_a_cancel_that_crosses_the_claim_stops_the_job_at_once(tmp_path: Path) -> None:
    # Leases renewed every 20 s: a cancel heard only at a renewal would leave the job running.
    settings = Settings(data_dir=tmp_path, concurrency={"code_execution": 1}, lease_seconds=60)
    store = CancelDuringClaimStore(tmp_path / "jobs.db")
    await store.open()
    runtime = build_engine(
        settings,
        store=store,
        executors={"code_execution": CodeExecutor(settings)},
        exclusive_store=True,
    )
    store.runtime = runtime
    await runtime.start()
    try:
        submitted, _ = await runtime.service.submit("t1", job("import time; time.sleep(30)"))
        final = await runtime.service.wait("t1", submitted.id, timeout=10)
        assert store.crossed == [submitted.id]
        assert final.status == "CANCELED", final
        assert final.cancel_reason == "crossed the claim"
        assert final.finished_at is not None and final.started_at is not None
        assert (final.finished_at - final.started_at).total_seconds() < 5
    finally:
        await runtime.stop()
        await store.close()


class SlowFirstReadStore(SQLiteStore):
    """The real SQLite store; the first read of ``slow_id`` returns the row as it was, but
    only once the job has ended: a waiter's read that raced the job's end."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.slow_id = ""
        self.stale_reads: list[str] = []
        self.stale_read_at = 0.0

    async def get_job(self, job_id: str, tenant_id: str | None = None) -> Job | None:
        row = await super().get_job(job_id, tenant_id)
        if job_id != self.slow_id or row is None or row.is_terminal:
            return row
        self.slow_id = ""
        deadline = time.monotonic() + 20
        while not (now := await super().get_job(job_id, tenant_id)) or not now.is_terminal:
            assert time.monotonic() < deadline, "the job never ended"
            await asyncio.sleep(0.01)
        self.stale_reads.append(str(row.status))
        self.stale_read_at = time.monotonic()
        return row


async def test_a_job_that_ends_while_a_waiter_subscribes_wakes_it(tmp_path: Path) -> None:
    """The waiter subscribes before it reads: an end that lands between the two still wakes
    it at once, not at its store re-check."""
    from deepexec_server.engine.service import STORE_RECHECK_SECONDS

    settings = Settings(data_dir=tmp_path, concurrency={"code_execution": 1})
    store = SlowFirstReadStore(tmp_path / "jobs.db")
    await store.open()
    runtime = build_engine(
        settings,
        store=store,
        executors={"code_execution": CodeExecutor(settings)},
        exclusive_store=True,
    )
    await runtime.start()
    try:
        submitted, _ = await runtime.service.submit("t1", job("print(1)"))
        store.slow_id = submitted.id
        final = await runtime.service.wait("t1", submitted.id, timeout=30)
        woken_after = time.monotonic() - store.stale_read_at
        assert len(store.stale_reads) == 1 and store.stale_reads[0] in ("PENDING", "RUNNING")
        assert final.status == "COMPLETED", final
        assert woken_after < STORE_RECHECK_SECONDS / 2, woken_after
    finally:
        await runtime.stop()
        await store.close()
