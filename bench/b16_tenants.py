"""16. Many tenants: what fair share costs a claim when another tenant has a 10,000-job
backlog, against the same claim with nothing else queued (on SQLite and on PostgreSQL), and
submits per second with every quota on against a tenant with none, on one server.

The claims are timed on the store itself (``Store.claim_next``, what a worker calls), in
rounds that alternate the two queues. The submits come from benchmark 5's lean load process,
the two tenants alternating, while blocking jobs hold the runners so every job queues.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from deepexec_sdk.types import JobStatus
from deepexec_server.domain import NewBatch, NewJob, utcnow
from deepexec_server.store import Store
from deepexec_server.store.postgres import PostgresStore
from deepexec_server.store.sqlite import SQLiteStore

from .common import RunConfig, pg_schema
from .harness import TRIVIAL, running_server
from .load import post_load
from .stats import SUMMARY_COLUMNS, Outcome, Summary, Table, Verdict, fmt, ratio, summary_row

CODE = "code_execution"
BLOCKER = "import time; time.sleep(3600)"
BACKLOG = 10_000
#: The quota tenant's settings: every quota on, none of them reached by the load.
QUOTAS = (
    "--max-running",
    "100",
    "--max-pending",
    "1000000",
    "--submit-rate",
    "100000/s",
    "--max-timeout",
    "600",
)


def _job(tenant: str) -> NewJob:
    return NewJob(
        tenant_id=tenant,
        name="bench",
        job_type=CODE,
        data={"code": TRIVIAL},
        timeout=60,
        priority=0,
        tags=(),
        idempotency_key=None,
        fingerprint=None,
    )


async def _prepared(store: Store, backlog: int) -> Store:
    """Open ``store``: tenant ``a`` with one job running and ``backlog`` queued."""
    await store.open()
    now = utcnow()
    await store.create_job(_job("a"), now - timedelta(seconds=1))
    running = await store.claim_next([CODE], "bench", now + timedelta(hours=1), now)
    assert running is not None and running.tenant_id == "a"
    for start in range(0, backlog, 1000):
        jobs = tuple(_job("a") for _ in range(min(1000, backlog - start)))
        await store.create_batch(NewBatch("a", jobs), now)
    return store


async def _claim_b(store: Store) -> float:
    """Seconds one claim of tenant ``b``'s fresh job takes (the job is then finished)."""
    await store.create_job(_job("b"), utcnow())
    t0 = time.perf_counter()
    job = await store.claim_next(
        [CODE, "text_generation"], "bench", utcnow() + timedelta(hours=1), utcnow()
    )
    elapsed = time.perf_counter() - t0
    if job is None or job.tenant_id != "b":
        raise RuntimeError(f"the claim took {job and job.tenant_id!r}, not tenant b's job")
    await store.finish_job(job.id, "bench", JobStatus.COMPLETED, {"ok": True}, None, utcnow())
    return elapsed


async def _claims(make: list[Store], rounds: int) -> tuple[Summary, Summary]:
    """Claim costs on an otherwise empty queue and behind the backlog, interleaved."""
    empty = await _prepared(make[0], 0)
    backlog = await _prepared(make[1], BACKLOG)
    try:
        for _ in range(20):  # warm-up: statement caches, PostgreSQL's prepared plans
            await _claim_b(empty)
            await _claim_b(backlog)
        quiet: list[float] = []
        behind: list[float] = []
        for r in range(rounds):
            pair = [(empty, quiet), (backlog, behind)]
            for store, into in pair if r % 2 else pair[::-1]:
                into.append(await _claim_b(store))
        return Summary.of(quiet), Summary.of(behind)
    finally:
        await empty.close()
        await backlog.close()


