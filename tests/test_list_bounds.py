"""Listing jobs against the real server: a page shows summaries, never results, so its size and
the server's memory stay bounded whatever the jobs printed; every invalid cursor is a 422."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deepexec_sdk import DeepExecClient
from tests.serverproc import ServerProcess

PY = "code_execution"
MIB = 1024 * 1024


def proc_status_kib(pid: int, field: str) -> int:
    """``VmRSS``/``VmHWM`` (KiB) of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own, so that its memory high-water mark is this module's alone."""
    srv = ServerProcess(tmp_path_factory.mktemp("home")).start()
    yield srv
    srv.stop()


def test_listing_jobs_with_large_outputs_stays_small_and_bounds_server_memory(
    own_server: ServerProcess,
) -> None:
    jobs, out_bytes = 6, 4 * MIB
    code = f"import sys\nsys.stdout.write('o' * {out_bytes})\nsys.stderr.write('e' * {out_bytes})\n"
    tag = f"big-{uuid.uuid4().hex[:8]}"
    with DeepExecClient(base_url=own_server.base_url, api_key=own_server.api_key) as client:
        ids = [
            client.submit_mcp_job(
                f"big{i}",
                PY,
                {"code": code, "limits": {"max_output_bytes": out_bytes}},
                tags=[tag],
                timeout=120,
            ).job_id
            for i in range(jobs)
        ]
        for job_id in ids:
            done = client.wait_for_mcp_job_completion(job_id, max_wait_time=120)
            assert done.status == "COMPLETED", done.error
        # The job's own URL returns the whole result.
        full = client.get_mcp_job_status(ids[0])
        assert full.result is not None and len(full.result["stdout"]) == out_bytes

        pid = own_server.proc.pid if own_server.proc else 0
        hwm_before = proc_status_kib(pid, "VmHWM")
        rss_before = proc_status_kib(pid, "VmRSS")
        headers = {"Authorization": f"Bearer {own_server.api_key}"}
        with httpx.Client(base_url=own_server.base_url, headers=headers, timeout=60) as c:
            for _ in range(3):
                r = c.get("/v1/jobs", params={"tag": tag, "limit": 50})
                assert r.status_code == 200, r.text[:500]
                # A summary per job: kilobytes, where the results total 48 MiB.
                assert len(r.content) < 64 * 1024, len(r.content)
                listed = r.json()["jobs"]
                assert [j["job_id"] for j in listed] == list(reversed(ids))
                assert all("result" not in j and j["status"] == "COMPLETED" for j in listed)
        grown_mib = (proc_status_kib(pid, "VmHWM") - hwm_before) / 1024
        held_mib = (proc_status_kib(pid, "VmRSS") - rss_before) / 1024
        # Reading the results into the server for a list took it up by hundreds of MiB, at
        # its peak and after. (What running the six jobs left in the allocator's arenas
        # depends on how much of their output overlapped, so it is the baseline here.)
        assert grown_mib < 16, f"the server's peak memory grew by {grown_mib:.0f} MiB"
        assert held_mib < 16, f"the server holds {held_mib:.0f} MiB more after listing"

        page = client.list_mcp_jobs(tags=[tag], limit=2)
        assert [j.job_id for j in page.jobs] == list(reversed(ids))[:2]
        assert all(not hasattr(j, "result") for j in page.jobs)


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor(["0001-01-01T00:00:00+01:00", "job_x"]),  # overflows when moved to UTC
        _cursor(["9999-12-31T23:59:59-01:00", "job_x"]),
        _cursor({"2026-01-01T00:00:00+00:00": 1, "job_x": 2}),  # an object
        _cursor(["2026-01-01T00:00:00+00:00"]),  # one element
        _cursor(["2026-01-01T00:00:00+00:00", "job\u0000x"]),
        _cursor(["2026-01-01T00:00:00+00:00", 5]),
        _cursor(["not a time", "job_x"]),
        _cursor("just a string"),
        "%%%not-base64%%%",
        "e30",  # {}
        "A",
    ],
)
def test_every_invalid_cursor_is_a_422_naming_the_cursor(
    server: ServerProcess, client: DeepExecClient, cursor: str
) -> None:
    tag = f"cur-{uuid.uuid4().hex[:8]}"
    for i in range(3):
        client.submit_mcp_job(f"c{i}", PY, {"code": "pass"}, tags=[tag])
    real = client.list_mcp_jobs(tags=[tag], limit=2).next_cursor
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as c:
        r = c.get("/v1/jobs", params={"tag": tag, "limit": 2, "cursor": cursor})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert "cursor" in err["message"]
        assert [d["loc"] for d in err["details"]] == [["query", "cursor"]]
        # The connection was answered, not reset: it carries the next request.
        after = c.get("/v1/jobs", params={"tag": tag, "limit": 2, "cursor": real})
        assert after.status_code == 200 and len(after.json()["jobs"]) == 1
