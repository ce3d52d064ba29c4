"""11. Several processes on one PostgreSQL store against one process on SQLite.

Our path: an API process (``deepexec serve --no-runners``) and ``deepexec worker`` processes on
a fresh PostgreSQL schema. Baseline, in the same run: one ``deepexec serve`` on SQLite; and, to
tell the cost of the store from the cost of crossing processes, one ``deepexec serve`` on
PostgreSQL. The deployments run side by side and the jobs alternate between them one by one, so
a change in the machine's load weighs on all alike. Four figures:

- a trivial job end to end: submit → ``wait_for_mcp_job_completion`` returns;
- a cancel of a running job: ``cancel_mcp_job`` sent → a waiter that was already waiting in the
  API process returns ``CANCELED``;
- the first line of a running job's output: printed by the program (it prints its clock) →
  read from the API process's SSE stream;
- trivial jobs/s with two worker processes of one slot each against one worker process of two
  slots (the cost of spreading the work; this machine has 2 cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from statistics import median

from deepexec_sdk import DeepExecAsyncClient

from .common import PG_URL, RunConfig, pg_schema
from .harness import DEEPEXEC, Server, running_server
from .stats import SUMMARY_COLUMNS, Outcome, Summary, Table, Verdict, fmt, ratio, summary_row

TRIVIAL = "print(1)"
#: Prints its clock at once, then stays running until cancelled.
PRINTS_THEN_WAITS = "import time; print(time.time(), flush=True); time.sleep(120)"
#: How long the client waits for that line over SSE before calling it not seen.
LINE_WAIT_S = 10.0
#: What ``deepexec worker`` logs (level info) once its scheduler runs, and how long to wait for it.
READY_LINE = "running jobs from"
WORKER_START_S = 60.0


@contextlib.contextmanager
def workers(server: Server, database_url: str, slots: list[int]) -> Iterator[None]:
    """``deepexec worker`` processes (one per entry of ``slots``, with that many code slots)
    beside ``server``, on its database; stopped on exit."""
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for n in slots:
            logs.append(server.home / f"worker-{len(procs)}.log")
            log = open(logs[-1], "ab")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [
                        DEEPEXEC, "worker", "--database-url", database_url,
                        "--concurrency", f"code_execution={n}", "--log-level", "info",
                    ],
                    env=server.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )  # fmt: skip
            log.close()
        wait_ready(procs, logs)
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def wait_ready(procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Wait until every worker says it runs jobs (a worker still starting would make a
    two-worker figure a one-worker one)."""
    deadline = time.monotonic() + WORKER_START_S
    waiting = dict(zip(logs, procs, strict=True))
    while waiting:
        for log, proc in list(waiting.items()):
            if READY_LINE in log.read_text(errors="replace"):
                del waiting[log]
            elif proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}: {log.read_text()[-2000:]}")
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} worker(s) not running after {WORKER_START_S} s")
        time.sleep(0.05)


@contextlib.asynccontextmanager
async def deployment(kind: str, worker_slots: list[int]) -> AsyncIterator[DeepExecAsyncClient]:
    """A client of ``kind``: ``sqlite`` (one process), ``postgres`` (API + workers) or
    ``postgres-one`` (one process on PostgreSQL)."""
    with contextlib.ExitStack() as stack:
        if kind == "sqlite":
            server = stack.enter_context(running_server())
        else:
            url = stack.enter_context(pg_schema(PG_URL))
            front = ("--no-runners",) if kind == "postgres" else ()
            server = stack.enter_context(running_server(*front, database_url=url))
            if kind == "postgres":
                stack.enter_context(workers(server, url, worker_slots))
        async with server.client() as client:
            await warm(client)
            yield client


async def warm(client: DeepExecAsyncClient) -> None:
    """Run jobs until one completes (the workers may still be starting)."""
    for _ in range(3):
        job = await client.submit_mcp_job("warm", "code_execution", {"code": TRIVIAL})
        await client.wait_for_mcp_job_completion(job.job_id, max_wait_time=60)


#: Where a trivial job's time goes, from the job's own timestamps (the server's clock, on this
#: host): created → claimed, claimed → finished (the program's wall time apart), finished →
#: the client's wait returns.
PHASES = ("created → claimed", "claimed → finished", "of which the program", "finished → returned")


