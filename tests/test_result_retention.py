"""Results are not kept forever: on the real server, a finished job's result is purged after
the retention period, or oldest first once its tenant keeps more result bytes than its cap.
The job stays, and says its result was purged; the cache of ended jobs does not serve the
purged result."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepexec_sdk import DeepExecClient
from deepexec_sdk.types import MCPJobStatusResponse
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"DEEPEXEC_PURGE_INTERVAL_SECONDS": "0.2", **request.param}
    srv = ServerProcess(tmp_path / "home", env=env).start()
    yield srv
    srv.stop()


def purged(client: DeepExecClient, job_id: str, within: float = 20) -> MCPJobStatusResponse:
    deadline = time.monotonic() + within
    while True:
        status = client.get_mcp_job_status(job_id)
        if status.result_purged_at is not None or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


@pytest.mark.parametrize("server", [{"DEEPEXEC_RESULT_RETENTION": "2s"}], indirect=True)
def test_a_result_past_its_retention_reads_as_purged_and_the_job_stays(
    server: ServerProcess,
) -> None:
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as client:
        final = client.execute_code_and_wait("print('kept a while')")
        assert final.status == "COMPLETED" and final.result is not None
        assert final.result_purged_at is None
        # Read it again: an ended job's status is served from the cache from now on.
        assert client.get_mcp_job_status(final.job_id).result == final.result
        status = purged(client, final.job_id)
        assert status.result_purged_at is not None, status
        assert status.result is None
        assert (status.status, status.finished_at, status.error) == (
            "COMPLETED",
            final.finished_at,
            None,
        )
        assert status.result_purged_at >= status.finished_at  # type: ignore[operator]
        # A long-poll of the ended job says the same.
        waited = client.wait_for_mcp_job_completion(final.job_id)
        assert waited.result is None and waited.result_purged_at == status.result_purged_at


@pytest.mark.parametrize(
    "server",
    [{"DEEPEXEC_RESULT_RETENTION": "never", "DEEPEXEC_TENANT_RESULT_BYTES": "5000"}],
    indirect=True,
)
def test_results_over_the_tenant_cap_are_purged_oldest_first(server: ServerProcess) -> None:
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as client:
        jobs = [client.execute_code_and_wait("print('x' * 2000)") for _ in range(3)]
        assert all(j.status == "COMPLETED" for j in jobs)
        oldest = purged(client, jobs[0].job_id)
        assert oldest.result_purged_at is not None and oldest.result is None
        newest = client.get_mcp_job_status(jobs[2].job_id)
        assert newest.result_purged_at is None and newest.result is not None
