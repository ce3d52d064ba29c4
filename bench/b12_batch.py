"""12. Submitting 1,000 trivial jobs in one batch request (``submit_mcp_jobs``) against 1,000
single submits (``submit_mcp_job``) from one client, in rounds that alternate the two.

Only the submit is timed: a blocking job holds the server's one runner, so every submitted
job queues and no sandbox competes with the submits for the CPU.
"""

from __future__ import annotations

import asyncio
import time

from deepexec_sdk import DeepExecAsyncClient

from .common import RunConfig
from .harness import TRIVIAL, running_server
from .stats import SUMMARY_COLUMNS, Outcome, Summary, Table, Verdict, fmt, ratio, summary_row

BLOCKER = "import time; time.sleep(3600)"
#: In flight at once in the concurrent single-submit row (one client, one connection pool).
CONCURRENT = 16


def trivial_items(n: int, round_no: int) -> list[dict[str, object]]:
    return [
        {
            "name": f"bench {round_no}.{i}",
            "job_type": "code_execution",
            "data": {"code": TRIVIAL},
        }
        for i in range(n)
    ]


async def batch_submit(client: DeepExecAsyncClient, n: int, round_no: int) -> float:
    """Seconds one batch request of ``n`` jobs takes."""
    items = trivial_items(n, round_no)
    t0 = time.perf_counter()
    batch = await client.submit_mcp_jobs(items)
    elapsed = time.perf_counter() - t0
    if len(batch.jobs) != n or not all(j.created for j in batch.jobs):
        raise RuntimeError(f"batch of {n} came back with {len(batch.jobs)} new jobs")
    return elapsed


async def single_submits(client: DeepExecAsyncClient, n: int, round_no: int, at_once: int) -> float:
    """Seconds ``n`` single submits take, ``at_once`` in flight."""
    items = trivial_items(n, round_no)
    left = iter(items)

    async def worker() -> None:
        for item in left:
            await client.submit_mcp_job(str(item["name"]), "code_execution", {"code": TRIVIAL})

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(at_once)))
    return time.perf_counter() - t0


async def run(cfg: RunConfig) -> Outcome:
    """Rounds of: one batch of N, N single submits one after another, N single submits 16 at
    a time (the order rotating per round); N = 1,000."""
    out = Outcome(
        12, f"Batch submit of 1,000 jobs vs single submits ({cfg.db_label})", cfg.command(12)
    )
    n = cfg.n(1000, 20)
    rounds = cfg.n(6, 1)
    with running_server(
        "--concurrency", "code_execution=1", database_url=cfg.database_url
    ) as server:
        async with server.client() as client:
            await client.submit_mcp_job("blocker", "code_execution", {"code": BLOCKER})
            paths = {
                "one batch request (submit_mcp_jobs)": lambda r: batch_submit(client, n, r),
                "single submits, one after another": lambda r: single_submits(client, n, r, 1),
                f"single submits, {CONCURRENT} in flight": lambda r: single_submits(
                    client, n, r, CONCURRENT
                ),
            }
            names = list(paths)
            samples: dict[str, list[float]] = {name: [] for name in names}
            for name in names:  # warm-up: connections, the server's first batch, caches
                await paths[name](-1)
            for r in range(rounds):
                for name in names[r % 3 :] + names[: r % 3]:
                    samples[name].append(await paths[name](r))
    sums = {name: Summary.of(v) for name, v in samples.items()}
    batch, one_by_one, concurrent = (sums[name] for name in names)
    table = Table(
        f"Submitting {n} trivial jobs from one client (ms for all {n})",
        [*SUMMARY_COLUMNS, "jobs/s (median)", "× the batch"],
    )
    for name in names:
        s = sums[name]
        table.add(*summary_row(name, s, 1000), n / s.median, ratio(s.median, batch.median))
    table.notes.append(
        f"{rounds} rounds after one warm-up of each; each round runs the three paths in a "
        "rotating order. A blocking job holds the server's only runner, so every job queues "
        "and only the submit is timed. The batch is 1 HTTP request; the single submits are "
        f"{n}, each with its own idempotency key, as the SDK sends them."
    )
    out.tables.append(table)
    speedup = ratio(one_by_one.median, batch.median)
    out.verdicts += [
        Verdict(
            f"one batch request of {n} jobs ≥ 3× faster to submit than {n} single submits "
            "from one client",
            speedup >= 3,
            f"{fmt(speedup)}× ({fmt(batch.median * 1000)} ms vs "
            f"{fmt(one_by_one.median * 1000)} ms)",
            "" if speedup >= 3 else "per-item validation and the store's insert of each row",
        ),
        Verdict(
            f"one batch against {CONCURRENT} single submits in flight",
            None,
            f"{fmt(ratio(concurrent.median, batch.median))}× ({fmt(batch.median * 1000)} ms "
            f"vs {fmt(concurrent.median * 1000)} ms)",
            info=True,
        ),
    ]
    return out
