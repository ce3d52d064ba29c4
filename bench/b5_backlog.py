"""5. Submitting 10,000 jobs while the runners are busy (so every job queues), server memory
growth, then the drain rate once the runners are free."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx

from deepexec_sdk import DeepExecAsyncClient

from .common import RunConfig
from .diagnose import healthz_ms, http_limit
from .harness import TRIVIAL, Server, rss_kib, running_server
from .load import post_load
from .stats import Outcome, Summary, Table, Verdict, fmt, ratio

SLOTS = 2
BLOCKER = "import time; time.sleep(3600)"


def finished_completed(metrics_text: str) -> int:
    """``deepexec_jobs_finished_total`` for COMPLETED code jobs, from /metrics."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("deepexec_jobs_finished_total{") and 'status="COMPLETED"' in line:
            m = re.search(r"\}\s+([0-9.e+]+)$", line)
            if m:
                total += float(m.group(1))
    return int(total)


async def completed(server: Server, http: httpx.AsyncClient) -> int:
    """How many jobs this server has completed."""
    return finished_completed((await http.get(f"{server.base_url}/metrics")).text)


async def submit_all(
    client: DeepExecAsyncClient, total: int, in_flight: int
) -> tuple[float, list[float]]:
    """Submit ``total`` trivial jobs with ``in_flight`` requests open; (wall s, latencies s)."""
    left = total
    lat: list[float] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            await client.submit_mcp_job("backlog", "code_execution", {"code": TRIVIAL})
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - t0, lat


async def run(cfg: RunConfig) -> Outcome:
    """Block both code slots with sleeping jobs, submit from a lean load process, then from
    an SDK client, read RSS, free the slots, drain."""
    out = Outcome(5, f"10,000 queued submits, memory, drain ({cfg.db_label})", cfg.command(5))
    total = cfg.n(10_000, 200)
    sdk_total = cfg.n(2_000, 50)
    in_flight = 16
    window = cfg.secs(30, 3)
    # One tenant queues all of it: past the default max_pending quota (10,000).
    quota = {"DEEPEXEC_TENANT_MAX_PENDING": str(total + sdk_total + SLOTS)}
    with running_server(
        "--concurrency", f"code_execution={SLOTS}", database_url=cfg.database_url, env=quota
    ) as server:
        async with server.client() as client, httpx.AsyncClient() as http:
            blockers = [
                await client.submit_mcp_job("blocker", "code_execution", {"code": BLOCKER}, 3600)
                for _ in range(SLOTS)
            ]
            deadline = time.monotonic() + 30
            while True:
                states = [(await client.get_mcp_job_status(b.job_id)).status for b in blockers]
                if all(s == "RUNNING" for s in states):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"blockers never ran: {states}")
                await asyncio.sleep(0.05)
            floor_ms = await asyncio.to_thread(healthz_ms, server.base_url)
            headers = {
                "Authorization": f"Bearer {server.api_key}",
                "DeepExec-Protocol": "1",
                "Content-Type": "application/json",
            }
            body = json.dumps(
                {"name": "backlog", "job_type": "code_execution", "data": {"code": TRIVIAL}}
            ).encode()
            rss_before = rss_kib(server.pid)
            lean = await asyncio.to_thread(
                post_load, f"{server.base_url}/v1/jobs", headers, body, total, in_flight
            )
            rss_after = rss_kib(server.pid)
            sdk_wall, sdk_lat = await submit_all(client, sdk_total, in_flight)
            for b in blockers:
                await client.cancel_mcp_job(b.job_id, "bench: free the slots")
            done0 = await completed(server, http)
            t0 = time.perf_counter()
            await asyncio.sleep(window)
            done1 = await completed(server, http)
            drained_in = time.perf_counter() - t0
            rss_drain = rss_kib(server.pid)
    if lean.errors or lean.answered != total:
        raise RuntimeError(f"{lean.errors} of {total} submits were not answered 201")
    sdk_rate = sdk_total / sdk_wall
    drain_rate = (done1 - done0) / drained_in
    growth_mb = (rss_after - rss_before) / 1024
    s = Summary.of(sdk_lat)
    table = Table(
        "Queued submits, memory and drain",
        ["what", "value"],
    )
    table.add("jobs submitted by the load process (all queued behind 2 blocking jobs)", total)
    table.add("requests in flight (keep-alive connections)", in_flight)
    table.add("submits/s", lean.rate)
    table.add(
        "submit latency median / p90 / p99 (ms)",
        f"{fmt(lean.p50_ms)} / {fmt(lean.p90_ms)} / {fmt(lean.p99_ms)}",
    )
    table.add(
        "server RSS before → after submits (MiB)",
        f"{fmt(rss_before / 1024)} → {fmt(rss_after / 1024)}",
    )
    table.add("RSS growth (MiB)", growth_mb)
    table.add(f"then: jobs submitted by one SDK client ({in_flight} in flight)", sdk_total)
    table.add("SDK client submits/s", sdk_rate)
    table.add(
        "SDK client submit latency median / p90 / p99 (ms)",
        f"{fmt(s.median * 1000)} / {fmt(s.p90 * 1000)} / {fmt(s.p99 * 1000)}",
    )
    table.add(f"RSS after {fmt(window)} s of draining (MiB)", rss_drain / 1024)
    table.add(f"drain: jobs completed in {fmt(drained_in)} s", done1 - done0)
    table.add("drain rate (jobs/s, 2 slots)", drain_rate)
    table.add(
        "time to drain all at that rate (s, extrapolated)",
        (total + sdk_total) / max(drain_rate, 1e-9),
    )
    table.notes += [
        "There is no HTTP switch for Engine.pause(): the queue is built by first submitting "
        f"{SLOTS} `time.sleep(3600)` jobs that hold both code slots "
        f"(`--concurrency code_execution={SLOTS}`), then cancelling them to start the drain.",
        "The load process (`load.post_load`) writes one prepared POST per request over "
        "keep-alive connections, so the figure is the server's; it shares the 2 cores with "
        "the server. The SDK client row is the same work through `DeepExecAsyncClient` "
        "(httpx) in one event loop: its own per-request cost, not the server's, limits it.",
        f"The drain is measured over a {fmt(window)} s window (draining all of them at ~tens/s "
        "would take minutes); the rest is discarded with the server's private home.",
    ]
    out.tables.append(table)
    ok_rate = lean.rate >= 1000
    ok_mem = growth_mb <= 100
    out.verdicts += [
        Verdict(
            "≥ 1,000 submits/s",
            ok_rate,
            f"{fmt(lean.rate)}/s",
            ""
            if ok_rate
            else http_limit(floor_ms, "per-request server work (see benchmarks 4 and 9)"),
        ),
        Verdict("server RSS growth ≤ 100 MB over the submits", ok_mem, f"{fmt(growth_mb)} MiB"),
    ]
    out.figures["drain_per_s"] = drain_rate
    return out


def drain_verdict(backlog: Outcome, throughput: Outcome) -> Verdict:
    """Benchmark 5's drain rate against benchmark 2's SDK jobs/s at concurrency 2."""
    drain = backlog.figures["drain_per_s"]
    reference = throughput.figures["sdk_jobs_per_s_c2"]
    met = drain >= 0.8 * reference
    return Verdict(
        "drain rate ≥ 0.8× benchmark 2's SDK jobs/s at concurrency 2",
        met,
        f"{fmt(drain)} vs {fmt(reference)} jobs/s, {fmt(ratio(drain, reference))}×",
        "" if met else "a runner claims one job per store round trip",
    )
