"""The REST API against the real server: envelope, validation, idempotency, tenants, listing,
long-poll, events, health and metrics."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from deepexec_sdk import (
    DeepExecAsyncClient,
    DeepExecClient,
    MCPAuthenticationError,
    MCPConflictError,
    MCPJobNotFoundError,
    MCPValidationError,
)
from deepexec_sdk.types import PROTOCOL_HEADER, MCPJobStatusResponse, MCPJobSummary
from deepexec_server.metrics import MAX_METHODS, RequestCounts
from tests.serverproc import ServerProcess

PY = "code_execution"
PROGRESS_THEN_SLEEP = (
    "import os, time\n"
    "fd = int(os.environ['DEEPEXEC_PROGRESS_FD'])\n"
    "os.write(fd, b'30 a \"quoted\" step \\\\ \\xc3\\xbc\\n')\n"
    "time.sleep(60)\n"
)


def http(server: ServerProcess, key: str | None = None) -> httpx.Client:
    headers = {"DeepExec-Protocol": "1"}
    if key is not None or server.api_key:
        headers["Authorization"] = f"Bearer {key or server.api_key}"
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=30)


def job_body(code: str = "print('hi')", **extra: Any) -> dict[str, Any]:
    return {"name": "t", "job_type": PY, "data": {"code": code, "language": "python"}, **extra}


def assert_envelope(r: httpx.Response, status: int, type_: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"type", "message", "details", "request_id"}
    assert err["message"]
    assert err["request_id"] == r.headers["x-request-id"]
    assert r.headers["deepexec-protocol"] == "1"
    if type_ is not None:
        assert err["type"] == type_, err
    return dict(err)


# --- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "type_", "names"),
    [
        ({"job_type": PY, "data": {"code": "1"}}, 422, "validation_error", "name"),
        ({"name": 5, "job_type": PY, "data": {"code": "1"}}, 422, "validation_error", "name"),
        (job_body(timeout=-1), 422, "validation_error", "timeout"),
        (job_body(timeout=10**6), 422, "validation_error", "timeout"),
        (job_body(priority="high"), 422, "validation_error", "priority"),
        (job_body(tags="x"), 422, "validation_error", "tags"),
        (job_body(tags=["bad tag with spaces"]), 422, "validation_error", "tags"),
        (job_body(surprise=1), 422, "validation_error", "surprise"),
        ({"name": "t", "job_type": "mining", "data": {}}, 422, "unknown_job_type", "job_type"),
        (
            {"name": "t", "job_type": PY, "data": {"code": "1", "language": "cobol"}},
            422,
            "invalid_job_data",
            "language",
        ),
        (
            {"name": "t", "job_type": PY, "data": {"language": "python"}},
            422,
            "invalid_job_data",
            "code",
        ),
        ({"name": "t", "job_type": PY, "data": "print(1)"}, 422, "validation_error", "data"),
    ],
)
def test_bad_submissions_get_a_4xx_envelope_naming_the_problem(
    server: ServerProcess, body: dict[str, Any], status: int, type_: str, names: str
) -> None:
    with http(server) as c:
        err = assert_envelope(c.post("/v1/jobs", json=body), status, type_)
    assert names in err["message"] + json.dumps(err["details"])


def test_invalid_json_is_400(server: ServerProcess) -> None:
    with http(server) as c:
        r = c.post(
            "/v1/jobs", content=b'{"name": "t", ', headers={"content-type": "application/json"}
        )
    assert_envelope(r, 400, "invalid_json")


def test_non_json_body_is_415(server: ServerProcess) -> None:
    with http(server) as c:
        r = c.post("/v1/jobs", content=b"name=t", headers={"content-type": "text/plain"})
    assert_envelope(r, 415, "unsupported_media_type")


def test_body_over_the_cap_is_413(server: ServerProcess) -> None:
    with http(server) as c:
        r = c.post("/v1/jobs", json=job_body("x" * (3 * 1024 * 1024)))
    assert_envelope(r, 413, "body_too_large")


def test_chunked_body_over_the_cap_is_413(server: ServerProcess) -> None:
    def chunks() -> Any:
        yield b'{"name": "t", "job_type": "code_execution", "data": {"code": "'
        for _ in range(40):
            yield b"x" * 100_000
        yield b'"}}'

    with http(server) as c:
        r = c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert_envelope(r, 413, "body_too_large")


def test_wrong_protocol_major_is_refused(server: ServerProcess) -> None:
    with http(server) as c:
        r = c.get("/v1/jobs", headers={"DeepExec-Protocol": "2"})
    assert_envelope(r, 400, "unsupported_protocol")


def test_unknown_route_is_a_404_envelope(server: ServerProcess) -> None:
    with http(server) as c:
        assert_envelope(c.get("/v1/nothing-here"), 404, "not_found")


def test_bad_query_values_are_422(server: ServerProcess) -> None:
    with http(server) as c:
        assert_envelope(c.get("/v1/jobs", params={"limit": 0}), 422)
        assert_envelope(c.get("/v1/jobs", params={"status": "DONE"}), 422)
        assert_envelope(c.get("/v1/jobs", params={"cursor": "garbage"}), 422)
        assert_envelope(c.get("/v1/jobs/job_x", params={"wait": -1}), 422)


# --- auth and tenants -------------------------------------------------------------------------


def test_missing_and_wrong_keys_are_401(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url) as c:
        assert_envelope(c.get("/v1/jobs"), 401, "authentication_required")
        r = c.get("/v1/jobs", headers={"Authorization": "Bearer dxk_not_a_key"})
        assert_envelope(r, 401, "invalid_api_key")
    with (
        DeepExecClient(base_url=server.base_url, api_key="dxk_wrong") as sdk,
        pytest.raises(MCPAuthenticationError) as info,
    ):
        sdk.get_mcp_job_status("job_x")
    assert info.value.status_code == 401


def test_revoked_key_stops_working(server: ServerProcess) -> None:
    key = server.new_tenant_key("short-lived")
    with http(server, key) as c:
        assert c.get("/v1/jobs").status_code == 200
    listing = server.cli("keys", "list", "--tenant", "short-lived").stdout
    key_id = listing.splitlines()[1].split()[0]
    server.cli("keys", "revoke", key_id)
    time.sleep(2.1)  # the server caches key lookups for 2 s
    with http(server, key) as c:
        assert_envelope(c.get("/v1/jobs"), 401, "invalid_api_key")


def test_another_tenant_gets_404_for_every_operation(server: ServerProcess) -> None:
    other = server.new_tenant_key("tenant-b")
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as owner:
        job = owner.submit_mcp_job(
            "mine", PY, {"code": "import time; time.sleep(3)"}, tags=["secret-tag"]
        )
    with DeepExecClient(base_url=server.base_url, api_key=other) as intruder:
        with pytest.raises(MCPJobNotFoundError):
            intruder.get_mcp_job_status(job.job_id)
        with pytest.raises(MCPJobNotFoundError):
            intruder.cancel_mcp_job(job.job_id)
        with pytest.raises(MCPJobNotFoundError):
            intruder.wait_for_mcp_job_completion(job.job_id, max_wait_time=1)
        with pytest.raises(MCPJobNotFoundError):
            list(intruder.stream_mcp_job_events(job.job_id))
        assert intruder.list_mcp_jobs().jobs == []
        assert intruder.list_mcp_jobs(tags=["secret-tag"]).jobs == []
    with http(server, other) as c:
        assert_envelope(c.get(f"/v1/jobs/{job.job_id}", params={"wait": 1}), 404, "job_not_found")
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as owner:
        assert owner.get_mcp_job_status(job.job_id).status != "CANCELED"
        owner.cancel_mcp_job(job.job_id)


def test_a_finished_job_read_by_its_owner_stays_hidden_from_another_tenant(
    server: ServerProcess,
) -> None:
    # Terminal statuses are served from a cache filled by the owner's reads: the cache must
    # not leak them to another tenant.
    other = server.new_tenant_key("tenant-c")
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as owner:
        job = owner.submit_mcp_job("done", PY, {"code": "print('private')"})
        owner.wait_for_mcp_job_completion(job.job_id, max_wait_time=30)
        assert owner.get_mcp_job_status(job.job_id).result["stdout"] == "private\n"  # type: ignore[index]
    with http(server, other) as c:
        for params in ({}, {"wait": 1}):
            r = c.get(f"/v1/jobs/{job.job_id}", params=params)
            assert "private" not in r.text
            assert_envelope(r, 404, "job_not_found")


# --- status reads -----------------------------------------------------------------------------


def test_status_reads_answer_the_same_through_every_path(server: ServerProcess) -> None:
    with http(server) as c:
        job = c.post("/v1/jobs", json=job_body("print(2)")).json()
        url = f"/v1/jobs/{job['job_id']}"
        held = c.get(url, params={"wait": 30})  # long-poll until terminal
        assert held.status_code == 200
        assert held.json()["status"] == "COMPLETED"
        again = c.get(url)  # the terminal status, now from the cache
        # An unknown query parameter goes to the framework's route, which reads the store.
        framework = c.get(url, params={"unused": "1"})
    assert again.content == held.content
    assert framework.json() == held.json()
    for r in (held, again, framework):
        assert r.headers["content-type"] == "application/json"
        assert r.headers["deepexec-protocol"] == "1"
        assert r.headers["x-request-id"].startswith("req_")


def test_status_of_a_running_and_an_unread_finished_job_is_rendered_by_the_store(
    server: ServerProcess,
) -> None:
    # A plain read of a job whose status is not cached is rendered by the database (both
    # status routes share that path); it must be what the list says, which builds each job's
    # status from a Job through the view (all but the result, which a list leaves out).
    tag = f"t-{uuid.uuid4().hex[:8]}"
    with http(server) as c:
        running = c.post("/v1/jobs", json=job_body(PROGRESS_THEN_SLEEP, tags=[tag])).json()
        done = c.post("/v1/jobs", json=job_body("print('x' * 3)", tags=[tag])).json()
        url = f"/v1/jobs/{running['job_id']}"
        for _ in range(200):  # until its program has reported progress and the other ended
            by_id = {j["job_id"]: j for j in c.get("/v1/jobs", params={"tag": tag}).json()["jobs"]}
            if (
                by_id[running["job_id"]]["progress"] == 30
                and by_id[done["job_id"]]["status"] == "COMPLETED"
            ):
                break
            time.sleep(0.05)
        fast = c.get(url)
        done_fast = c.get(f"/v1/jobs/{done['job_id']}")
        c.post(f"{url}/cancel")
    assert fast.json()["status"] == "RUNNING" and fast.json()["progress"] == 30
    assert done_fast.json()["result"]["stdout"] == "xxx\n"
    for read in (fast, done_fast):
        listed = by_id[read.json()["job_id"]]
        whole = MCPJobStatusResponse.model_validate_json(read.content)
        assert MCPJobSummary.model_validate(whole.model_dump()) == (
            MCPJobSummary.model_validate(listed)
        )
        assert [k for k in read.json() if k != "result"] == list(listed)  # same keys, order
        assert read.headers["content-type"] == "application/json"


def test_status_read_validates_wait(server: ServerProcess) -> None:
    with http(server) as c:
        job = c.post("/v1/jobs", json=job_body("import time; time.sleep(5)")).json()
        url = f"/v1/jobs/{job['job_id']}"
        for bad in ("abc", "61", "-1", "1e400", "nan", ""):
            err = assert_envelope(c.get(url, params={"wait": bad}), 422, "validation_error")
            assert "wait" in err["message"]
        t0 = time.monotonic()
        r = c.get(url, params={"wait": "0.5"})
        held = time.monotonic() - t0
        c.post(f"{url}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] in ("PENDING", "RUNNING")
    assert 0.4 < held < 3


def test_status_read_errors_are_envelopes(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url) as c:
        assert_envelope(c.get("/v1/jobs/job_x"), 401, "authentication_required")
        r = c.get("/v1/jobs/job_x", headers={"Authorization": "Bearer dxk_wrong"})
        assert_envelope(r, 401, "invalid_api_key")
    with http(server) as c:
        r = c.get("/v1/jobs/job_missing", headers={"X-Request-Id": "my-trace-1"})
        err = assert_envelope(r, 404, "job_not_found")
        assert err["request_id"] == "my-trace-1"
        assert "job_missing" in err["message"]


class _CountImports:
    """A meta-path finder that only counts the imports Python had to search for."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        self.names.append(name)