async def end_to_end_ms(
    client: DeepExecAsyncClient, phases: dict[str, list[float]] | None = None
) -> float:
    t0 = time.perf_counter()
    job = await client.submit_mcp_job("b11", "code_execution", {"code": TRIVIAL})
    final = await client.wait_for_mcp_job_completion(job.job_id, max_wait_time=60)
    returned = time.time()
    ms = (time.perf_counter() - t0) * 1000
    if final.status != "COMPLETED":
        raise RuntimeError(f"trivial job ended {final.status}: {final.error}")
    if phases is not None and final.started_at and final.finished_at and final.result:
        created, started = final.created_at.timestamp(), final.started_at.timestamp()
        finished = final.finished_at.timestamp()
        for name, value in zip(
            PHASES,
            (
                (started - created) * 1000,
                (finished - started) * 1000,
                float(final.result.get("wall_time_ms") or 0),
                (returned - finished) * 1000,
            ),
            strict=True,
        ):
            phases.setdefault(name, []).append(value)
    return ms


async def first_line_and_cancel_ms(
    client: DeepExecAsyncClient,
) -> tuple[float | None, float]:
    """Milliseconds from the program's print to the SSE stream's line (None: not seen within
    ``LINE_WAIT_S``); then from the cancel to a waiter's return."""
    job = await client.submit_mcp_job("b11", "code_execution", {"code": PRINTS_THEN_WAITS})
    line_ms = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINE_WAIT_S):
            async for event in client.stream_mcp_job_events(job.job_id):
                if event.type == "output" and event.text and event.text.strip():
                    line_ms = (time.time() - float(event.text.split()[0])) * 1000
                    break
    waiter = asyncio.create_task(client.wait_for_mcp_job_completion(job.job_id, 60))
    await asyncio.sleep(0.2)  # the waiter is waiting in the API process
    t0 = time.perf_counter()
    await client.cancel_mcp_job(job.job_id, "bench")
    final = await waiter
    cancel_ms = (time.perf_counter() - t0) * 1000
    if final.status != "CANCELED":
        raise RuntimeError(f"cancelled job ended {final.status}")
    return line_ms, cancel_ms


async def jobs_per_s(client: DeepExecAsyncClient, n: int, concurrency: int = 8) -> float:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            await end_to_end_ms(client)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


