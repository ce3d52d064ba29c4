"""Several real processes on one PostgreSQL store, every change pushed between them over
LISTEN/NOTIFY: two API processes (``serve --no-runners``) and three worker processes of one
slot each. A job submitted to one API process runs on a worker; its live output, progress and
end reach watchers in both API processes; a burst submitted to both runs each job once, spread
over the workers; cancels sent as the jobs are claimed stop them at once; a killed listening
connection loses no wake-up; a killed worker's job ends ``interrupted`` for every waiter."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from deepexec_sdk import DeepExecClient
from tests.serverproc import DEEPEXEC, ServerProcess

PG = os.environ.get("DEEPEXEC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.timeout(180),
    pytest.mark.skipif(
        os.environ.get("DEEPEXEC_TEST_SKIP_POSTGRES") == "1",
        reason="DEEPEXEC_TEST_SKIP_POSTGRES=1",
    ),
]

SLEEPER = {"code": "import time; print('up', flush=True); time.sleep(120)"}
WORKERS = 3


class Cluster:
    """Two API processes and three workers on one fresh schema; stopped by ``stop``."""

    def __init__(self, root: Path, url: str) -> None:
        env = {"DEEPEXEC_LEASE_SECONDS": "3"}
        self.url = url
        self.api = [
            ServerProcess(root / f"api{i}", "--database-url", url, "--no-runners", env=env)
            for i in range(2)
        ]
        self.env = {**self.api[0].env, "DEEPEXEC_LEASE_SECONDS": "3"}
        self.logs = [open(root / f"worker{i}.log", "wb") for i in range(WORKERS)]  # noqa: SIM115
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self) -> Cluster:
        for api in self.api:
            api.start()
        for log in self.logs:
            self.workers.append(
                subprocess.Popen(
                    [DEEPEXEC, "worker", "--database-url", self.url,
                     "--concurrency", "code_execution=1"],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )  # fmt: skip
        self.wait_ready()
        return self

    def wait_ready(self, within: float = 60) -> None:
        """Until every worker logs that it runs jobs (its scheduler and listener are up)."""
        deadline = time.monotonic() + within
        for log, worker in zip(self.logs, self.workers, strict=True):
            while "running jobs from" not in Path(log.name).read_text(errors="replace"):
                assert worker.poll() is None, Path(log.name).read_text()
                assert time.monotonic() < deadline, "a worker did not start"
                time.sleep(0.05)

    def client(self, i: int) -> DeepExecClient:
        # One tenant: the first API process provisioned the key; the database is shared.
        return DeepExecClient(base_url=self.api[i].base_url, api_key=self.api[0].api_key)

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(10)
        for log in self.logs:
            log.close()
        for api in self.api:
            api.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    schema = f"dx_procs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG else "?"
    c = Cluster(tmp_path_factory.mktemp("procs"), f"{PG}{sep}options=-csearch_path%3D{schema}")
    try:
        yield c.start()
    finally:
        c.stop()
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def wait_running(client: DeepExecClient, job_id: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while client.get_mcp_job_status(job_id).status != "RUNNING":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)


def test_a_job_runs_on_a_worker_and_both_api_processes_see_it_end(cluster: Cluster) -> None:
    with cluster.client(0) as a, cluster.client(1) as b:
        job = a.submit_mcp_job(
            "two-waiters", "code_execution", {"code": "import time; time.sleep(1); print(7)"}
        )
        seen: dict[str, str] = {}

        def wait_in(name: str, client: DeepExecClient) -> None:
            seen[name] = str(
                client.wait_for_mcp_job_completion(job.job_id, max_wait_time=60).status
            )

        threads = [threading.Thread(target=wait_in, args=(n, c)) for n, c in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert seen == {"a": "COMPLETED", "b": "COMPLETED"}
        done = b.get_mcp_job_status(job.job_id)
        assert done.result is not None and done.result["stdout"] == "7\n"


def test_live_output_and_progress_cross_processes(cluster: Cluster) -> None:
    """The program prints, reports progress, then waits for a file that never comes: every
    event below is seen while the job still runs on its worker."""
    code = (
        "import os, time\n"
        "print('first line', flush=True)\n"
        "os.write(int(os.environ['DEEPEXEC_PROGRESS_FD']), b'40 warming up\\n')\n"
        "time.sleep(120)\n"
    )
    with cluster.client(1) as b:
        job = b.submit_mcp_job("live", "code_execution", {"code": code})
        got: list[tuple[str, str]] = []
        printed = ""
        for event in b.stream_mcp_job_events(job.job_id):
            if event.type == "output" and event.text:
                printed += event.text
            elif event.type == "progress":
                got.append(("progress", f"{event.progress} {event.message}"))
            elif event.job is not None and event.job.progress is not None:
                # The stream may open after the progress was reported: its first status
                # event carries it then.
                got.append(("progress", f"{event.job.progress} {event.job.progress_message}"))
            if printed == "first line\n" and ("progress", "40 warming up") in got:
                break
            ended = event.type == "status" and event.job is not None and event.job.is_terminal
            assert not ended, (printed, got)
        assert b.get_mcp_job_status(job.job_id).status == "RUNNING"
        b.cancel_mcp_job(job.job_id)


def test_a_cancel_reaches_the_worker_at_once(cluster: Cluster) -> None:
    """The cancel call waits for the run to stop (``cancel_wait_seconds``): it can only answer
    CANCELED if the worker heard of the cancel at once, not at its next lease renewal."""
    with cluster.client(0) as a, cluster.client(1) as b:
        job = a.submit_mcp_job("cancel-me", "code_execution", SLEEPER)
        wait_running(a, job.job_id)
        answer = b.cancel_mcp_job(job.job_id, "from the other API process")
        assert answer.status == "CANCELED"
        final = a.get_mcp_job_status(job.job_id)
        assert final.status == "CANCELED" and final.cancel_reason == "from the other API process"


def test_a_burst_to_both_api_processes_runs_each_job_once_over_the_workers(
    cluster: Cluster,
) -> None:
    with cluster.client(0) as a, cluster.client(1) as b:
        jobs = [
            (a if i % 2 else b).submit_mcp_job(
                f"burst{i}", "code_execution", {"code": f"import time; time.sleep(0.3); print({i})"}
            )
            for i in range(12)
        ]
        finals = [
            (b if i % 2 else a).wait_for_mcp_job_completion(j.job_id, max_wait_time=60)
            for i, j in enumerate(jobs)
        ]
    for i, final in enumerate(finals):
        assert final.status == "COMPLETED", final
        assert final.result is not None and final.result["stdout"] == f"{i}\n"
    # Each worker has one slot: jobs whose runs overlap ran on different workers. 12 jobs of
    # 0.3 s over three workers: at most three overlap, and more than one do.
    spans = [(f.started_at, f.finished_at) for f in finals]
    bounds = [(s, e) for s, e in spans if s is not None and e is not None]
    assert len(bounds) == len(finals), spans
    at_once = max(len([1 for s, e in bounds if s <= t < e]) for t, _ in bounds)
    assert 2 <= at_once <= WORKERS, spans


def test_cancels_sent_as_jobs_are_claimed_stop_them_at_once(cluster: Cluster) -> None:
    """Each job is canceled from the other API process right after its submit, so the cancel
    lands before, during or just after a worker's claim: every one ends CANCELED within the
    cancel call (which waits for a running job to stop), none runs to its end."""
    with cluster.client(0) as a, cluster.client(1) as b:
        for i in range(8):
            job = a.submit_mcp_job(f"race{i}", "code_execution", SLEEPER)
            if i % 2:
                time.sleep(0.05 * i)  # later into the claim and the start
            answer = b.cancel_mcp_job(job.job_id, "race")
            assert answer.status == "CANCELED", (i, answer)
            final = a.wait_for_mcp_job_completion(job.job_id, max_wait_time=5)
            assert final.status == "CANCELED" and final.cancel_reason == "race"
        # The workers are free again: a job runs at once.
        assert a.execute_code_and_wait("print(2)", max_wait_time=30).status == "COMPLETED"


def test_a_pending_job_is_canceled_and_never_runs(cluster: Cluster) -> None:
    with cluster.client(0) as a:
        busy = [a.submit_mcp_job(f"busy{i}", "code_execution", SLEEPER) for i in range(WORKERS)]
        for job in busy:
            wait_running(a, job.job_id)
        queued = a.submit_mcp_job("queued", "code_execution", {"code": "print(1)"})
        assert a.cancel_mcp_job(queued.job_id).status == "CANCELED"
        for job in busy:
            a.cancel_mcp_job(job.job_id)
        assert a.get_mcp_job_status(queued.job_id).started_at is None


def listener_pids() -> list[int]:
    with psycopg.connect(PG, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'LISTEN %%' AND state = 'idle'"
        ).fetchall()
    return [int(r[0]) for r in rows]


def test_killed_listener_connections_lose_no_wake_up(cluster: Cluster) -> None:
    """Every process's listening connection is terminated, and a job is submitted at once:
    the workers reconnect, re-read the queue, and run it long before their safety sweep."""
    before = listener_pids()
    assert len(before) >= 2 + WORKERS  # two API processes and the workers
    with psycopg.connect(PG, autocommit=True) as conn:
        for pid in before:
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    with cluster.client(0) as a:
        t0 = time.monotonic()
        done = a.execute_code_and_wait("print('after the cut')", max_wait_time=60)
        assert done.status == "COMPLETED"
        from deepexec_server.engine.worker import PUSHED_SWEEP_SECONDS

        assert time.monotonic() - t0 < PUSHED_SWEEP_SECONDS
    deadline = time.monotonic() + 30
    while len(set(listener_pids()) - set(before)) < len(before):
        assert time.monotonic() < deadline, "the listeners did not come back"
        time.sleep(0.1)


def test_a_killed_workers_job_ends_interrupted_for_every_waiter(cluster: Cluster) -> None:
    with cluster.client(0) as a, cluster.client(1) as b:
        job = a.submit_mcp_job("orphan", "code_execution", SLEEPER)
        wait_running(a, job.job_id)
        # Whichever worker runs it: kill both (the cluster is not used after this test).
        for worker in cluster.workers:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        for client in (a, b):
            final = client.wait_for_mcp_job_completion(job.job_id, max_wait_time=30)
            assert final.status == "FAILED"
            assert final.error is not None and final.error.type == "interrupted"
