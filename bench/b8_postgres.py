"""8. Benchmarks 1, 2 and 5 again with the server on PostgreSQL (a fresh schema in the test
database, dropped afterwards), next to their SQLite figures from the same invocation."""

from __future__ import annotations

import dataclasses

from . import b1_trivial, b2_throughput, b5_backlog
from .common import PG_URL, RunConfig, pg_schema
from .stats import Outcome, Verdict


async def run(cfg: RunConfig) -> list[Outcome]:
    """1, 2 and 5 with ``--database-url postgresql://...``; NOT RUN if PostgreSQL is down."""
    try:
        import psycopg

        psycopg.connect(PG_URL, connect_timeout=3).close()
    except Exception as exc:  # any failure means: no server to measure against
        out = Outcome(8, "PostgreSQL", cfg.command(8))
        out.verdicts.append(Verdict("benchmarks 1, 2, 5 on PostgreSQL", None, "-", str(exc)))
        return [out]
    outs: list[Outcome] = []
    for bench in (b1_trivial, b2_throughput, b5_backlog):
        with pg_schema() as url:
            out = await bench.run(dataclasses.replace(cfg, database_url=url))
        out.name = f"{out.name}, rerun of {out.number}"
        out.command = cfg.command(8)
        out.number = 8
        outs.append(out)
    return outs
