"""One job's progress cannot slow the service for everyone: on the real server, a code job
that writes progress lines as fast as it can leaves another tenant's requests as quick as
they were, its listeners get a bounded rate of events ending with its last value, and the
listeners a job or a tenant may have are capped with a clear 429."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from tests.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(120)

PY = "code_execution"


def flood_code(seconds: float, last: str = "") -> str:
    """A program writing progress lines, each new, as fast as it can for ``seconds``; then
    ``last`` (a line) if given."""
    return (
        "import os, time\n"
        "fd = int(os.environ['DEEPEXEC_PROGRESS_FD'])\n"
        "t = time.time(); i = 0\n"
        f"while time.time() - t < {seconds}:\n"
        "    os.write(fd, b''.join(b'%d step %d\\n' % (j % 100, i + j) for j in range(100)))\n"
        "    i += 100\n"
        f"if {last!r}:\n"
        f"    os.write(fd, {last!r}.encode() + b'\\n')\n"
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(
        tmp_path_factory.mktemp("flood"),
        env={
            "DEEPEXEC_MAX_SUBSCRIBERS_PER_JOB": "2",
            "DEEPEXEC_MAX_SUBSCRIBERS_PER_TENANT": "3",
        },
    ).start()
    yield srv
    srv.stop()


def http(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def submit(c: httpx.Client, code: str, timeout: int = 60) -> str:
    r = c.post(
        "/v1/jobs", json={"name": "t", "job_type": PY, "data": {"code": code}, "timeout": timeout}
    )
    r.raise_for_status()
    return str(r.json()["job_id"])


def wait_running(c: httpx.Client, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while c.get(f"/v1/jobs/{job_id}").json()["status"] != "RUNNING":
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.05)


def list_p50(c: httpx.Client, n: int = 40) -> float:
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.get("/v1/jobs", params={"limit": 1}).raise_for_status()
        took.append(time.perf_counter() - t0)
        time.sleep(0.02)
    return statistics.median(took)


def test_a_progress_flood_leaves_another_tenants_requests_as_fast_as_idle(
    server: ServerProcess,
) -> None:
    with http(server, server.api_key) as a, http(server, server.new_tenant_key("bystander")) as b:
        submit(b, "print(1)")
        idle_before = list_p50(b)
        flood = submit(a, flood_code(8))
        wait_running(a, flood)
        time.sleep(0.5)
        during = list_p50(b)
        final = a.get(f"/v1/jobs/{flood}", params={"wait": 30}).json()
        assert final["status"] == "COMPLETED", final
        idle_after = list_p50(b)
    idle = max(idle_before, idle_after)
    assert during < 2 * idle, f"list p50: idle {idle * 1e3:.1f} ms, flood {during * 1e3:.1f} ms"


def test_listeners_of_a_flooding_job_get_a_bounded_rate_ending_with_its_last_value(
    server: ServerProcess,
) -> None:
    with http(server, server.api_key) as a:
        job_id = submit(a, flood_code(3, last="57 final"))
        progress: list[dict[str, object]] = []
        t0 = time.monotonic()
        with a.stream("GET", f"/v1/jobs/{job_id}/events") as r:
            assert r.status_code == 200
            event = ""
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "progress":
                    progress.append(json.loads(line.removeprefix("data: ")))
        elapsed = time.monotonic() - t0
    # The default is 10 progress events a second; the program wrote hundreds of thousands.
    assert 1 <= len(progress) <= 10 * elapsed + 5, (len(progress), elapsed)
    assert progress[-1] == {"progress": 57, "message": "final"}


def test_listeners_are_capped_per_job_and_per_tenant_with_a_429_naming_the_cap(
    server: ServerProcess,
) -> None:
    sleeper = "import time; time.sleep(30)"
    key = server.new_tenant_key("capped")
    with ExitStack() as stack:
        a = stack.enter_context(http(server, key))
        other = stack.enter_context(http(server, server.new_tenant_key("uncapped")))
        first, second = submit(a, sleeper), submit(a, sleeper)
        for _ in range(2):
            r = stack.enter_context(a.stream("GET", f"/v1/jobs/{first}/events"))
            assert r.status_code == 200

        over_job = a.get(f"/v1/jobs/{first}/events")
        assert over_job.status_code == 429
        error = over_job.json()["error"]
        assert error["type"] == "too_many_subscribers"
        assert "DEEPEXEC_MAX_SUBSCRIBERS_PER_JOB" in error["message"]
        assert over_job.headers["retry-after"] == "1"
        long_poll = a.get(f"/v1/jobs/{first}", params={"wait": 1})
        assert long_poll.status_code == 429

        r = stack.enter_context(a.stream("GET", f"/v1/jobs/{second}/events"))
        assert r.status_code == 200
        over_tenant = a.get(f"/v1/jobs/{second}", params={"wait": 1})
        assert over_tenant.status_code == 429
        assert "DEEPEXEC_MAX_SUBSCRIBERS_PER_TENANT" in over_tenant.json()["error"]["message"]
        # Another tenant is not held to this one's listeners.
        mine = submit(other, "print(1)")
        assert other.get(f"/v1/jobs/{mine}", params={"wait": 20}).status_code == 200
        for job_id in (first, second):
            a.post(f"/v1/jobs/{job_id}/cancel", json={})
    # Streams closed: the tenant may listen again.
    with http(server, key) as a:
        assert a.get(f"/v1/jobs/{first}", params={"wait": 5}).status_code == 200
