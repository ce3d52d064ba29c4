"""15. Judging a C++ solution against 50 test cases: one multi-test job (compiled once, a fresh
sandbox per test) against 50 Judge0-style submissions of the same program (each compiled and
run on its own), sent and awaited by the official ``judge0`` client through DeepExec's Judge0
API, as a Judge0 user does today.

Both paths run on one server on its defaults, in rounds that alternate them. Reproduce:
``.venv/bin/python -m bench --only 15``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

from .common import RunConfig
from .harness import running_server
from .stats import SUMMARY_COLUMNS, Outcome, Summary, Table, Verdict, fmt, ratio, summary_row

#: Reads two numbers, prints their sum: a typical judge task.
SOLUTION = r"""
#include <iostream>
int main() { long a, b; std::cin >> a >> b; std::cout << a + b << "\n"; }
"""
#: Judge0 1.13.1's id of C++ (GCC 9.2.0), which this server runs with the host's g++.
JUDGE0_CPP = 54
#: How often the judge0 client polls (its own default) and the SDK waits in this benchmark.
POLL_S = 0.1


def cases(n: int) -> list[dict[str, str]]:
    return [{"stdin": f"{i} {2 * i}", "expected_output": f"{3 * i}\n"} for i in range(n)]


async def one_job(server: Any, tests: list[dict[str, str]]) -> float:
    """Seconds from submit to the finished multi-test job, every test accepted."""
    async with server.client(timeout=300) as client:
        t0 = time.perf_counter()
        job = await client.execute_code_and_wait(
            SOLUTION, "cpp", tests=tests, timeout=300, poll_interval=POLL_S
        )
        elapsed = time.perf_counter() - t0
    summary = (job.result or {}).get("summary") or {}
    if job.status != "COMPLETED" or summary.get("passed") != len(tests):
        raise RuntimeError(f"the multi-test job ended {job.status}: {summary}")
    if (job.result or {}).get("compiled") != 1:
        raise RuntimeError(f"the multi-test job compiled {job.result.get('compiled')} times")
    return elapsed


def judge0_submissions(server: Any, tests: list[dict[str, str]]) -> float:
    """Seconds to create ``len(tests)`` submissions with the judge0 client (its batches of
    ``max_submission_batch_size``) and wait for all, every one Accepted."""
    import judge0  # type: ignore[import-untyped]  # (no type information)

    client = judge0.Client(server.base_url, {"X-Auth-Token": server.api_key})
    submissions = [
        judge0.Submission(
            source_code=SOLUTION,
            language=JUDGE0_CPP,
            stdin=t["stdin"],
            expected_output=t["expected_output"],
        )
        for t in tests
    ]
    t0 = time.perf_counter()
    created = judge0.api.create_submissions(client=client, submissions=submissions)
    done = judge0.wait(
        client=client,
        submissions=created,
        retry_strategy=judge0.RegularPeriodRetry(POLL_S),
    )
    elapsed = time.perf_counter() - t0
    statuses = {str(s.status) for s in done}
    if statuses != {str(judge0.Status.ACCEPTED)}:
        raise RuntimeError(f"judge0 submissions ended {statuses}")
    return elapsed


async def run(cfg: RunConfig) -> Outcome:
    """Rounds of: one multi-test job of N tests, and N Judge0 submissions (the order
    alternating per round); N = 50."""
    out = Outcome(15, f"50 test cases: one multi-test job vs 50 submissions ({cfg.db_label})",
                  cfg.command(15))  # fmt: skip
    if shutil.which("g++") is None:
        out.verdicts.append(Verdict("needs g++", None, "skipped", info=True))
        return out
    n = cfg.n(50, 5)
    rounds = cfg.n(5, 1)
    tests = cases(n)
    names = [f"one job with {n} tests (compiled once)", f"{n} Judge0 submissions (judge0 client)"]
    samples: dict[str, list[float]] = {name: [] for name in names}
    with running_server(database_url=cfg.database_url) as server:
        paths = {
            names[0]: lambda: one_job(server, tests),
            names[1]: lambda: asyncio.to_thread(judge0_submissions, server, tests),
        }
        for name in names:  # warm-up: the compiler's files in the page cache, connections
            await paths[name]()
        for r in range(rounds):
            for name in names[r % 2 :] + names[: r % 2]:
                samples[name].append(await paths[name]())
    sums = {name: Summary.of(v) for name, v in samples.items()}
    ours, theirs = (sums[name] for name in names)
    table = Table(
        f"Judging one C++ solution against {n} test cases (ms, submit to all verdicts)",
        [*SUMMARY_COLUMNS, f"× the {n} submissions"],
    )
    for name in names:
        table.add(*summary_row(name, sums[name], 1000), ratio(sums[name].median, theirs.median))
    table.notes.append(
        f"{rounds} rounds after one warm-up of each, the order alternating. Server on its "
        "defaults (SQLite, its default code slots). The multi-test job compiles once and runs "
        f"each test in a fresh sandbox; the {n} submissions each compile and run (Judge0's "
        f"model). Both wait by polling every {POLL_S:g} s (the judge0 client's default)."
    )
    out.tables.append(table)
    share = ratio(ours.median, theirs.median)
    out.verdicts.append(
        Verdict(
            f"a {n}-test job on a C++ solution ≤ 0.5× the time of {n} separate submissions",
            share <= 0.5,
            f"{fmt(share)}× ({fmt(ours.median * 1000)} ms vs {fmt(theirs.median * 1000)} ms)",
            "" if share <= 0.5 else "a sandbox start per test dominates",
        )
    )
    return out
