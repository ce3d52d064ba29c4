"""10. Another tenant's ``GET /v1/jobs?limit=1`` while code jobs write progress lines as fast as
they can (with, in the heaviest row, SSE streams and long-polls watching them), against the
same request on the idle server in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from .common import RunConfig
from .harness import running_server
from .stats import Outcome, Summary, Table, Verdict, fmt, ratio

#: A program writing new progress lines (100 per write) for ``{seconds}`` seconds.
FLOOD = (
    "import os, time\n"
    "fd = int(os.environ['DEEPEXEC_PROGRESS_FD'])\n"
    "t = time.time(); i = 0\n"
    "while time.time() - t < {seconds}:\n"
    "    os.write(fd, b''.join(b'%d step %d\\n' % (j % 100, i + j) for j in range(100)))\n"
    "    i += 100\n"
)
COLUMNS = ["path", "n", "list p50 (ms)", "list p90 (ms)", "healthz p50 (ms)", "ratio (p50)"]


async def sample(client: httpx.AsyncClient, n: int) -> tuple[list[float], list[float]]:
    """``n`` list requests and ``n // 4`` health checks, one at a time, 20 ms apart."""
    lists, health = [], []
    for i in range(n):
        t0 = time.perf_counter()
        (await client.get("/v1/jobs", params={"limit": 1})).raise_for_status()
        lists.append(time.perf_counter() - t0)
        if i % 4 == 0:
            t0 = time.perf_counter()
            (await client.get("/healthz")).raise_for_status()
            health.append(time.perf_counter() - t0)
        await asyncio.sleep(0.02)
    return lists, health


async def listen(client: httpx.AsyncClient, job_id: str) -> None:
    """One SSE client reading a job's events to the end."""
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        async for _ in r.aiter_raw():
            pass


async def long_poll(client: httpx.AsyncClient, job_id: str) -> None:
    """One long-poll waiter, asking again until the job ends."""
    while True:
        r = await client.get(f"/v1/jobs/{job_id}", params={"wait": 30})
        if r.json().get("status") in ("COMPLETED", "FAILED", "CANCELED"):
            return


async def flood(
    owner: httpx.AsyncClient, jobs: int, seconds: float, watchers: int
) -> tuple[list[str], list[asyncio.Task[None]]]:
    """Start ``jobs`` flooding jobs, wait until they run, and ``watchers`` SSE streams and as
    many long-polls spread over them."""
    code = FLOOD.format(seconds=seconds)
    ids = []
    for _ in range(jobs):
        r = await owner.post(
            "/v1/jobs",
            json={"name": "flood", "job_type": "code_execution", "data": {"code": code}},
        )
        r.raise_for_status()
        ids.append(r.json()["job_id"])
    for job_id in ids:
        deadline = time.monotonic() + 30
        while (await owner.get(f"/v1/jobs/{job_id}")).json()["status"] != "RUNNING":
            if time.monotonic() > deadline:
                raise RuntimeError(f"flooding job {job_id} did not start")
            await asyncio.sleep(0.05)
    tasks = [
        asyncio.create_task(watch(owner, ids[i % len(ids)]))
        for i in range(watchers)
        for watch in (listen, long_poll)
    ]
    await asyncio.sleep(0.5)  # let the flood and the watchers settle
    return ids, tasks


async def finish(owner: httpx.AsyncClient, ids: list[str], tasks: list[asyncio.Task[None]]) -> None:
    for job_id in ids:
        await owner.post(f"/v1/jobs/{job_id}/cancel", json={})
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
            await task


async def run(cfg: RunConfig) -> Outcome:
    """Idle, then one flooding job, then two with SSE streams and long-polls, then idle
    again; the baseline is both idle rounds together."""
    out = Outcome(10, "Another tenant's list during a progress flood", cfg.command(10))
    n = cfg.n(100, 10)
    watchers = cfg.n(50, 2)
    seconds = cfg.secs(30, 6)
    limits = httpx.Limits(max_connections=4 * watchers + 10)
    with running_server("--concurrency", "code_execution=2") as server:
        bystander_key = server.tenant_key("bystander")
        async with (
            httpx.AsyncClient(
                base_url=server.base_url,
                headers={"Authorization": f"Bearer {server.api_key}"},
                timeout=60,
                limits=limits,
            ) as owner,
            httpx.AsyncClient(
                base_url=server.base_url,
                headers={"Authorization": f"Bearer {bystander_key}"},
                timeout=60,
            ) as bystander,
        ):
            idle_lists, idle_health = await sample(bystander, n)
            rows: list[tuple[str, list[float], list[float]]] = []
            for label, jobs, watching in (
                ("1 flooding job", 1, 0),
                (f"2 flooding jobs, {watchers} SSE streams, {watchers} long-polls", 2, watchers),
            ):
                ids, tasks = await flood(owner, jobs, seconds, watching)
                try:
                    lists, health = await sample(bystander, n)
                finally:
                    await finish(owner, ids, tasks)
                rows.append((label, lists, health))
            more_lists, more_health = await sample(bystander, n)
    idle = Summary.of(idle_lists + more_lists)
    idle_h = Summary.of(idle_health + more_health)
    table = Table("Another tenant's GET /v1/jobs?limit=1 (ms)", COLUMNS)
    table.add("baseline: idle server", idle.n, idle.median * 1e3, idle.p90 * 1e3,
              idle_h.median * 1e3, 1.0)  # fmt: skip
    worst = 0.0
    for label, lists, health in rows:
        s, h = Summary.of(lists), Summary.of(health)
        r = ratio(s.median, idle.median)
        worst = max(worst, r)
        table.add(label, s.n, s.median * 1e3, s.p90 * 1e3, h.median * 1e3, r)
    table.notes.append(
        "Each flooding job writes 100 new progress lines per write, without pause. Requests "
        "one at a time, 20 ms apart, from a client of another tenant. The baseline is the "
        "idle rounds before and after the floods, in the same run."
    )
    out.tables.append(table)
    ok = worst <= 2.0
    out.verdicts.append(
        Verdict(
            "another tenant's list p50 during a progress flood ≤ 2× idle",
            ok,
            f"{fmt(worst)}× (idle p50 {fmt(idle.median * 1e3)} ms)",
        )
    )
    return out
