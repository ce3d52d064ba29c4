"""4. ``GET /v1/jobs/{id}`` (get_mcp_job_status) requests/s under load from another process,
against a fixed-JSON ASGI endpoint (and a one-route FastAPI app) on the same uvicorn stack."""

from __future__ import annotations

import asyncio
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
SLEEPER = "import time; time.sleep(600)"


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
    rounds = cfg.n(5, 1)
    results: dict[str, list[LoadResult]] = {
        "deepexec": [],
        "running": [],
        "asgi": [],
        "fastapi": [],
    }
    ensure_wrk(allow_install=not cfg.quick)
    with running_server() as server:
        async with server.client() as client:
            job = await client.submit_mcp_job("bench", "code_execution", {"code": TRIVIAL})
            await client.wait_for_mcp_job_completion(job.job_id, max_wait_time=60)
            # A job that stays RUNNING through the load: its status is read from the store
            # every time (a terminal one is served from the server's cache of ended jobs).
            sleeper = await client.submit_mcp_job("bench", "code_execution", {"code": SLEEPER}, 900)
            for _ in range(300):
                if (await client.get_mcp_job_status(sleeper.job_id)).status == "RUNNING":
                    break
                await asyncio.sleep(0.05)
        auth = {"Authorization": f"Bearer {server.api_key}", "DeepExec-Protocol": "1"}
        status_url = f"{server.base_url}/v1/jobs/{job.job_id}"
        running_url = f"{server.base_url}/v1/jobs/{sleeper.job_id}"
        body = httpx.get(status_url, headers=auth).text
        floor_ms = healthz_ms(server.base_url)
        with fixed_server("app", body) as asgi, fixed_server("fastapi_app", body) as fapi:
            targets = {
                "deepexec": (status_url, auth),
                "running": (running_url, auth),
                "asgi": (f"{asgi}/v1/jobs/{job.job_id}", auth),
                "fastapi": (f"{fapi}/v1/jobs/{job.job_id}", auth),
            }
            for url, headers in targets.values():  # warm-up
                load(url, headers, 1)
            for _ in range(rounds):
                for name, (url, headers) in targets.items():
                    results[name].append(load(url, headers, seconds))
        running_status = httpx.get(running_url, headers=auth).json()["status"]
        async with server.client() as client:
            await client.cancel_mcp_job(sleeper.job_id, "bench: done")
    if running_status != "RUNNING":
        raise RuntimeError(f"the RUNNING job ended during the load: {running_status}")
    labels = {
        "deepexec": "deepexec serve GET /v1/jobs/{id}, COMPLETED job (auth + cache)",
        "running": "deepexec serve GET /v1/jobs/{id}, RUNNING job (auth + store-rendered JSON)",
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
        "endpoints. The fixed body is the COMPLETED job's full status (~0.5 KB). "
        "Server and load generator share the 2 cores."
    )
    out.tables.append(table)
    for name, what in (("deepexec", "a COMPLETED job"), ("running", "a RUNNING job")):
        r = ratio(rps[name].median, rps["asgi"].median)
        ok = r >= 0.5 and rps[name].median >= 2000
        limit = ""
        if not ok:
            limit = http_limit(
                floor_ms,
                "per-request Python work in the app (protocol middleware, auth, and for a "
                "RUNNING job one SQLite read that renders the JSON) on one event loop, sharing "
                "2 cores with the load generator",
            )
        out.verdicts.append(
            Verdict(
                f"status req/s of {what} ≥ 0.5× the minimal ASGI endpoint and ≥ 2,000/s",
                ok,
                f"{fmt(rps[name].median)}/s, {fmt(r)}× ASGI",
                limit,
            )
        )
    return out
