"""``python -m bench [--quick] [--only 1,3] [--results FILE]``: run the benchmarks, print each
table, optionally write the markdown report (``--results bench/RESULTS.md`` replaces the sections
of the benchmarks that ran and keeps the others: see ``report``)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from .b5_backlog import drain_verdict
from .common import RunConfig
from .harness import machine_facts
from .report import Run, render
from .stats import Outcome, Verdict

Runner = Callable[[RunConfig], Awaitable[Outcome | list[Outcome]]]


def _registry() -> dict[int, tuple[str, Runner]]:
    from . import (
        b1_trivial,
        b2_throughput,
        b3_completion,
        b4_status_rps,
        b5_backlog,
        b6_llm,
        b7_ray,
        b8_postgres,
        b10_noisy_neighbour,
        b11_processes,
        b12_batch,
        b15_judging,
        b16_tenants,
        b17_soak,
        profile,
    )

    return {
        1: ("trivial job end to end", b1_trivial.run),
        2: ("jobs/s vs concurrency", b2_throughput.run),
        3: ("completion latency", b3_completion.run),
        4: ("status requests/s", b4_status_rps.run),
        5: ("10,000 queued submits", b5_backlog.run),
        6: ("embedded-model generation", b6_llm.run),
        7: ("Ray Jobs peer", b7_ray.run),
        8: ("PostgreSQL (1, 2, 5)", b8_postgres.run),
        9: ("profile", profile.run),
        10: ("another tenant during a progress flood", b10_noisy_neighbour.run),
        11: ("several processes on PostgreSQL", b11_processes.run),
        12: ("batch submit vs single submits", b12_batch.run),
        15: ("a 50-test job vs 50 Judge0 submissions", b15_judging.run),
        16: ("fair share's claim behind a backlog; submits with quotas", b16_tenants.run),
        17: ("a 30-minute soak under mixed and hostile load", b17_soak.run),
    }


#: Benchmarks a run without ``--only`` leaves out: the soak takes 30 minutes by itself.
OPT_IN = frozenset({17})


def parse_only(text: str | None, known: list[int]) -> list[int]:
    """``"1,3"`` → ``[1, 3]``; None → all but ``OPT_IN``. Raises ``ValueError`` naming an
    unknown number."""
    if not text:
        return [n for n in known if n not in OPT_IN]
    picked = [int(p) for p in text.split(",") if p.strip()]
    unknown = [n for n in picked if n not in known]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; known: {known}")
    return picked


async def _run_all(numbers: list[int], cfg: RunConfig) -> tuple[list[Outcome], bool]:
    registry = _registry()
    outcomes: list[Outcome] = []
    ok = True
    for number in numbers:
        name, runner = registry[number]
        print(f"\n=== {number}. {name} ===", flush=True)
        t0 = time.monotonic()
        try:
            produced = await runner(cfg)
        except Exception:
            ok = False
            failed = Outcome(number, f"{name} (FAILED)", cfg.command(number))
            failed.verdicts.append(Verdict(name, None, "-", traceback.format_exc(limit=3)))
            produced = failed
        for out in produced if isinstance(produced, list) else [produced]:
            print(out.markdown(), flush=True)
            outcomes.append(out)
        print(f"({number} took {time.monotonic() - t0:.1f} s)", flush=True)
    cross_check(outcomes)
    return outcomes, ok


def cross_check(outcomes: list[Outcome]) -> None:
    """Targets that compare two benchmarks on the same store (5's drain against 2)."""
    throughput = {o.store_label: o for o in outcomes if "sdk_jobs_per_s_c2" in o.figures}
    for backlog in (o for o in outcomes if "drain_per_s" in o.figures):
        reference = throughput.get(backlog.store_label)
        if reference is not None:
            backlog.verdicts.append(drain_verdict(backlog, reference))


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 1 if a benchmark crashed (never for a missed target)."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    p.add_argument("--only", help="comma-separated benchmark numbers, e.g. 1,3")
    p.add_argument("--results", type=Path, help="write the markdown report here")
    args = p.parse_args(argv)
    # The sandbox probe logs its findings; the benches' own output is the tables.
    logging.getLogger("deepexec_server").setLevel(logging.ERROR)
    try:
        numbers = parse_only(args.only, list(_registry()))
    except ValueError as exc:
        p.error(str(exc))
    cfg = RunConfig(quick=args.quick)
    facts = machine_facts()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
    outcomes, ok = asyncio.run(_run_all(numbers, cfg))
    facts["loadavg after"] = machine_facts()["loadavg"]
    if args.results:
        command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        machine = ", ".join(f"{k} {v}" for k, v in facts.items())
        run = Run(now, command.strip(), machine, cfg.quick)
        previous = args.results.read_text() if args.results.exists() else None
        args.results.write_text(render(outcomes, run, previous))
    print("\n## Targets")
    for o in outcomes:
        for v in o.verdicts:
            print(f"[{o.number}] {v.line()}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
