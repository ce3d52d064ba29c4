"""The real server on PostgreSQL (the shared store): jobs run, bad input stays a 4xx, and a
crashed server's running job is reaped once its lease expires."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from deepexec_sdk import DeepExecClient
from tests.serverproc import ServerProcess

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        os.environ.get("DEEPEXEC_TEST_SKIP_POSTGRES") == "1",
        reason="DEEPEXEC_TEST_SKIP_POSTGRES=1",
    ),
]


def test_server_on_postgresql_runs_jobs_and_reaps_a_crashed_runner(
    tmp_path: Path, pg_url: str
) -> None:
    home = tmp_path / "home"
    env = {"DEEPEXEC_LEASE_SECONDS": "2"}
    srv = ServerProcess(
        home, "--database-url", pg_url, "--concurrency", "code_execution=1", env=env
    ).start()
    try:
        with DeepExecClient(base_url=srv.base_url, api_key=srv.api_key) as c:
            done = c.execute_code_and_wait("print('on postgres')", max_wait_time=30)
            assert done.status == "COMPLETED"
            assert done.result is not None and "on postgres" in done.result["stdout"]
            r = httpx.post(
                f"{srv.base_url}/v1/jobs",
                headers={"Authorization": f"Bearer {srv.api_key}"},
                json={"name": "nul\u0000", "job_type": "code_execution", "data": {"code": "1"}},
            )
            assert r.status_code == 422, r.text
            running = c.submit_mcp_job(
                "running", "code_execution", {"code": "import time; time.sleep(60)"}
            )
            pending = c.submit_mcp_job("pending", "code_execution", {"code": "print(2)"})
            deadline = time.monotonic() + 10
            while c.get_mcp_job_status(running.job_id).status != "RUNNING":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        srv.kill9()

        srv2 = ServerProcess(
            home, "--database-url", pg_url, "--concurrency", "code_execution=1", env=env
        )
        srv2.start()
        try:
            with DeepExecClient(base_url=srv2.base_url, api_key=srv2.api_key) as c:
                final = c.wait_for_mcp_job_completion(running.job_id, max_wait_time=20)
                assert final.status == "FAILED"
                assert final.error is not None and final.error.type == "interrupted"
                assert c.wait_for_mcp_job_completion(pending.job_id, max_wait_time=20).status == (
                    "COMPLETED"
                )
                assert c.get_mcp_job_status(done.job_id).result == done.result
        finally:
            srv2.stop()
    finally:
        srv.stop()


def test_api_only_server_with_a_separate_worker_process(tmp_path: Path, pg_url: str) -> None:
    """The scale-out shape: `serve --no-runners` answers the API, `deepexec worker` processes
    sharing the PostgreSQL store run the jobs. Cancels reach the worker through the store; a
    worker that dies has its running job reaped by the server once the lease expires."""
    import signal
    import subprocess

    from tests.serverproc import DEEPEXEC

    env = {"DEEPEXEC_LEASE_SECONDS": "3"}
    srv = ServerProcess(tmp_path / "home", "--database-url", pg_url, "--no-runners", env=env)
    srv.start()
    worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [DEEPEXEC, "worker", "--database-url", pg_url],
            env=srv.env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    worker = start_worker()
    try:
        with DeepExecClient(base_url=srv.base_url, api_key=srv.api_key) as c:
            done = c.execute_code_and_wait("print('ran on a worker')", max_wait_time=30)
            assert done.status == "COMPLETED", (done.error, (tmp_path / "worker.log").read_text())
            assert done.result is not None and "ran on a worker" in done.result["stdout"]

            slow = c.submit_mcp_job(
                "slow", "code_execution", {"code": "import time; time.sleep(60)"}
            )
            deadline = time.monotonic() + 10
            while c.get_mcp_job_status(slow.job_id).status != "RUNNING":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            c.cancel_mcp_job(slow.job_id)
            final = c.wait_for_mcp_job_completion(slow.job_id, poll_interval=0.2, max_wait_time=10)
            assert final.status == "CANCELED"

            orphan = c.submit_mcp_job(
                "orphan", "code_execution", {"code": "import time; time.sleep(60)"}
            )
            deadline = time.monotonic() + 10
            while c.get_mcp_job_status(orphan.job_id).status != "RUNNING":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            reaped = c.wait_for_mcp_job_completion(
                orphan.job_id, poll_interval=0.5, max_wait_time=15
            )
            assert reaped.status == "FAILED"
            assert reaped.error is not None and reaped.error.type == "interrupted"
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(20)
        worker_log.close()
        srv.stop()


def test_a_burst_worker_runs_the_queue_then_exits(tmp_path: Path, pg_url: str) -> None:
    """`deepexec worker --burst` runs every queued job, jobs of several types included, and
    exits 0 once the queue is idle; a second burst on the empty queue exits at once."""
    import subprocess

    from tests.serverproc import DEEPEXEC

    srv = ServerProcess(tmp_path / "home", "--database-url", pg_url, "--no-runners")
    srv.start()
    try:
        with DeepExecClient(base_url=srv.base_url, api_key=srv.api_key) as c:
            queued = [
                c.submit_mcp_job(f"burst {i}", "code_execution", {"code": f"print({i} * 7)"})
                for i in range(4)
            ]
            assert {c.get_mcp_job_status(j.job_id).status for j in queued} == {"PENDING"}
            burst = [DEEPEXEC, "worker", "--burst", "--database-url", pg_url]
            ran = subprocess.run(burst, env=srv.env, capture_output=True, text=True, timeout=60)
            assert ran.returncode == 0, ran.stderr
            assert "the queue is idle" in ran.stderr
            for i, job in enumerate(queued):
                done = c.get_mcp_job_status(job.job_id)
                assert done.status == "COMPLETED", done
                assert done.result is not None and done.result["stdout"] == f"{i * 7}\n"
            t0 = time.monotonic()
            again = subprocess.run(burst, env=srv.env, capture_output=True, text=True, timeout=60)
            assert again.returncode == 0, again.stderr
            assert time.monotonic() - t0 < 15
    finally:
        srv.stop()
