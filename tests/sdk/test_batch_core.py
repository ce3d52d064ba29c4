"""The SDK's pure core for batches: the batch request and its keys, and the pacing of a wait
on many jobs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from deepexec_sdk import DeepExecClient, JobWaitTimeoutError, MCPJobsWaitResponse
from deepexec_sdk._follow import JobsWait, WaitClock
from deepexec_sdk.types import MAX_BATCH_JOBS, MCPJobStatusResponse
from tests.sdk.conftest import BASE, KEY


@pytest.fixture
def client() -> Iterator[DeepExecClient]:
    """A client that never sends: these tests read the requests it builds."""
    with DeepExecClient(BASE, KEY) as c:
        yield c


def job(i: int, status: str = "COMPLETED") -> dict[str, object]:
    return {"name": f"j{i}", "job_type": "code_execution", "data": {"code": "1"}, "status": status}


def ended(job_id: str) -> MCPJobStatusResponse:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return MCPJobStatusResponse(
        job_id=job_id, name="j", job_type="code_execution", status="COMPLETED",
        created_at=at, updated_at=at,
    )  # fmt: skip


def test_a_batch_request_carries_a_key_for_the_batch_and_for_every_job(
    client: DeepExecClient,
) -> None:
    call = client._submit_batch_call([job(0), {**job(1), "idempotency_key": "mine"}], None)
    assert call.spec.method == "POST" and call.spec.url.endswith("/v1/jobs/batch")
    assert call.spec.headers["Idempotency-Key"].startswith("sdk-")
    items = call.spec.json["jobs"]
    assert items[0]["idempotency_key"].startswith("sdk-")
    assert items[1]["idempotency_key"] == "mine"
    # Made once per call: the spec, sent again on every retry, keeps them.
    again = client._submit_batch_call([job(0)], "batch-key")
    assert again.spec.headers["Idempotency-Key"] == "batch-key"


@pytest.mark.parametrize("count", [0, MAX_BATCH_JOBS + 1])
def test_a_batch_holds_1_to_1000_jobs(client: DeepExecClient, count: int) -> None:
    with pytest.raises(ValueError, match="1 to 1000 jobs"):
        client._submit_batch_call([job(i) for i in range(count)], None)


def test_a_batch_is_a_list_of_mappings(client: DeepExecClient) -> None:
    with pytest.raises(TypeError, match="list of job mappings"):
        client._submit_batch_call(job(0), None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"jobs\[1\] must be a mapping"):
        client._submit_batch_call([job(0), "x"], None)  # type: ignore[list-item]


def test_a_wait_on_many_jobs_names_the_pending_ones_up_to_the_cap() -> None:
    ids = [f"job_{i}" for i in range(MAX_BATCH_JOBS + 5)]
    wait = JobsWait(ids, WaitClock(1.0, 10.0, started=0.0))
    assert wait.next_ids() == ids[:MAX_BATCH_JOBS]
    answer = MCPJobsWaitResponse(jobs=[ended("job_3"), ended("job_0")], pending=[])
    assert [s.job_id for s in wait.take(answer)] == ["job_3", "job_0"]
    assert wait.next_ids()[:3] == ["job_1", "job_2", "job_4"]
    assert wait.next_ids()[-1] == f"job_{MAX_BATCH_JOBS + 1}"


def test_a_wait_on_many_jobs_asks_again_at_once_after_ended_jobs_and_times_out_only_empty() -> None:
    wait = JobsWait(["a", "b"], WaitClock(1.0, 5.0, started=0.0))
    assert wait.pause(True, sent=0.0, now=0.2) == 0.0  # more may be ready
    assert wait.pause(False, sent=0.0, now=0.2) == pytest.approx(0.8)  # answered early
    assert wait.pause(True, sent=5.0, now=6.0) == 0.0  # past the deadline, but it brought jobs
    with pytest.raises(JobWaitTimeoutError) as info:
        wait.pause(False, sent=5.0, now=6.0)
    assert info.value.pending == ["a", "b"] and info.value.job_id == "a"
    assert isinstance(info.value, TimeoutError)


def test_a_wait_takes_job_ids_not_one_string(client: DeepExecClient) -> None:
    with pytest.raises(TypeError, match="not one string"):
        list(client.iter_mcp_jobs_as_completed("job_1"))
