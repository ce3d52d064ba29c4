"""Batches against the real server, on SQLite and on PostgreSQL (a schema of its own): 1,000
jobs in one request all run; a retried batch creates nothing twice; every bad item is named
and none stored; a batch is canceled and waited on as one; a tenant never sees another's."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from deepexec_sdk import (
    DeepExecAsyncClient,
    DeepExecClient,
    JobWaitTimeoutError,
    MCPConflictError,
    MCPJobNotFoundError,
    MCPValidationError,
)
from deepexec_server.engine.batches import WAIT_GATHER_SECONDS
from tests.serverproc import ServerProcess
from tests.test_reference_examples import example
from tests.test_retry_through_proxy import CuttingProxy

PG = os.environ.get("DEEPEXEC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = pytest.mark.timeout(300)


def trivial(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"trivial {i}",
        "job_type": "code_execution",
        "data": {"code": f"print({i})"},
        **extra,
    }


def sleeper(seconds: float, **extra: Any) -> dict[str, Any]:
    code = f"import time; time.sleep({seconds}); print('slept {seconds}')"
    return {
        "name": f"sleep {seconds}",
        "job_type": "code_execution",
        "data": {"code": code},
        **extra,
    }


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def srv(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real server with four code runners, on SQLite or on PostgreSQL."""
    args = ["--concurrency", "code_execution=4"]
    env: dict[str, str] = {}
    schema = None
    if request.param == "postgres":
        if os.environ.get("DEEPEXEC_TEST_SKIP_POSTGRES") == "1":
            pytest.skip("DEEPEXEC_TEST_SKIP_POSTGRES=1")
        schema = f"dx_batches_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        sep = "&" if "?" in PG else "?"
        # In the environment, so that the CLI (``keys create``) finds the same store.
        env["DEEPEXEC_DATABASE_URL"] = f"{PG}{sep}options=-csearch_path%3D{schema}"
    home = tmp_path_factory.mktemp(f"batches-{request.param}")
    server = ServerProcess(home, *args, env=env).start()
    yield server
    server.stop()
    if schema is not None:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def tenant_client(srv: ServerProcess, **kw: Any) -> DeepExecClient:
    """A client of a tenant of its own, so what the tenant has is what this test made."""
    key = srv.new_tenant_key(f"t-{uuid.uuid4().hex[:8]}")
    return DeepExecClient(base_url=srv.base_url, api_key=key, **kw)


