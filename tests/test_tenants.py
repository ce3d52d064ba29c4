"""Many tenants on one service, on the real server with the real sandbox: a tenant's single job
takes the next free slot however long another's backlog (SQLite, and PostgreSQL with two
worker processes), the quotas an operator sets with ``deepexec tenants`` answer 429 naming
themselves (and the SDK's retry gets through once the quota frees), the whole server's cap
answers 503 and /readyz says why, and /metrics shows each tenant's queue."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from deepexec_sdk import DeepExecClient
from deepexec_sdk.errors import MCPRateLimitError
from deepexec_sdk.types import JobStatus
from tests.serverproc import DEEPEXEC, ServerProcess

SLOW = "import time; time.sleep(0.3)"
BLOCKER = "import time; time.sleep(60)"

pytestmark = pytest.mark.timeout(180)


def code(
    source: str, *, priority: int = 0, timeout: int = 60, name: str = "t"
) -> dict[str, object]:
    return {
        "name": name,
        "job_type": "code_execution",
        "data": {"code": source},
        "priority": priority,
        "timeout": timeout,
    }


def wait_status(c: DeepExecClient, job_id: str, status: JobStatus, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while c.get_mcp_job_status(job_id).status != status:
        assert time.monotonic() < deadline, f"{job_id} never {status}"
        time.sleep(0.02)


def queue_backlog(c: DeepExecClient, n: int) -> str:
    """``n`` slow jobs of high priority in one batch; returns the batch id once one runs."""
    batch = c.submit_mcp_jobs([code(SLOW, priority=100) for _ in range(n)])
    deadline = time.monotonic() + 30
    while not c.get_mcp_batch_status(batch.batch_id).counts.get(JobStatus.RUNNING):
        assert time.monotonic() < deadline, "none of the backlog started"
        time.sleep(0.02)
    return batch.batch_id


def started_between(c: DeepExecClient, after: datetime, before: datetime) -> list[str]:
    """Ids of the tenant's jobs that started after ``after`` and before ``before``."""
    found = []
    for status in (JobStatus.RUNNING, JobStatus.COMPLETED):
        for job in c.list_mcp_jobs(status=status, limit=200).jobs:
            if job.started_at is not None and after < job.started_at < before:
                found.append(job.job_id)
    return found