async def _submit_rates(cfg: RunConfig, total: int, rounds: int) -> dict[str, list[float]]:
    env = {"DEEPEXEC_TENANT_MAX_PENDING": "0", "DEEPEXEC_MAX_PENDING_JOBS": "0"}
    rates: dict[str, list[float]] = {"no quotas": [], "every quota on": []}
    with running_server("--concurrency", "code_execution=1", env=env) as server:
        server.cli("tenants", "set", "limited", *QUOTAS)
        keys = {
            "no quotas": server.tenant_key("free"),
            "every quota on": server.tenant_key("limited"),
        }
        async with server.client() as client:
            await client.submit_mcp_job("blocker", CODE, {"code": BLOCKER}, 3600)
        body = json.dumps({"name": "q", "job_type": CODE, "data": {"code": TRIVIAL}}).encode()
        url = f"{server.base_url}/v1/jobs"
        for r in range(rounds + 1):  # the first round warms up
            for name in list(keys)[r % 2 :] + list(keys)[: r % 2]:
                headers = {
                    "Authorization": f"Bearer {keys[name]}",
                    "DeepExec-Protocol": "1",
                    "Content-Type": "application/json",
                }
                got = await asyncio.to_thread(post_load, url, headers, body, total, 16)
                if got.errors or got.answered != total:
                    raise RuntimeError(f"{name}: {got.errors} of {total} submits not 201")
                if r:
                    rates[name].append(got.rate)
    return rates


async def run(cfg: RunConfig) -> Outcome:
    out = Outcome(
        16, "Fair share's claim behind a backlog; submits with quotas on", cfg.command(16)
    )
    rounds = cfg.n(400, 20)
    claim_table = Table(
        f"One claim of tenant B's job (ms): alone, and with tenant A's {BACKLOG:,} queued",
        [*SUMMARY_COLUMNS, "× alone"],
    )
    ratios: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="deepexec-bench-") as tmp,
        pg_schema() as pg_empty,
        pg_schema() as pg_backlog,
    ):
        stores: dict[str, list[Store]] = {
            "sqlite": [SQLiteStore(Path(tmp) / "empty.db"), SQLiteStore(Path(tmp) / "backlog.db")],
            "postgresql": [PostgresStore(pg_empty), PostgresStore(pg_backlog)],
        }
        for label, pair in stores.items():
            quiet, behind = await _claims(pair, rounds)
            ratios[label] = ratio(behind.median, quiet.median)
            claim_table.add(*summary_row(f"{label}: queue otherwise empty", quiet, 1000), 1.0)
            claim_table.add(
                *summary_row(f"{label}: behind A's {BACKLOG:,}", behind, 1000), ratios[label]
            )
    claim_table.notes.append(
        f"{rounds} claims of each, interleaved, after 20 of each to warm up. Tenant A has one "
        "job running in both, so B's job is the one fair share picks; each claimed job is "
        "finished before the next. Timed around Store.claim_next alone."
    )
    out.tables.append(claim_table)

    total = cfg.n(4000, 200)
    submit_rounds = cfg.n(3, 1)
    rates = await _submit_rates(cfg, total, submit_rounds)
    submit_table = Table(
        f"Submits per second, {total:,} per round from the lean load process (16 in flight)",
        ["tenant", "rounds", "median submits/s", "× no quotas"],
    )
    free = Summary.of(rates["no quotas"]).median
    limited = Summary.of(rates["every quota on"]).median
    submit_table.add("no quotas", len(rates["no quotas"]), free, 1.0)
    submit_table.add(
        "every quota on (" + " ".join(QUOTAS) + ")",
        len(rates["every quota on"]),
        limited,
        ratio(limited, free),
    )
    submit_table.notes.append(
        "One server, one runner held by a blocking job so every job queues; the two tenants "
        "alternate after a warm-up round. The quota tenant's quotas are all checked on each "
        "submit (settings cached 2 s, pending count 0.5 s) and none is reached."
    )
    out.tables.append(submit_table)

    for label, r in ratios.items():
        out.verdicts.append(
            Verdict(
                f"a claim behind another tenant's {BACKLOG:,} queued jobs ≤ 1.2× a claim with "
                f"nothing else queued ({label})",
                r <= 1.2,
                f"{fmt(r)}×",
                "" if r <= 1.2 else "the claim's walk of the tenants with queued jobs",
            )
        )
    out.verdicts.append(
        Verdict(
            "≥ 1,000 submits/s with every quota on",
            limited >= 1000,
            f"{fmt(limited)}/s ({fmt(ratio(limited, free))}× a tenant with none)",
            "" if limited >= 1000 else "the quota checks per submit",
        )
    )
    return out
