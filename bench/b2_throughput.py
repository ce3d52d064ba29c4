"""2. Trivial jobs per second through the SDK at client concurrency 2, 8, 32, against bare
sandbox runs per second at the same concurrency, alternating rounds in one run."""

from __future__ import annotations

import time

from .b1_trivial import rate, sdk_job
from .common import RunConfig
from .harness import BareSandbox, running_server
from .stats import Outcome, Summary, Table, Verdict, fmt, ratio

SLOTS = 2


async def run(cfg: RunConfig) -> Outcome:
    """For each client concurrency: rounds of N SDK jobs, each followed by N sandbox runs."""
    out = Outcome(2, f"Trivial jobs per second vs concurrency ({cfg.db_label})", cfg.command(2))
    table = Table(
        "Completed `print(1)` jobs per second",
        [
            "server slots",
            "client concurrency",
            "SDK jobs/s (median)",
            "SDK min",
            "sandbox runs/s (median)",
            "sandbox min",
            "SDK / sandbox",
            "client CPU per SDK job (ms)",
        ],
    )
    sandbox = await BareSandbox().start()
    ratios: list[float] = []
    sdk_at_2 = 0.0
    try:
        with running_server(
            "--concurrency", f"code_execution={SLOTS}", database_url=cfg.database_url
        ) as server:
            async with server.client() as client:
                for _ in range(cfg.n(3, 1)):
                    await sdk_job(client)
                for conc in (2, 8, 32):
                    total = cfg.n(max(120, conc * 4), conc)
                    sdk_rates: list[float] = []
                    sbx_rates: list[float] = []
                    client_cpu: list[float] = []
                    for _ in range(cfg.n(3, 1)):
                        cpu0 = time.process_time()
                        sdk_rates.append(await rate(lambda: sdk_job(client), total, conc))
                        client_cpu.append((time.process_time() - cpu0) / total * 1000)
                        sbx_rates.append(await rate(sandbox.run, total, conc))
                    s, b = Summary.of(sdk_rates), Summary.of(sbx_rates)
                    ratios.append(ratio(s.median, b.median))
                    if conc == 2:
                        sdk_at_2 = s.median
                    cpu = Summary.of(client_cpu).median
                    table.add(
                        SLOTS, conc, s.median, s.minimum, b.median, b.minimum, ratios[-1], cpu
                    )
    finally:
        sandbox.close()
    table.notes += [
        f"The server runs at most {SLOTS} code jobs at once (`--concurrency "
        f"code_execution={SLOTS}`); the bare sandbox runs all `client concurrency` at once, "
        "so above 2 it is not capped the way the server is.",
        "Each row: rounds alternate SDK batch / sandbox batch; jobs/s = batch size / batch "
        "wall time.",
        "Client CPU: the benchmark process's CPU time during the SDK batches, per job (the "
        "SDK client's submit and wait, on the same 2 cores as the server: what it takes from "
        "the server is what the ratio loses to co-location).",
    ]
    out.tables.append(table)
    at_2 = ratios[0]
    out.figures["sdk_jobs_per_s_c2"] = sdk_at_2
    out.verdicts.append(
        Verdict(
            "SDK jobs/s ≥ 0.8× bare-sandbox runs/s at concurrency 2",
            at_2 >= 0.8,
            ", ".join(f"c={c}: {fmt(r)}×" for c, r in zip((2, 8, 32), ratios, strict=True)),
            "" if at_2 >= 0.8 else "per-job server work: HTTP, store writes, runner hand-off",
        )
    )
    return out
