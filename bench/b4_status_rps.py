"""4. ``GET /v1/jobs/{id}`` (get_mcp_job_status) requests/s under load from another process,
against a fixed-JSON ASGI endpoint (and a one-route FastAPI app) on the same uvicorn stack."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from .common import RunConfig
from .diagnose import healthz_ms, http_limit
from .harness import TRIVIAL, free_port, running_server
from .load import LoadResult, ensure_wrk, load
from .stats import Outcome, Summary, Table, Verdict, fmt, ratio

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def fixed_server(app: str, body: str) -> Iterator[str]:
    """``uvicorn bench.fixed_app:<app> --loop asyncio`` on a free port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"bench.fixed_app:{app}", "--loop", "asyncio",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=REPO,
        env={**os.environ, "BENCH_FIXED_BODY": body},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/v1/jobs/x", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


async def run(cfg: RunConfig) -> Outcome:
    """Alternating load rounds against the three endpoints."""
    out = Outcome(4, "get_mcp_job_status requests per second", cfg.command(4))
    seconds = cfg.secs(5, 1)
    rounds = cfg.n(3, 1)
    results: dict[str, list[LoadResult]] = {"deepexec": [], "asgi": [], "fastapi": []}
    ensure_wrk(allow_install=not cfg.quick)
    with running_server() as server:
        async with server.client() as client:
            job = await client.submit_mcp_job("bench", "code_execution", {"code": TRIVIAL})
            await client.wait_for_mcp_job_completion(job.job_id, max_wait_time=60)
        status_url = f"{server.base_url}/v1/jobs/{job.job_id}"
        auth = {"Authorization": f"Bearer {server.api_key}", "DeepExec-Protocol": "1"}
        body = httpx.get(status_url, headers=auth).text
        floor_ms = healthz_ms(server.base_url)
        with fixed_server("app", body) as asgi, fixed_server("fastapi_app", body) as fapi:
            targets = {
                "deepexec": (status_url, auth),
                "asgi": (f"{asgi}/v1/jobs/{job.job_id}", auth),
                "fastapi": (f"{fapi}/v1/jobs/{job.job_id}", auth),
            }
            for url, headers in targets.values():  # warm-up
                load(url, headers, 1)
            for _ in range(rounds):
                for name, (url, headers) in targets.items():
                    results[name].append(load(url, headers, seconds))
    labels = {
        "deepexec": "deepexec serve GET /v1/jobs/{id} (auth + store)",
        "asgi": "raw ASGI, fixed body (uvicorn, loop=asyncio)",
        "fastapi": "FastAPI one route, fixed body (same uvicorn)",
    }
    table = Table(
        "Requests per second (load from a separate process)",
        ["endpoint", "rounds", "req/s median", "req/s min", "p50 ms", "p99 ms", "errors", "× ASGI"],
    )
    rps = {k: Summary.of([r.rps for r in v]) for k, v in results.items()}
    for name, runs in results.items():
        mid = sorted(runs, key=lambda r: r.rps)[len(runs) // 2]
        table.add(
            labels[name],
            len(runs),
            rps[name].median,
            rps[name].minimum,
            mid.p50_ms,
            mid.p99_ms,
            sum(r.errors for r in runs),
            ratio(rps[name].median, rps["asgi"].median),
        )
    tool = results["deepexec"][0].tool
    table.notes.append(
        f"Load: {tool}, 1 thread, 16 connections, {fmt(seconds)} s per round, rounds alternate "
        "endpoints; the job is COMPLETED (its full status, ~0.5 KB, is also the fixed body). "
        "Server and load generator share the 2 cores."
    )
    out.tables.append(table)
    r = ratio(rps["deepexec"].median, rps["asgi"].median)
    ok = r >= 0.5 and rps["deepexec"].median >= 2000
    limit = ""
    if not ok:
        limit = http_limit(
            floor_ms,
            "per-request Python work in the app (middleware, auth hash lookup, store read, "
            "pydantic serialisation) on one event loop; see the FastAPI row for the framework's "
            "own share",
        )
    out.verdicts.append(
        Verdict(
            "status req/s ≥ 0.5× the minimal ASGI endpoint and ≥ 2,000/s",
            ok,
            f"{fmt(rps['deepexec'].median)}/s, {fmt(r)}× ASGI",
            limit,
        )
    )
    return out