async def test_async_client_requests_search_for_no_module(server: ServerProcess) -> None:
    # httpcore imports sniffio on every lock; without sniffio installed that is a failed
    # import, a sys.path search each time (encode/httpcore#1103). The SDK depends on sniffio.
    async with DeepExecAsyncClient(base_url=server.base_url, api_key=server.api_key) as c:
        job = await c.submit_mcp_job("imports", PY, {"code": "print(1)"})
        await c.get_mcp_job_status(job.job_id)  # warm-up: first use may import lazily
        counter = _CountImports()
        sys.meta_path.insert(0, counter)
        try:
            await asyncio.gather(*(c.get_mcp_job_status(job.job_id) for _ in range(20)))
        finally:
            sys.meta_path.remove(counter)
    assert counter.names == []


# --- idempotency ------------------------------------------------------------------------------


def test_same_idempotency_key_twice_yields_one_job(server: ServerProcess) -> None:
    key = str(uuid.uuid4())
    tag = f"idem-{key[:8]}"
    body = job_body(tags=[tag])
    with http(server) as c:
        first = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        second = c.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 201
        assert second.status_code == 200
        assert first.json()["job_id"] == second.json()["job_id"]
        listed = c.get("/v1/jobs", params={"tag": tag}).json()["jobs"]
        assert len(listed) == 1
        other = c.post("/v1/jobs", json=job_body("print(2)"), headers={"Idempotency-Key": key})
        assert_envelope(other, 409, "idempotency_conflict")