def assert_next_slot_goes_to_b(a: DeepExecClient, b: DeepExecClient, backlog: int) -> None:
    """A queues ``backlog`` slow jobs (priority 100) and keeps every slot busy; B's one job
    (priority 0) starts at the next free slot: at most one of A's jobs (a claim already under
    way as B submitted) starts before it."""
    batch_id = queue_backlog(a, backlog)
    try:
        t0 = time.monotonic()
        done = b.execute_code_and_wait("print('b')", max_wait_time=30)
        waited = time.monotonic() - t0
        assert done.status == JobStatus.COMPLETED, done.error
        assert done.result is not None and done.result["stdout"] == "b\n"
        assert done.started_at is not None
        jumped = started_between(a, done.created_at, done.started_at)
        assert len(jumped) <= 1, (jumped, waited)
        pending = a.get_mcp_batch_status(batch_id).counts.get(JobStatus.PENDING, 0)
        assert pending > backlog - 100, "A's backlog drained: the test proved nothing"
    finally:
        a.cancel_mcp_batch(batch_id, "test over")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One slot for code, so every job past the first queues."""
    srv = ServerProcess(
        tmp_path_factory.mktemp("tenants") / "home",
        env={"DEEPEXEC_CONCURRENCY": "code_execution=1", "DEEPEXEC_TENANT_MAX_PENDING": "2000"},
    )
    srv.start()
    yield srv
    srv.stop()


def tenant_client(srv: ServerProcess, tenant: str) -> DeepExecClient:
    return DeepExecClient(base_url=srv.base_url, api_key=srv.new_tenant_key(tenant))


def test_one_job_of_b_takes_the_next_slot_behind_a_1000_job_backlog(
    shared: ServerProcess,
) -> None:
    with tenant_client(shared, "fair-a") as a, tenant_client(shared, "fair-b") as b:
        assert_next_slot_goes_to_b(a, b, 1000)


def test_weights_2_to_1_split_one_slot_2_to_1_under_saturation(shared: ServerProcess) -> None:
    shared.cli("tenants", "set", "heavy", "--weight", "2")
    with (
        tenant_client(shared, "heavy") as heavy,
        tenant_client(shared, "light") as light,
        tenant_client(shared, "holder") as holder,
    ):
        blocker = holder.submit_mcp_job("blocker", "code_execution", {"code": BLOCKER})
        wait_status(holder, blocker.job_id, JobStatus.RUNNING)
        batches = {
            name: c.submit_mcp_jobs([code("pass", name=name) for _ in range(150)]).batch_id
            for name, c in (("heavy", heavy), ("light", light))
        }
        holder.cancel_mcp_job(blocker.job_id, "let them in")  # both queues full: saturation
        deadline = time.monotonic() + 120
        while (
            sum(
                c.get_mcp_batch_status(batches[n]).finished
                for n, c in (("heavy", heavy), ("light", light))
            )
            < 100
        ):
            assert time.monotonic() < deadline, "the slot is not draining"
            time.sleep(0.2)
        starts = sorted(
            (job.started_at, name)
            for name, c in (("heavy", heavy), ("light", light))
            for status in (JobStatus.COMPLETED, JobStatus.RUNNING)
            for job in c.list_mcp_jobs(status=status, limit=200).jobs
            if job.started_at is not None
        )[:90]
        taken = sum(name == "heavy" for _, name in starts)
        assert abs(taken - 60) <= 6, (taken, 90 - taken)
        for name, c in (("heavy", heavy), ("light", light)):
            c.cancel_mcp_batch(batches[name], "test over")


def submit_raw(
    srv: ServerProcess, key: str, body: dict[str, object], **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{srv.base_url}/v1/jobs",
        json=body,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=10,
    )


def test_max_pending_is_a_429_naming_it_and_the_sdks_retry_gets_in_once_it_frees(
    shared: ServerProcess,
) -> None:
    shared.cli("tenants", "set", "quota-p", "--max-pending", "1")
    key = shared.new_tenant_key("quota-p")
    with DeepExecClient(base_url=shared.base_url, api_key=key) as c:
        blocker = c.submit_mcp_job("blocker", "code_execution", {"code": BLOCKER})
        wait_status(c, blocker.job_id, JobStatus.RUNNING)
        queued = c.submit_mcp_job("queued", "code_execution", {"code": "print(1)"})

        refused = submit_raw(shared, key, code("print(2)"))
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["type"] == "quota_exceeded"
        assert error["details"] == {"quota": "max_pending", "limit": 1}
        assert "max_pending" in error["message"] and "1" in error["message"]
        assert int(refused.headers["Retry-After"]) >= 1

        # The SDK retries the 429 (Retry-After) with one idempotency key; the queued job is
        # canceled meanwhile, so a retry gets in, and exactly one job is made.
        got: list[object] = []
        thread = threading.Thread(
            target=lambda: got.append(
                c.submit_mcp_job("retried", "code_execution", {"code": "print(4)"})
            )
        )
        thread.start()
        time.sleep(0.3)
        c.cancel_mcp_job(queued.job_id, "make room")
        thread.join(30)
        assert got and not isinstance(got[0], BaseException), got
        assert len(c.list_mcp_jobs(name="retried").jobs) == 1
        c.cancel_mcp_job(blocker.job_id, "test over")


def test_a_stored_submit_retried_when_the_quota_is_full_gets_its_job(shared: ServerProcess) -> None:
    shared.cli("tenants", "set", "quota-k", "--max-pending", "1")
    key = shared.new_tenant_key("quota-k")
    with DeepExecClient(base_url=shared.base_url, api_key=key) as c:
        blocker = c.submit_mcp_job("blocker", "code_execution", {"code": BLOCKER})
        wait_status(c, blocker.job_id, JobStatus.RUNNING)
        first = submit_raw(shared, key, code("print(1)"), **{"Idempotency-Key": "same"})
        assert first.status_code == 201, first.text
        full = submit_raw(shared, key, code("print(2)"))
        assert full.status_code == 429
        replay = submit_raw(shared, key, code("print(1)"), **{"Idempotency-Key": "same"})
        assert replay.status_code == 200, replay.text
        assert replay.json()["job_id"] == first.json()["job_id"]
        c.cancel_mcp_job(blocker.job_id, "test over")


def test_submit_rate_is_a_429_with_retry_after_and_the_sdk_gets_in_after_it(
    shared: ServerProcess,
) -> None:
    shared.cli("tenants", "set", "quota-r", "--submit-rate", "2/s")
    key = shared.new_tenant_key("quota-r")
    codes = [submit_raw(shared, key, code("pass")).status_code for _ in range(3)]
    assert codes[:2] == [201, 201] and codes[2] == 429, codes
    refused = submit_raw(shared, key, code("pass"))
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["details"] == {"quota": "submit_rate", "limit": 2.0}
    assert "submit_rate" in error["message"] and "2/s" in error["message"]
    assert refused.headers["Retry-After"] == "1"
    with DeepExecClient(base_url=shared.base_url, api_key=key) as c:
        made = c.submit_mcp_job("after", "code_execution", {"code": "pass"})
        assert c.get_mcp_job_status(made.job_id).name == "after"
    # A batch bigger than the bucket never fits: refused as final, saying why.
    big = httpx.post(
        f"{shared.base_url}/v1/jobs/batch",
        json={"jobs": [code("pass") for _ in range(3)]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert big.status_code == 429 and big.headers["X-Should-Retry"] == "false", big.text
    assert "a batch of 3 jobs" in big.json()["error"]["message"]


def test_max_timeout_refuses_a_longer_timeout_naming_the_quota(shared: ServerProcess) -> None:
    shared.cli("tenants", "set", "quota-t", "--max-timeout", "5")
    key = shared.new_tenant_key("quota-t")
    refused = submit_raw(shared, key, code("pass", timeout=10))
    assert refused.status_code == 429, refused.text
    error = refused.json()["error"]
    assert error["type"] == "quota_exceeded"
    assert error["details"] == {"quota": "max_timeout", "limit": 5}
    assert "max_timeout" in error["message"] and "5 s" in error["message"]
    # Waiting frees nothing: the answer says not to retry, and the SDK does not.
    assert refused.headers["X-Should-Retry"] == "false" and "Retry-After" not in refused.headers
    answered_429 = http_count(shared, "POST", 429)
    with (
        DeepExecClient(base_url=shared.base_url, api_key=key) as c,
        pytest.raises(MCPRateLimitError) as raised,
    ):
        c.submit_mcp_job("long", "code_execution", {"code": "pass"}, timeout=10)
    assert raised.value.error_type == "quota_exceeded" and "max_timeout" in str(raised.value)
    assert http_count(shared, "POST", 429) == answered_429 + 1  # one attempt, no retries
    assert submit_raw(shared, key, code("pass", timeout=5)).status_code == 201


def http_count(srv: ServerProcess, method: str, status: int) -> float:
    """``deepexec_http_requests_total`` for ``method`` and ``status``, from /metrics."""
    text = httpx.get(f"{srv.base_url}/metrics", timeout=5).text
    pattern = rf'deepexec_http_requests_total\{{method="{method}",status="{status}"\}} (\S+)'
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def test_code_limits_cap_what_a_tenants_code_job_may_ask_and_lower_its_defaults(
    shared: ServerProcess,
) -> None:
    shared.cli("tenants", "set", "small", "--code-limits", "memory_mb=128")
    key = shared.new_tenant_key("small")
    asked = code("pass")
    asked["data"] = {"code": "pass", "limits": {"memory_mb": 512}}
    refused = submit_raw(shared, key, asked)
    assert refused.status_code == 429 and refused.headers["X-Should-Retry"] == "false"
    error = refused.json()["error"]
    assert error["type"] == "quota_exceeded"
    assert error["details"] == {"quota": "code_limits.memory_mb", "limit": 128}
    assert "memory_mb 512" in error["message"] and "128" in error["message"]
    # A job that asks for nothing gets the cap, not the server's default of 512 MB: 300 MB
    # is more than it may have.
    with DeepExecClient(base_url=shared.base_url, api_key=key) as c:
        hog = c.execute_code_and_wait("x = bytearray(300 * 2**20)", max_wait_time=60)
        assert hog.status == JobStatus.FAILED and hog.error is not None
        assert hog.error.type == "memory_limit", hog.error
    with DeepExecClient(base_url=shared.base_url, api_key=shared.new_tenant_key("big")) as c:
        fits = c.execute_code_and_wait("x = bytearray(300 * 2**20)", max_wait_time=60)
        assert fits.status == JobStatus.COMPLETED, fits.error


def test_max_running_holds_a_tenants_jobs_in_the_queue(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "home", env={"DEEPEXEC_CONCURRENCY": "code_execution=2"})
    srv.start()
    try:
        srv.cli("tenants", "set", "one-at-a-time", "--max-running", "1")
        with tenant_client(srv, "one-at-a-time") as c, tenant_client(srv, "other") as o:
            first = c.submit_mcp_job("first", "code_execution", {"code": BLOCKER})
            second = c.submit_mcp_job("second", "code_execution", {"code": "print(2)"})
            wait_status(c, first.job_id, JobStatus.RUNNING)
            # The second slot is free, but the tenant is at its max_running: another tenant's
            # job takes it, and the second waits.
            done = o.execute_code_and_wait("print('other')", max_wait_time=30)
            assert done.status == JobStatus.COMPLETED
            assert c.get_mcp_job_status(second.job_id).status == JobStatus.PENDING
            c.cancel_mcp_job(first.job_id, "let the next in")
            assert c.wait_for_mcp_job_completion(second.job_id, 30).status == JobStatus.COMPLETED
    finally:
        srv.stop()


def test_the_whole_servers_cap_is_a_503_and_readyz_says_why(tmp_path: Path) -> None:
    srv = ServerProcess(
        tmp_path / "home",
        env={"DEEPEXEC_CONCURRENCY": "code_execution=1", "DEEPEXEC_MAX_PENDING_JOBS": "2"},
    )
    srv.start()
    try:
        key = srv.api_key
        with DeepExecClient(base_url=srv.base_url, api_key=key) as c:
            blocker = c.submit_mcp_job("blocker", "code_execution", {"code": BLOCKER})
            wait_status(c, blocker.job_id, JobStatus.RUNNING)
            queued = [c.submit_mcp_job(f"q{i}", "code_execution", {"code": "pass"}) for i in (1, 2)]
            full = submit_raw(srv, key, code("pass"))
            assert full.status_code == 503, full.text
            assert full.json()["error"]["type"] == "queue_full"
            assert "2 jobs pending" in full.json()["error"]["message"]
            assert int(full.headers["Retry-After"]) >= 1
            # Judge0's API says it in Judge0's words, and /config_info names the cap.
            judge0 = {"X-Auth-Token": key}
            j0 = httpx.post(
                f"{srv.base_url}/submissions?wait=false",
                json={"source_code": "print(1)", "language_id": 71},
                headers=judge0,
                timeout=10,
            )
            assert (j0.status_code, j0.json()) == (503, {"error": "queue is full"}), j0.text
            assert int(j0.headers["Retry-After"]) >= 1
            config = httpx.get(f"{srv.base_url}/config_info", headers=judge0, timeout=5).json()
            assert config["max_queue_size"] == 2
            ready = httpx.get(f"{srv.base_url}/readyz", timeout=5)
            assert ready.status_code == 503
            assert ready.json()["error"]["type"] == "queue_full"
            assert "queue is full" in ready.json()["error"]["message"]

            c.cancel_mcp_job(queued[0].job_id, "make room")
            deadline = time.monotonic() + 10
            while httpx.get(f"{srv.base_url}/readyz", timeout=5).status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert submit_raw(srv, key, code("pass")).status_code == 201
            c.cancel_mcp_job(blocker.job_id, "test over")
    finally:
        srv.stop()


def test_metrics_show_each_tenants_queue_and_refusals(shared: ServerProcess) -> None:
    shared.cli("tenants", "set", "metered", "--max-pending", "1")
    key = shared.new_tenant_key("metered")
    with DeepExecClient(base_url=shared.base_url, api_key=key) as c:
        blocker = c.submit_mcp_job("blocker", "code_execution", {"code": BLOCKER})
        wait_status(c, blocker.job_id, JobStatus.RUNNING)
        c.submit_mcp_job("queued", "code_execution", {"code": "pass"})
        assert submit_raw(shared, key, code("pass")).status_code == 429
        text = httpx.get(f"{shared.base_url}/metrics", timeout=5).text
        assert re.search(r'deepexec_tenant_jobs\{status="RUNNING",tenant="metered"\} 1\.0', text), (
            text
        )
        assert re.search(r'deepexec_tenant_jobs\{status="PENDING",tenant="metered"\} 1\.0', text)
        assert re.search(
            r'deepexec_submits_rejected_total\{reason="max_pending",tenant="metered"\} 1\.0', text
        )
        assert 'deepexec_tenant_queue_seconds_count{tenant="metered"}' in text
        listed = shared.cli("tenants", "list").stdout
        row = next(line for line in listed.splitlines() if line.startswith("metered "))
        # TENANT WEIGHT RUNNING MAX-RUNNING PENDING MAX-PENDING SUBMIT-RATE MAX-TIMEOUT
        assert row.split() == [
            "metered",
            "1",
            "(default)",
            "1",
            "none",
            "(default)",
            "1",
            "1",
            "none",
            "(default)",
            "none",
            "(default)",
            "none",
            "none",
        ], listed
        c.cancel_mcp_job(blocker.job_id, "test over")


def test_a_tenant_has_no_door_to_its_own_quotas(shared: ServerProcess) -> None:
    """Weights and quotas are the operator's, on the database: the API has no route that
    writes them, whatever a tenant's key asks."""
    key = shared.new_tenant_key("curious")
    spec = httpx.get(f"{shared.base_url}/openapi.json", timeout=5).json()
    assert not [p for p in spec["paths"] if "tenant" in p or "quota" in p]
    for method in ("POST", "PUT", "PATCH"):
        r = httpx.request(
            method,
            f"{shared.base_url}/v1/tenants/curious",
            json={"weight": 100, "max_pending": 0},
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        )
        assert r.status_code in (404, 405), (method, r.status_code)


# --- PostgreSQL, an API server and two workers ------------------------------------------------


@pytest.mark.postgres
@pytest.mark.skipif(
    os.environ.get("DEEPEXEC_TEST_SKIP_POSTGRES") == "1", reason="DEEPEXEC_TEST_SKIP_POSTGRES=1"
)
def test_fair_share_on_postgresql_with_two_worker_processes(tmp_path: Path, pg_url: str) -> None:
    env = {
        "DEEPEXEC_DATABASE_URL": pg_url,  # the server, its workers and `deepexec keys`
        "DEEPEXEC_CONCURRENCY": "code_execution=1",
        "DEEPEXEC_TENANT_MAX_PENDING": "2000",
    }
    srv = ServerProcess(tmp_path / "home", "--no-runners", env=env)
    srv.start()
    log = open(tmp_path / "workers.log", "wb")  # noqa: SIM115 - closed below
    workers = [
        subprocess.Popen(
            [DEEPEXEC, "worker"],
            env=srv.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(2)
    ]
    try:
        with tenant_client(srv, "pg-a") as a, tenant_client(srv, "pg-b") as b:
            assert_next_slot_goes_to_b(a, b, 1000)
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
        log.close()
        srv.stop()
