"""The store's batches, on every backend of the contract suite (SQLite with and without
``RETURNING``, PostgreSQL): one transaction for a batch, idempotency per item and per batch,
progress, listing by position, cancel, and tenants kept apart."""

from __future__ import annotations

import dataclasses

import pytest

from deepexec_sdk.types import JobStatus
from deepexec_server.domain import IdempotencyConflicts, JobFilter, NewBatch, NewJob
from deepexec_server.store import Store
from tests import test_store_contract as contract
from tests.test_store_contract import CODE, Backend, at, new

# The contract suite's fixtures: every backend, each store on an empty database.
backend = contract.backend
pg_schemas = contract.pg_schemas
store = contract.store

pytestmark = pytest.mark.timeout(60)


def batch(
    *jobs: NewJob, tenant: str = "tenant-a", key: str | None = None, fp: str = "fp"
) -> NewBatch:
    return NewBatch(tenant_id=tenant, jobs=jobs, idempotency_key=key, fingerprint=fp)


async def test_a_batch_stores_its_jobs_in_request_order_and_lists_them_by_position(
    store: Store,
) -> None:
    made = await store.create_batch(batch(*(new(f"j{i}") for i in range(600))), at(0))
    assert made.created == (True,) * 600 and not made.replayed
    assert [j.name for j in made.jobs] == [f"j{i}" for i in range(600)]
    assert all(j.status == JobStatus.PENDING for j in made.jobs)
    assert made.batch.size == 600
    ids = await store.batch_job_ids(made.batch.id, "tenant-a")
    assert ids == [j.id for j in made.jobs]
    page = await store.list_batch_jobs(made.batch.id, "tenant-a", None, 250)
    assert page is not None and [p for p, _ in page] == list(range(250))
    rest = await store.list_batch_jobs(made.batch.id, "tenant-a", None, 1000, after=249)
    assert rest is not None and [s.id for _, s in rest] == [j.id for j in made.jobs[250:]]
    found = await store.get_job(made.jobs[599].id, "tenant-a")
    assert found == made.jobs[599]


async def test_an_item_key_taken_by_another_request_stores_nothing_of_the_batch(
    store: Store,
) -> None:
    earlier, _ = await store.create_job(new("earlier", key="k1"), at(0))
    other = dataclasses.replace(new("changed", key="k1"), fingerprint="another")
    with pytest.raises(IdempotencyConflicts) as info:
        await store.create_batch(batch(new("a", key="fresh"), other, new("b")), at(1))
    assert info.value.items == [(1, earlier.id)]
    # Rolled back: the fresh key is free and no job but the earlier one exists.
    listed = await store.list_jobs("tenant-a", JobFilter(), 10)
    assert [j.id for j in listed] == [earlier.id]
    again = await store.create_batch(batch(new("a", key="fresh")), at(2))
    assert again.created == (True,)


async def test_item_keys_return_the_earlier_jobs_and_a_batch_key_the_earlier_batch(
    store: Store,
) -> None:
    single, _ = await store.create_job(new("single", key="s"), at(0))
    first = await store.create_batch(
        batch(new("s", key="s"), new("x", key="x"), key="B", fp="fp-B"), at(1)
    )
    assert first.created == (False, True)
    assert first.jobs[0].id == single.id
    replay = await store.create_batch(batch(new("other"), key="B", fp="changed"), at(2))
    assert replay.replayed and replay.batch == first.batch
    assert replay.batch.fingerprint == "fp-B"
    assert [j.id for j in replay.jobs] == [j.id for j in first.jobs]
    # Without the batch key, the item keys alone still create no job twice.
    second = await store.create_batch(batch(new("s", key="s"), new("x", key="x")), at(3))
    assert second.batch.id != first.batch.id and second.created == (False, False)
    assert [j.id for j in second.jobs] == [j.id for j in first.jobs]


async def test_progress_counts_by_status_and_cancel_stops_the_open_jobs(store: Store) -> None:
    made = await store.create_batch(batch(*(new(f"j{i}") for i in range(4))), at(0))
    running = await store.claim_next([CODE], "runner-1", at(60), at(1))
    assert running is not None
    await store.finish_job(running.id, "runner-1", JobStatus.COMPLETED, {}, None, at(2))
    running = await store.claim_next([CODE], "runner-1", at(60), at(3))
    assert running is not None
    found = await store.batch_progress(made.batch.id, "tenant-a")
    assert found is not None
    assert found[1] == {
        JobStatus.PENDING: 2,
        JobStatus.RUNNING: 1,
        JobStatus.COMPLETED: 1,
        JobStatus.FAILED: 0,
        JobStatus.CANCELED: 0,
    }
    changed = await store.cancel_batch(made.batch.id, "tenant-a", "enough", at(4))
    assert changed is not None
    assert sorted(str(j.status) for j in changed) == ["CANCELED", "CANCELED", "RUNNING"]
    assert all(j.cancel_requested_at == at(4) and j.cancel_reason == "enough" for j in changed)
    # A second cancel changes nothing: the running job was asked already.
    assert await store.cancel_batch(made.batch.id, "tenant-a", None, at(5)) == []
    counts = await store.batch_progress(made.batch.id, "tenant-a")
    assert counts is not None and counts[1][JobStatus.CANCELED] == 2


async def test_another_tenant_sees_no_batch_and_no_job_of_it(store: Store) -> None:
    made = await store.create_batch(batch(new("mine"), new("mine too")), at(0))
    bid, ids = made.batch.id, [j.id for j in made.jobs]
    assert await store.batch_progress(bid, "tenant-b") is None
    assert await store.batch_job_ids(bid, "tenant-b") is None
    assert await store.list_batch_jobs(bid, "tenant-b", None, 10) is None
    assert await store.cancel_batch(bid, "tenant-b", None, at(1)) is None
    assert await store.job_states(ids, "tenant-b") == {}
    assert await store.get_jobs(ids, "tenant-b") == []
    states = await store.job_states([*ids, "job_unknown"], "tenant-a")
    assert states == {i: (JobStatus.PENDING, 0) for i in ids}
    assert {j.id for j in await store.get_jobs(ids, "tenant-a")} == set(ids)
    # The same batch key in two tenants makes two batches.
    a = await store.create_batch(batch(new("a"), key="same"), at(2))
    b = await store.create_batch(batch(new("b"), tenant="tenant-b", key="same"), at(2))
    assert a.batch.id != b.batch.id and not b.replayed


async def test_a_batch_outlives_its_store_being_closed_and_reopened(backend: Backend) -> None:
    s = await backend.open(fresh=True)
    made = await s.create_batch(batch(new("one")), at(0))
    await s.close()
    await s.open()
    found = await s.batch_progress(made.batch.id, "tenant-a")
    assert found is not None and found[0] == made.batch