# --- reading jobs -----------------------------------------------------------------------------


def test_list_filters_and_paginates(client: DeepExecClient) -> None:
    tag = f"page-{uuid.uuid4().hex[:8]}"
    ids = [
        client.submit_mcp_job(f"p{i}", PY, {"code": "pass"}, tags=[tag, "paging"]).job_id
        for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = client.list_mcp_jobs(tags=[tag], limit=2, cursor=cursor)
        seen += [j.job_id for j in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each once
    assert [j.name for j in client.list_mcp_jobs(tags=[tag], name="p3").jobs] == ["p3"]
    assert client.list_mcp_jobs(tags=[tag, "no-such-tag"]).jobs == []
    for job_id in ids:
        client.wait_for_mcp_job_completion(job_id, max_wait_time=30)
    done = client.list_mcp_jobs(tags=[tag], status="COMPLETED")
    assert len(done.jobs) == 5


def test_long_poll_returns_as_soon_as_the_job_ends(client: DeepExecClient) -> None:
    job = client.submit_mcp_job("sleepy", PY, {"code": "import time; time.sleep(1.5)"})
    t0 = time.monotonic()
    final = client.wait_for_mcp_job_completion(job.job_id, poll_interval=30)
    elapsed = time.monotonic() - t0
    assert final.status == "COMPLETED"
    assert elapsed < 5, "a 30 s poll interval must not delay seeing completion"


def test_wait_for_completion_raises_timeout_error(client: DeepExecClient) -> None:
    job = client.submit_mcp_job("slow", PY, {"code": "import time; time.sleep(10)"})
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait_for_mcp_job_completion(job.job_id, poll_interval=0.2, max_wait_time=0.5)
    assert time.monotonic() - t0 < 3
    client.cancel_mcp_job(job.job_id)


def test_cancel_a_finished_job_is_a_clear_conflict(client: DeepExecClient) -> None:
    job = client.submit_mcp_job("quick", PY, {"code": "print(1)"})
    client.wait_for_mcp_job_completion(job.job_id, max_wait_time=30)
    with pytest.raises(MCPConflictError) as info:
        client.cancel_mcp_job(job.job_id)
    assert info.value.error_type == "job_not_cancelable"
    assert "COMPLETED" in str(info.value)


def test_a_late_watcher_first_gets_what_was_printed_before_it_came(
    client: DeepExecClient,
) -> None:
    code = "import time\nprint('early', flush=True)\ntime.sleep(2.5)\nprint('late', flush=True)\n"
    job = client.submit_mcp_job(name="late-watcher", job_type="code_execution", data={"code": code})
    deadline = time.monotonic() + 20
    while client.get_mcp_job_status(job.job_id).status != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # 'early' is printed and published; nobody is watching yet
    events = list(client.stream_mcp_job_events(job.job_id))
    assert events[-1].job is not None and events[-1].job.status == "COMPLETED"
    output = [e for e in events if e.type == "output"]
    # Everything once, in order: the replay of what came before, then the live output.
    assert "".join(e.text or "" for e in output) == "early\nlate\n"
    assert output[0].text.startswith("early") and events.index(output[0]) == 1


def test_events_stream_shows_output_before_the_end(client: DeepExecClient) -> None:
    # the program waits before printing, so that its output comes live, not from the replay
    code = (
        "import time\ntime.sleep(1)\n"
        "for i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.3)\n"
    )
    job = client.submit_mcp_job("stream", PY, {"code": code})
    events = list(client.stream_mcp_job_events(job.job_id))
    assert events[0].type == "status"
    assert events[-1].type == "status" and events[-1].job is not None
    assert events[-1].job.status == "COMPLETED"
    output = "".join(e.text or "" for e in events if e.type == "output")
    assert "line 0" in output and "line 2" in output
    first_output = next(i for i, e in enumerate(events) if e.type == "output")
    assert first_output < len(events) - 1


def test_validation_error_surfaces_in_the_sdk(client: DeepExecClient) -> None:
    with pytest.raises(MCPValidationError) as info:
        client.submit_mcp_job("bad", PY, {"code": "1", "language": "cobol"})
    assert info.value.status_code == 422
    assert "cobol" in str(info.value)


# --- health and metrics -----------------------------------------------------------------------


def test_health_readiness_metrics_and_openapi(
    server: ServerProcess, client: DeepExecClient
) -> None:
    job = client.submit_mcp_job("m", PY, {"code": "print(1)"})
    client.wait_for_mcp_job_completion(job.job_id, max_wait_time=30)
    with httpx.Client(base_url=server.base_url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready"}
        metrics = c.get("/metrics").text
        assert (
            'deepexec_jobs_finished_total{job_type="code_execution",status="COMPLETED"}' in metrics
        )
        assert 'deepexec_jobs{status="COMPLETED"}' in metrics
        spec = c.get("/openapi.json").json()
        assert "/v1/jobs" in spec["paths"]
        assert "/v1/jobs/{job_id}/events" in spec["paths"]
        assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert spec["paths"]["/v1/jobs/{job_id}"]["get"]["security"] == [{"bearer": []}]
        assert "security" not in spec["paths"]["/healthz"]["get"]


def _requests_counted(metrics: str, method: str, status: int) -> float:
    line = f'deepexec_http_requests_total{{method="{method}",status="{status}"}} '
    found = [row for row in metrics.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_metrics_count_every_answered_request_by_method_and_status(
    server: ServerProcess,
) -> None:
    # Counted as each answer starts: the hot routes, the framework's routes and the refusals
    # the protocol layer answers itself.
    with http(server) as c:
        before = c.get("/metrics").text
        job = c.post("/v1/jobs", json=job_body()).json()
        c.get(f"/v1/jobs/{job['job_id']}")
        c.get("/v1/jobs/job_missing")
        c.get("/v1/jobs", params={"limit": 1})
        c.get("/v1/jobs", headers={PROTOCOL_HEADER: "99"})
        after = c.get("/metrics").text
    for method, status, n in (("POST", 201, 1), ("GET", 200, 3), ("GET", 404, 1), ("GET", 400, 1)):
        counted = _requests_counted(after, method, status) - _requests_counted(
            before, method, status
        )
        assert counted == n, (method, status)


def test_request_counts_name_a_bounded_number_of_methods() -> None:
    counts = RequestCounts()
    for i in range(MAX_METHODS + 5):
        counts(f"M{i}", 405)
    counts("M0", 405)
    exported = {tuple(s.labels.values()): s.value for m in counts.collect() for s in m.samples}
    assert exported[("M0", "405")] == 2
    assert exported[("other", "405")] == 5
    assert len(exported) == MAX_METHODS + 1


def test_nul_characters_are_refused_at_the_edge(server: ServerProcess) -> None:
    # PostgreSQL cannot store U+0000; both stores must accept the same input, so it is a 4xx.
    with http(server) as c:
        err = assert_envelope(c.post("/v1/jobs", json=job_body("print('\u0000')")), 422)
        assert "NUL" in err["message"] and err["details"][0]["loc"][-1] == "code"
        assert_envelope(c.get("/v1/jobs", params={"name": "a\u0000b"}), 400, "invalid_request")
        assert_envelope(c.get("/v1/jobs/job_%00x"), 400, "invalid_request")
        job = c.post("/v1/jobs", json=job_body("import time; time.sleep(5)")).json()
        r = c.post(f"/v1/jobs/{job['job_id']}/cancel", json={"reason": "x\u0000"})
        assert_envelope(r, 422, "validation_error")
        c.post(f"/v1/jobs/{job['job_id']}/cancel", json={"reason": "cleanup"})


# --- operator-set code limits -----------------------------------------------------------------


def test_operator_sets_the_code_limit_defaults_and_maxima(tmp_path: Path) -> None:
    env = {
        "DEEPEXEC_CODE_LIMITS_DEFAULT": "memory_mb=128",
        "DEEPEXEC_CODE_LIMITS_MAX": "memory_mb=256,cpu_time_s=5",
    }
    srv = ServerProcess(tmp_path / "home", env=env).start()
    try:
        with http(srv) as c:
            for limits, message in [
                (
                    {"memory_mb": 512},
                    "data.limits.memory_mb: memory_mb 512 exceeds the maximum 256",
                ),
                ({"cpu_time_s": 6}, "data.limits.cpu_time_s: cpu_time_s 6 exceeds the maximum 5"),
            ]:
                r = c.post("/v1/jobs", json=job_body() | {"data": {"code": "1", "limits": limits}})
                assert assert_envelope(r, 422, "invalid_job_data")["message"] == message
            offered = c.get("/v1/executors").json()["code_execution"]["limits"]
            assert offered["default"]["memory_mb"] == 128
            assert offered["max"]["memory_mb"] == 256 and offered["max"]["cpu_time_s"] == 5
        # 200 MB: over the operator's 128 MB default, within the 256 MB a job may ask for.
        hog = "b = bytearray(200 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])\nprint('fit')"
        with DeepExecClient(base_url=srv.base_url, api_key=srv.api_key) as client:
            default = client.submit_mcp_job("hog", PY, {"code": hog})
            asked = client.submit_mcp_job("hog", PY, {"code": hog, "limits": {"memory_mb": 256}})
            done = client.wait_for_mcp_job_completion(default.job_id, max_wait_time=30)
            assert done.status == "FAILED"
            assert done.error is not None and done.error.type == "memory_limit"
            roomy = client.wait_for_mcp_job_completion(asked.job_id, max_wait_time=30)
            assert roomy.status == "COMPLETED", roomy.error
            assert roomy.result is not None and roomy.result["stdout"] == "fit\n"
    finally:
        srv.stop()