async def run(cfg: RunConfig) -> Outcome:
    out = Outcome(11, "Several processes on PostgreSQL against one on SQLite", cfg.command(11))
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:  # no server to measure against
        out.verdicts.append(Verdict("processes on PostgreSQL", None, "-", str(exc)))
        return out
    reps, rounds = cfg.n(100, 3), cfg.n(2, 1)
    kinds = ("sqlite", "postgres", "postgres-one")
    e2e: dict[str, list[float]] = {k: [] for k in kinds}
    phases: dict[str, dict[str, list[float]]] = {k: {} for k in kinds}
    line: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    unseen: dict[str, int] = {"sqlite": 0, "postgres": 0}
    cancel: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    async with contextlib.AsyncExitStack() as stack:
        clients = {k: await stack.enter_async_context(deployment(k, [2])) for k in kinds}
        for i in range(reps):
            for kind in kinds if i % 2 == 0 else kinds[::-1]:
                e2e[kind].append(await end_to_end_ms(clients[kind], phases[kind]))
        for i in range(max(1, min(reps // 3, 10))):
            for kind in ("sqlite", "postgres") if i % 2 == 0 else ("postgres", "sqlite"):
                ms_line, ms_cancel = await first_line_and_cancel_ms(clients[kind])
                if ms_line is None:
                    unseen[kind] += 1
                else:
                    line[kind].append(ms_line)
                cancel[kind].append(ms_cancel)
    n_jobs = cfg.n(200, 10)
    rates: dict[str, list[float]] = {"1x2": [], "2x1": []}
    for r in range(rounds):
        for shape in ("1x2", "2x1") if r % 2 == 0 else ("2x1", "1x2"):
            slots = [2] if shape == "1x2" else [1, 1]
            async with deployment("postgres", slots) as client:
                rates[shape].append(await jobs_per_s(client, n_jobs))

    s = {k: Summary.of(v) for k, v in e2e.items()}
    t = Table("Trivial job, submit → wait returns (ms)", SUMMARY_COLUMNS)
    t.add(*summary_row("API process + 1 worker process, PostgreSQL", s["postgres"]))
    t.add(*summary_row("one deepexec serve, SQLite", s["sqlite"]))
    t.add(*summary_row("one deepexec serve, PostgreSQL", s["postgres-one"]))
    t.notes.append(
        "The last row is the store's share of the difference: one process on PostgreSQL makes "
        "the same store writes and sends the same notifications, but its own jobs wake its "
        "scheduler and waiters in-process; what the first row adds to it is the cost of "
        "crossing processes."
    )
    out.tables.append(t)
    t = Table(
        "Where the trivial job's time goes (median ms)",
        ["phase", "PostgreSQL, API + worker", "PostgreSQL, one process", "SQLite"],
    )
    for name in PHASES:
        got = (phases[k].get(name) for k in ("postgres", "postgres-one", "sqlite"))
        t.add(name, *(fmt(median(v)) if v else "-" for v in got))
    t.notes.append(
        "From the job's timestamps (the server's clock on this host) and the client's clock at "
        "the wait's return; the first phase starts at the submit's store write, so the submit's "
        "request before it is in neither."
    )
    out.tables.append(t)
    c = {k: Summary.of(v) for k, v in cancel.items()}
    t = Table("Cancel of a running job → a waiting waiter returns CANCELED (ms)", SUMMARY_COLUMNS)
    t.add(*summary_row("PostgreSQL, job on the worker process", c["postgres"]))
    t.add(*summary_row("SQLite, one process", c["sqlite"]))
    out.tables.append(t)
    ln = {k: Summary.of(v) for k, v in line.items()}
    t = Table("First output line: program's print → SSE event in the client (ms)", SUMMARY_COLUMNS)
    t.add(*summary_row("PostgreSQL, job on the worker process", ln["postgres"]))
    t.add(*summary_row("SQLite, one process", ln["sqlite"]))
    t.notes.append(
        f"Lines not seen within {LINE_WAIT_S:.0f} s (left out of the figures): PostgreSQL "
        f"{unseen['postgres']}, SQLite {unseen['sqlite']}."
    )
    out.tables.append(t)
    rate = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    t = Table("Trivial jobs/s on PostgreSQL, client concurrency 8", ["workers", "jobs/s (median)"])
    t.add("two worker processes of one slot", fmt(rate["2x1"]))
    t.add("one worker process of two slots", fmt(rate["1x2"]))
    out.tables.append(t)

    e2e_ratio = ratio(s["postgres"].median, s["sqlite"].median)
    program = {k: median(phases[k].get(PHASES[2]) or [0.0]) for k in kinds}
    spread = ratio(rate["2x1"], rate["1x2"])
    out.verdicts += [
        Verdict(
            "trivial job end to end on PostgreSQL ≤ 1.3× one process on SQLite",
            e2e_ratio <= 1.3,
            f"{fmt(s['postgres'].median)} / {fmt(s['sqlite'].median)} ms = {fmt(e2e_ratio)}×",
            ""
            if e2e_ratio <= 1.3
            else f"one process on PostgreSQL takes {fmt(s['postgres-one'].median)} ms, so most "
            "of the gap is the store, not the crossing; and the sandboxed program itself runs "
            f"{fmt(program['postgres'])} / {fmt(program['sqlite'])} ms in the two deployments: "
            "see the phases",
        ),
        Verdict(
            "cancel across processes: median ≤ 100 ms",
            c["postgres"].median <= 100,
            f"{fmt(c['postgres'].median)} ms (one process: {fmt(c['sqlite'].median)} ms)",
        ),
        Verdict(
            "first output line across processes over SSE: median ≤ 50 ms",
            not unseen["postgres"] and ln["postgres"].median <= 50,
            f"{fmt(ln['postgres'].median)} ms (one process: {fmt(ln['sqlite'].median)} ms)",
        ),
        Verdict(
            "two 1-slot workers ≥ 0.9× one 2-slot worker (jobs/s)",
            spread >= 0.9,
            f"{fmt(rate['2x1'])} / {fmt(rate['1x2'])} = {fmt(spread)}×",
        ),
    ]
    return out