def headers(client: DeepExecClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {client._api_key}"}


def all_jobs(client: DeepExecClient) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(50):
        page = client.list_mcp_jobs(limit=200, cursor=cursor)
        ids += [j.job_id for j in page.jobs]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
    raise AssertionError("more pages than expected")


def test_a_thousand_trivial_jobs_in_one_request_all_run(srv: ServerProcess) -> None:
    sent: list[str] = []
    http = httpx.Client(
        timeout=60, event_hooks={"request": [lambda r: sent.append(f"{r.method} {r.url.path}")]}
    )
    with http, tenant_client(srv, http_client=http) as client:
        batch = client.submit_mcp_jobs([trivial(i) for i in range(1000)])
        assert sent == ["POST /v1/jobs/batch"]  # one round trip for the whole submit
        assert len(batch.jobs) == 1000 and all(j.created for j in batch.jobs)
        assert [j.name for j in batch.jobs] == [f"trivial {i}" for i in range(1000)]
        t0 = time.monotonic()
        done = client.wait_for_mcp_jobs(batch.job_ids, max_wait_time=240)
        waited, waits = time.monotonic() - t0, len(sent) - 1
        assert [s.job_id for s in done] == batch.job_ids
        assert all(s.status == "COMPLETED" for s in done), {s.status for s in done}
        assert [s.result["stdout"] for s in done if s.result] == [f"{i}\n" for i in range(1000)]
        # Waiting is one long-poll for many jobs at a time, not a request per job: a held
        # answer gathers the jobs that end within WAIT_GATHER_SECONDS of the first (an answer
        # is immediate only when jobs ended between two requests).
        assert waits <= 2 * waited / WAIT_GATHER_SECONDS + 10, (waits, waited)
        progress = client.get_mcp_batch_status(batch.batch_id)
        assert progress.done and progress.total == 1000 and progress.finished == 1000
        assert progress.counts["COMPLETED"] == 1000
        assert len(all_jobs(client)) == 1000


def test_a_retried_batch_returns_the_same_jobs_and_creates_nothing_twice(
    srv: ServerProcess,
) -> None:
    with tenant_client(srv) as client:
        items = [trivial(i, idempotency_key=f"item-{i}") for i in range(20)]
        url, h = f"{srv.base_url}/v1/jobs/batch", {**headers(client), "Idempotency-Key": "b-1"}
        first = httpx.post(url, json={"jobs": items}, headers=h)
        assert first.status_code == 201, first.text
        again = httpx.post(url, json={"jobs": items}, headers=h)
        assert again.status_code == 200, again.text
        assert again.json()["batch_id"] == first.json()["batch_id"]
        ids = [j["job_id"] for j in first.json()["jobs"]]
        assert [j["job_id"] for j in again.json()["jobs"]] == ids
        assert not any(j["created"] for j in again.json()["jobs"])
        # Without the batch's key, the items' keys alone still create no job twice: a new
        # batch of the same jobs.
        other = httpx.post(url, json={"jobs": items}, headers=headers(client))
        assert other.status_code == 201 and other.json()["batch_id"] != first.json()["batch_id"]
        assert [j["job_id"] for j in other.json()["jobs"]] == ids
        # A single submit with an item's key is that item's job.
        single = httpx.post(
            f"{srv.base_url}/v1/jobs",
            json=trivial(3),
            headers={**headers(client), "Idempotency-Key": "item-3"},
        )
        assert single.status_code == 200 and single.json()["job_id"] == ids[3]
        assert sorted(all_jobs(client)) == sorted(ids)
        # The batch's key for another batch, or an item's key for another job: 409, nothing
        # stored.
        changed = httpx.post(url, json={"jobs": items[:5]}, headers=h)
        assert (
            changed.status_code == 409 and changed.json()["error"]["type"] == "idempotency_conflict"
        )
        reused = [trivial(100, idempotency_key="fresh"), trivial(99, idempotency_key="item-7")]
        conflict = httpx.post(url, json={"jobs": reused}, headers=headers(client))
        assert conflict.status_code == 409, conflict.text
        details = conflict.json()["error"]["details"]
        assert details == [
            {
                "index": 1,
                "loc": ["body", "jobs", 1, "idempotency_key"],
                "msg": "already used for a different request",
                "job_id": ids[7],
            }
        ]
        assert sorted(all_jobs(client)) == sorted(ids)
        client.wait_for_mcp_jobs(ids, max_wait_time=120)


def test_the_sdk_retries_a_batch_whose_answer_was_lost_without_a_second_job(
    srv: ServerProcess,
) -> None:
    proxy = CuttingProxy(srv.port)
    try:
        key = srv.new_tenant_key(f"t-{uuid.uuid4().hex[:8]}")
        with DeepExecClient(
            base_url=f"http://127.0.0.1:{proxy.port}", api_key=key, max_retries=3
        ) as through:
            batch = through.submit_mcp_jobs([trivial(i) for i in range(50)])
        assert proxy.cut_count == 1
    finally:
        proxy.close()
    with DeepExecClient(base_url=srv.base_url, api_key=key) as direct:
        assert sorted(all_jobs(direct)) == sorted(batch.job_ids)
        direct.wait_for_mcp_jobs(batch.job_ids, max_wait_time=120)


def test_every_bad_item_is_named_with_its_field_and_nothing_is_stored(srv: ServerProcess) -> None:
    with tenant_client(srv) as client:
        items = [
            trivial(0),
            {**trivial(1), "timeout": 0},
            trivial(2),
            {**trivial(3), "data": {"code": "1", "language": "cobol"}},
            {**trivial(4), "job_type": "quantum"},
            {**trivial(5), "colour": "blue"},
            trivial(6, idempotency_key="twice"),
            trivial(7, idempotency_key="twice"),
            "not a job",
        ]
        with pytest.raises(MCPValidationError) as info:
            client.submit_mcp_jobs(items[:-1])  # the SDK itself refuses the string
        r = httpx.post(
            f"{srv.base_url}/v1/jobs/batch", json={"jobs": items}, headers=headers(client)
        )
        assert r.status_code == 422
        error = r.json()["error"]
        assert error["type"] == "invalid_batch"
        assert "6 of 9 jobs are invalid, so none was stored" in error["message"]
        named = [(d["index"], d["loc"][3:], d["type"]) for d in error["details"]]
        assert named == [
            (1, ["timeout"], "greater_than_equal"),
            (3, ["data", "language"], "invalid_job_data"),
            (4, ["job_type"], "unknown_job_type"),
            (5, ["colour"], "extra_forbidden"),
            (7, ["idempotency_key"], "duplicate_idempotency_key"),
            (8, [], "model_type"),
        ]
        assert "jobs[1].timeout" in str(info.value)
        assert all_jobs(client) == []
        # The body itself: not a list of 1 to 1,000 objects.
        for body in ({"jobs": []}, {"jobs": [trivial(0)] * 1001}, {"items": []}):
            bad = httpx.post(f"{srv.base_url}/v1/jobs/batch", json=body, headers=headers(client))
            assert bad.status_code == 422 and bad.json()["error"]["type"] == "validation_error"
        assert all_jobs(client) == []


def test_a_batch_is_canceled_and_waited_on_as_one(srv: ServerProcess) -> None:
    with tenant_client(srv) as client:
        batch = client.submit_mcp_jobs([sleeper(60) for _ in range(6)] + [trivial(0)])
        deadline = time.monotonic() + 30
        while client.get_mcp_batch_status(batch.batch_id).counts["RUNNING"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        canceled = client.cancel_mcp_batch(batch.batch_id, reason="grading stopped")
        assert 6 <= canceled.canceled <= 7 and canceled.total == 7
        r = httpx.get(
            f"{srv.base_url}/v1/batches/{batch.batch_id}",
            params={"wait": 30},
            headers=headers(client),
            timeout=40,
        )
        assert r.status_code == 200, r.text
        progress = r.json()
        assert progress["done"] and progress["finished"] == 7
        assert progress["counts"]["CANCELED"] >= 6
        assert time.monotonic() - t0 < 20
        listed = httpx.get(
            f"{srv.base_url}/v1/batches/{batch.batch_id}/jobs",
            params={"limit": 4, "status": "CANCELED"},
            headers=headers(client),
        ).json()
        assert len(listed["jobs"]) == 4 and listed["next_cursor"] is not None
        assert all(j["cancel_reason"] == "grading stopped" for j in listed["jobs"])
        rest = httpx.get(
            f"{srv.base_url}/v1/batches/{batch.batch_id}/jobs",
            params={"cursor": listed["next_cursor"], "status": "CANCELED"},
            headers=headers(client),
        ).json()
        order = {job_id: i for i, job_id in enumerate(batch.job_ids)}
        positions = [order[j["job_id"]] for j in listed["jobs"] + rest["jobs"]]
        assert positions == sorted(positions) and len(positions) == progress["counts"]["CANCELED"]
        statuses = client.wait_for_mcp_jobs(batch.job_ids, max_wait_time=5)
        assert all(s.status == "CANCELED" for s in statuses[:6])
        assert client.cancel_mcp_batch(batch.batch_id).canceled == 0


def test_a_wait_on_many_jobs_gives_up_after_max_wait_time_naming_the_pending(
    srv: ServerProcess,
) -> None:
    with tenant_client(srv) as client:
        batch = client.submit_mcp_jobs([trivial(0), sleeper(60)])
        t0 = time.monotonic()
        with pytest.raises(JobWaitTimeoutError) as info:
            client.wait_for_mcp_jobs(batch.job_ids, poll_interval=0.5, max_wait_time=2)
        assert 1.5 < time.monotonic() - t0 < 10
        assert info.value.pending == [batch.job_ids[1]]
        client.cancel_mcp_batch(batch.batch_id)


def test_another_tenant_never_sees_a_batch(srv: ServerProcess) -> None:
    with tenant_client(srv) as owner, tenant_client(srv) as other:
        batch = owner.submit_mcp_jobs([sleeper(30), trivial(1)])
        bid = batch.batch_id
        for method, path, body in (
            ("GET", f"/v1/batches/{bid}", None),
            ("GET", f"/v1/batches/{bid}?wait=1", None),
            ("GET", f"/v1/batches/{bid}/jobs", None),
            ("POST", f"/v1/batches/{bid}/cancel", {}),
            ("POST", "/v1/jobs/wait", {"job_ids": batch.job_ids, "wait": 1}),
        ):
            r = httpx.request(method, srv.base_url + path, json=body, headers=headers(other))
            assert r.status_code == 404, (path, r.text)
        with pytest.raises(MCPJobNotFoundError):
            other.get_mcp_batch_status(bid)
        with pytest.raises(MCPJobNotFoundError):
            other.wait_for_mcp_jobs(batch.job_ids, max_wait_time=1)
        # The other tenant's batch key and item keys are its own: the same ones make new jobs.
        mine = owner.submit_mcp_jobs([trivial(9, idempotency_key="k")], idempotency_key="b")
        theirs = other.submit_mcp_jobs([trivial(9, idempotency_key="k")], idempotency_key="b")
        assert theirs.batch_id != mine.batch_id and theirs.job_ids != mine.job_ids
        assert owner.get_mcp_batch_status(bid).total == 2
        assert owner.cancel_mcp_batch(bid).canceled >= 1
        with pytest.raises(MCPConflictError):
            owner.submit_mcp_jobs([trivial(8, idempotency_key="k")])


async def test_the_async_client_yields_jobs_as_they_finish(srv: ServerProcess) -> None:
    key = srv.new_tenant_key(f"t-{uuid.uuid4().hex[:8]}")
    async with DeepExecAsyncClient(base_url=srv.base_url, api_key=key) as client:
        batch = await client.submit_mcp_jobs([sleeper(2.5), sleeper(1.2), sleeper(0.1)])
        t0 = time.monotonic()
        seen: list[tuple[str, float]] = []
        async for status in client.iter_mcp_jobs_as_completed(batch.job_ids, max_wait_time=60):
            assert status.status == "COMPLETED"
            seen.append((status.job_id, time.monotonic() - t0))
        assert [job_id for job_id, _ in seen] == batch.job_ids[::-1]
        # The quick one is handed over long before the slow one has ended.
        assert seen[2][1] - seen[0][1] > 1.5
        again = await client.wait_for_mcp_jobs(batch.job_ids, max_wait_time=5)
        assert [s.job_id for s in again] == batch.job_ids
        assert (await client.get_mcp_batch_status(batch.batch_id)).done


def test_the_reference_batch_example_runs_as_written(srv: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "batch_example.py"
    script.write_text(example("Batches: many jobs in one request"))
    run = subprocess.run(
        [sys.executable, str(script)], env=srv.env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "COMPLETED 10" in run.stdout, run.stdout
