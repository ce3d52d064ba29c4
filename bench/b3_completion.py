"""3. How long after a job ends ``wait_for_mcp_job_completion`` returns, against the SDK
reference's loop of ``get_mcp_job_status`` + ``sleep(poll_interval=1.0)``."""

from __future__ import annotations

import asyncio
import random
import time

from deepexec_sdk import DeepExecAsyncClient
from deepexec_sdk.types import MCPJobStatusResponse

from .common import RunConfig
from .diagnose import healthz_ms, http_limit
from .harness import running_server
from .stats import SUMMARY_COLUMNS, Outcome, Summary, Table, Verdict, fmt, summary_row

POLL_INTERVAL = 1.0


def lag_ms(final: MCPJobStatusResponse, returned_at: float) -> float:
    """Milliseconds from the job's ``finished_at`` (server clock, same host) to ``returned_at``
    (``time.time()`` when the call returned)."""
    assert final.finished_at is not None
    return (returned_at - final.finished_at.timestamp()) * 1000


async def ours(client: DeepExecAsyncClient, job_id: str) -> MCPJobStatusResponse:
    """The SDK's wait (long poll)."""
    return await client.wait_for_mcp_job_completion(job_id, max_wait_time=60)


async def reference(client: DeepExecAsyncClient, job_id: str) -> MCPJobStatusResponse:
    """The reference's wait: ask, sleep ``POLL_INTERVAL``, ask again."""
    while True:
        status = await client.get_mcp_job_status(job_id)
        if status.is_terminal:
            return status
        await asyncio.sleep(POLL_INTERVAL)


async def run(cfg: RunConfig) -> Outcome:
    """Jobs sleep a random 0-1 s (so a poller's phase is random too); both waits alternate."""
    out = Outcome(3, "Completion latency of wait_for_mcp_job_completion", cfg.command(3))
    reps = cfg.n(30, 3)
    rng = random.Random(3)
    lags: dict[str, list[float]] = {"ours": [], "ref": []}
    with running_server() as server:
        async with server.client() as client:
            for i in range(reps):
                for which in ("ours", "ref") if i % 2 == 0 else ("ref", "ours"):
                    code = f"import time; time.sleep({rng.random():.3f})"
                    job = await client.submit_mcp_job("bench", "code_execution", {"code": code})
                    wait = ours if which == "ours" else reference
                    final = await wait(client, job.job_id)
                    returned = time.time()
                    if final.status != "COMPLETED":
                        raise RuntimeError(f"job did not complete: {final}")
                    lags[which].append(lag_ms(final, returned))
            floor_ms = await asyncio.to_thread(healthz_ms, server.base_url)
    s_ours, s_ref = Summary.of(lags["ours"]), Summary.of(lags["ref"])
    table = Table("From the job's finished_at to the wait's return (ms)", SUMMARY_COLUMNS)
    table.add(*summary_row("wait_for_mcp_job_completion (SDK, long poll)", s_ours))
    table.add(*summary_row(f"reference: get status + sleep {POLL_INTERVAL} s", s_ref))
    table.notes.append(
        f"{reps} jobs per path, alternating; each job sleeps a random 0-1 s so the poller's "
        "phase is uniform. finished_at is the server's clock on this same host."
    )
    out.tables.append(table)
    ok = s_ours.median <= 10
    out.verdicts.append(
        Verdict(
            "completion latency median ≤ 10 ms",
            ok,
            f"{fmt(s_ours.median)} ms (reference {fmt(s_ref.median)} ms)",
            "" if ok else http_limit(floor_ms, "time from the store's finish to the answer"),
        )
    )
    return out
