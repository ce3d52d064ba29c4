"""1. A trivial python job end to end through the SDK, against the same program run by the
sandbox layer directly and by a bare ``python3 -c``, interleaved in one run."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

from deepexec_sdk import DeepExecAsyncClient

from .common import RunConfig
from .diagnose import healthz_ms, http_limit
from .harness import TRIVIAL, BareSandbox, bare_python, running_server
from .stats import SUMMARY_COLUMNS, Outcome, Summary, Table, Verdict, fmt, ratio, summary_row


async def sdk_job(client: DeepExecAsyncClient) -> None:
    """Submit ``print(1)`` and wait for it; fail loudly unless it COMPLETED with ``1``."""
    job = await client.submit_mcp_job("bench", "code_execution", {"code": TRIVIAL})
    final = await client.wait_for_mcp_job_completion(job.job_id, max_wait_time=60)
    if final.status != "COMPLETED" or (final.result or {}).get("stdout") != "1\n":
        raise RuntimeError(f"job did not complete as expected: {final}")


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    """Seconds ``fn`` takes."""
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def rate(fn: Callable[[], Awaitable[object]], total: int, concurrency: int) -> float:
    """Completions per second of ``total`` calls of ``fn`` with ``concurrency`` in flight."""
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await fn()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


async def sandbox_after(sandbox: BareSandbox, reps: int) -> Table:
    """One sandbox run timed after each of three things, in turn: another sandbox run, a bare
    python3 run, 30 ms of nothing. Not a target: it shows how much the state of the machine
    before a run weighs, which is why benchmark 1 runs every path after the same step."""
    steps: dict[str, Callable[[], Awaitable[object]]] = {
        "right after another sandbox run": sandbox.run,
        "right after a bare python3 run": bare_python,
        "after 30 ms of nothing": lambda: asyncio.sleep(0.03),
    }
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            await step()
            samples[name].append(await timed(sandbox.run))
    table = Table("One sandbox run, by what came just before it (ms)", SUMMARY_COLUMNS)
    for name, values in samples.items():
        table.add(*summary_row(name, Summary.of(values), 1000))
    table.notes.append(
        f"{reps} runs each, in turn. Not a target. On a virtual machine, a run that follows "
        "a pause or other work can take longer than one that follows another run."
    )
    return table


async def run(cfg: RunConfig) -> Outcome:
    """Latency of the three paths (each of their 6 orders in turn), then sandbox runs/s at
    concurrency 2 against bare runs/s."""
    out = Outcome(1, f"Trivial python job end to end ({cfg.db_label})", cfg.command(1))
    reps = cfg.n(84, 6)
    sandbox = await BareSandbox().start()
    try:
        with running_server(database_url=cfg.database_url) as server:
            async with server.client() as client:
                paths: dict[str, Callable[[], Awaitable[object]]] = {
                    "SDK submit→wait (deepexec serve)": lambda: sdk_job(client),
                    "sandbox, no server (CodeExecutor.execute)": sandbox.run,
                    "bare /usr/bin/python3 -c": bare_python,
                }
                names = list(paths)
                samples: dict[str, list[float]] = {n: [] for n in names}
                for name in names:  # warm-up: connections, page cache, model of nothing
                    for _ in range(cfg.n(3, 1)):
                        await paths[name]()
                # How fast a sandbox starts depends on what ran just before it (see the
                # table below), so every measured run follows the same unmeasured bare run,
                # and each repetition takes the next of the paths' 6 orders.
                orders = list(itertools.permutations(names))
                for i in range(reps):
                    for name in orders[i % len(orders)]:
                        await bare_python()
                        samples[name].append(await timed(paths[name]))
                floor_ms = await asyncio.to_thread(healthz_ms, server.base_url)
                before = await sandbox_after(sandbox, cfg.n(30, 2))
        sums = {n: Summary.of(v) for n, v in samples.items()}
        sdk, sbx, bare = (sums[n] for n in names)
        table = Table("Latency of one `print(1)` (ms)", [*SUMMARY_COLUMNS, "× sandbox", "× bare"])
        for name in names:
            s = sums[name]
            table.add(
                *summary_row(name, s, 1000),
                ratio(s.median, sbx.median),
                ratio(s.median, bare.median),
            )
        table.add(
            "GET /healthz on the same server (one HTTP round trip)",
            15,
            floor_ms,
            "",
            "",
            "",
            "",
            "",
        )
        table.notes.append(
            f"{reps} repetitions per path, interleaved (each repetition takes the next of the "
            "6 orders of the 3 paths), each run right after an unmeasured bare python3 run; "
            "server: default slots (code_execution=2). The SDK path makes 2 HTTP requests "
            "(submit, then a held GET ?wait=)."
        )
        out.tables += [table, before]

        total = cfg.n(300, 10)
        rounds = cfg.n(3, 1)
        rates: dict[str, list[float]] = {"sandbox": [], "bare": []}
        for _ in range(rounds):
            rates["sandbox"].append(await rate(sandbox.run, total, 2))
            rates["bare"].append(await rate(bare_python, total, 2))
        sbx_rate = Summary.of(rates["sandbox"])
        bare_rate = Summary.of(rates["bare"])
        t2 = Table("Runs per second, 2 concurrent runs", ["path", "rounds", "median/s", "min/s"])
        t2.add("sandbox, no server", rounds, sbx_rate.median, sbx_rate.minimum)
        t2.add("bare /usr/bin/python3 -c", rounds, bare_rate.median, bare_rate.minimum)
        t2.notes.append(f"{total} runs per round, rounds alternate sandbox/bare.")
        out.tables.append(t2)
    finally:
        sandbox.close()

    r_sdk = ratio(sdk.median, sbx.median)
    r_sbx = ratio(sbx.median, bare.median)
    out.verdicts += [
        Verdict(
            "SDK end-to-end median ≤ 1.5× the bare-sandbox median",
            r_sdk <= 1.5,
            f"{fmt(r_sdk)}× ({fmt(sdk.median * 1000)} ms vs {fmt(sbx.median * 1000)} ms)",
            "" if r_sdk <= 1.5 else http_limit(floor_ms, "HTTP + store + queue hand-off; see 9"),
        ),
        Verdict(
            "sandbox median ≤ 3× bare python3",
            r_sbx <= 3,
            f"{fmt(r_sbx)}× ({fmt(sbx.median * 1000)} ms vs {fmt(bare.median * 1000)} ms)",
            "" if r_sbx <= 3 else "bwrap namespace + mount set-up per run",
        ),
        Verdict(
            "≥ 70 sandboxed runs/s with two concurrent runs",
            sbx_rate.median >= 70,
            f"{fmt(sbx_rate.median)}/s",
            ""
            if sbx_rate.median >= 70
            else f"CPU: 2 cores ÷ {fmt(sbx_rate.median)}/s ≈ {fmt(2000 / sbx_rate.median, 0)} "
            "ms of CPU per run (launcher + bwrap namespaces and mounts + python start-up); bare "
            f"python3 alone reaches {fmt(bare_rate.median)}/s here",
        ),
    ]
    return out
