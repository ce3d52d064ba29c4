"""Engine behaviour a user sees, on real servers: priority order, timeouts, crash recovery,
per-type concurrency, progress."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepexec_sdk import DeepExecClient
from tests.conftest import processes_of_job, wait_for_no_processes_of_job
from tests.serverproc import ServerProcess

PY = "code_execution"


def wait_for_positive(job_id: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("python3" in cmd for cmd in processes_of_job(job_id)):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def one_slot_server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path / "home", "--concurrency", "code_execution=1").start()
    yield srv
    srv.stop()


def sdk(server: ServerProcess) -> DeepExecClient:
    return DeepExecClient(base_url=server.base_url, api_key=server.api_key)


def test_higher_priority_job_starts_before_earlier_lower_priority_ones(
    one_slot_server: ServerProcess,
) -> None:
    with sdk(one_slot_server) as c:
        blocker = c.submit_mcp_job("blocker", PY, {"code": "import time; time.sleep(1.5)"})
        deadline = time.monotonic() + 10
        while c.get_mcp_job_status(blocker.job_id).status != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        low = [c.submit_mcp_job(f"low{i}", PY, {"code": "pass"}, priority=0) for i in range(3)]
        high = c.submit_mcp_job("high", PY, {"code": "pass"}, priority=10)
        finals = {
            j.job_id: c.wait_for_mcp_job_completion(j.job_id, max_wait_time=30)
            for j in [blocker, *low, high]
        }
    assert all(f.status == "COMPLETED" for f in finals.values())
    started = {jid: f.started_at for jid, f in finals.items()}
    assert all(started[high.job_id] < started[j.job_id] for j in low)  # type: ignore[operator]
    # equal priorities keep submission order
    low_starts = [started[j.job_id] for j in low]
    assert low_starts == sorted(low_starts)  # type: ignore[type-var]


def test_timeout_fails_the_job_quickly_and_keeps_its_output(client: DeepExecClient) -> None:
    code = "import time\nprint('before the sleep', flush=True)\ntime.sleep(5)\nprint('never')\n"
    job = client.submit_mcp_job("too slow", PY, {"code": code}, timeout=1)
    final = client.wait_for_mcp_job_completion(job.job_id, poll_interval=0.1, max_wait_time=30)
    assert final.status == "FAILED"
    assert final.error is not None and final.error.type == "timeout"
    assert final.result is not None
    assert "before the sleep" in final.result["stdout"]
    assert "never" not in final.result["stdout"]
    assert final.started_at is not None and final.finished_at is not None
    assert (final.finished_at - final.started_at).total_seconds() < 2.0


def test_runtime_error_is_a_failed_job_with_its_exit_code(client: DeepExecClient) -> None:
    final = client.execute_code_and_wait("import sys\nprint('oops', file=sys.stderr)\nsys.exit(3)")
    assert final.status == "FAILED"
    assert final.error is not None and final.error.type == "runtime_error"
    assert final.result is not None and final.result["exit_code"] == 3
    assert "oops" in final.result["stderr"]


def test_cancel_pending_job_is_immediate(one_slot_server: ServerProcess) -> None:
    with sdk(one_slot_server) as c:
        blocker = c.submit_mcp_job("blocker", PY, {"code": "import time; time.sleep(3)"})
        pending = c.submit_mcp_job("waiting", PY, {"code": "print('ran')"})
        res = c.cancel_mcp_job(pending.job_id, reason="no longer needed")
        assert res.status == "CANCELED"
        status = c.get_mcp_job_status(pending.job_id)
        assert status.status == "CANCELED"
        assert status.cancel_reason == "no longer needed"
        assert status.started_at is None
        c.cancel_mcp_job(blocker.job_id)


def test_progress_reported_by_the_program_is_seen_before_the_end(client: DeepExecClient) -> None:
    code = (
        "import os, time\n"
        "fd = int(os.environ['DEEPEXEC_PROGRESS_FD'])\n"
        "for p in (25, 50, 75):\n"
        "    os.write(fd, f'{p} step {p}\\n'.encode())\n"
        "    time.sleep(0.4)\n"
    )
    job = client.submit_mcp_job("progress", PY, {"code": code})
    seen: list[int] = []
    for event in client.stream_mcp_job_events(job.job_id):
        if event.type == "progress" and event.progress is not None:
            seen.append(event.progress)
    assert seen[:3] == [25, 50, 75]
    final = client.get_mcp_job_status(job.job_id)
    assert final.status == "COMPLETED" and final.progress == 100


@pytest.mark.slow
def test_kill_minus_9_then_restart_loses_no_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    srv = ServerProcess(home, "--concurrency", "code_execution=1").start()
    tag = f"crash-{uuid.uuid4().hex[:6]}"
    with sdk(srv) as c:
        done = c.execute_code_and_wait("print('finished before the crash')", tags=[tag])
        assert done.status == "COMPLETED"
        running = c.submit_mcp_job(
            "running", PY, {"code": "import time; time.sleep(60)"}, tags=[tag]
        )
        pending = [
            c.submit_mcp_job(f"pending{i}", PY, {"code": f"print({i})"}, tags=[tag], priority=-1)
            for i in range(3)
        ]
        deadline = time.monotonic() + 10
        while c.get_mcp_job_status(running.job_id).status != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert wait_for_positive(running.job_id), "positive control: the job's processes exist"
    srv.kill9()

    assert wait_for_no_processes_of_job(running.job_id, timeout=5) == [], (
        "the crashed server's sandboxes must die with it"
    )

    srv2 = ServerProcess(home, "--concurrency", "code_execution=1")
    srv2.port = srv.port
    srv2.start()
    try:
        with sdk(srv2) as c:
            after_crash = c.get_mcp_job_status(running.job_id)
            assert after_crash.status == "FAILED"
            assert after_crash.error is not None and after_crash.error.type == "interrupted"
            for p in pending:
                final = c.wait_for_mcp_job_completion(p.job_id, max_wait_time=30)
                assert final.status == "COMPLETED"
            again = c.get_mcp_job_status(done.job_id)
            assert again.status == "COMPLETED"
            assert again.result == done.result
            jobs = c.list_mcp_jobs(tags=[tag]).jobs
            assert len(jobs) == 5
            assert all(j.is_terminal for j in jobs)
    finally:
        srv2.stop()


def test_graceful_shutdown_stops_running_jobs_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    srv = ServerProcess(home).start()
    with sdk(srv) as c:
        job = c.submit_mcp_job("long", PY, {"code": "import time; time.sleep(60)"})
        deadline = time.monotonic() + 10
        while c.get_mcp_job_status(job.job_id).status != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert wait_for_positive(job.job_id), "positive control: the running job's processes exist"
    srv.stop()  # SIGTERM
    assert wait_for_no_processes_of_job(job.job_id, timeout=1) == []
    srv2 = ServerProcess(home)
    srv2.port = srv.port
    srv2.start()
    try:
        with sdk(srv2) as c:
            final = c.get_mcp_job_status(job.job_id)
        assert final.status == "FAILED"
        assert final.error is not None and final.error.type == "interrupted"
        assert "shut down" in final.error.message
    finally:
        srv2.stop()
