"""Run settings shared by the benchmarks, and the PostgreSQL schema they may run against."""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Iterator

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How big a run is: ``quick`` is a smoke run (tiny counts, no verdicts worth reading)."""

    quick: bool = False
    #: Empty: the server's default SQLite; else a PostgreSQL URL (benchmark 8).
    database_url: str = ""

    def n(self, full: int, quick: int) -> int:
        """A repetition count for this run size."""
        return quick if self.quick else full

    def secs(self, full: float, quick: float) -> float:
        """A duration for this run size."""
        return quick if self.quick else full

    @property
    def db_label(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "postgresql" if self.database_url else "sqlite"

    def command(self, number: int) -> str:
        """The command line that reproduces benchmark ``number`` at this size."""
        quick = " --quick" if self.quick else ""
        return f".venv/bin/python -m bench --only {number}{quick}"


@contextlib.contextmanager
def pg_schema(base_url: str = PG_URL) -> Iterator[str]:
    """A fresh schema in the test database; yields a URL whose search_path is it, and drops
    the schema (with everything the server created in it) afterwards."""
    import psycopg

    name = f"bench_{secrets.token_hex(4)}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield f"{base_url}?options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')
