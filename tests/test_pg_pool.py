"""The PostgreSQL store's pool after its server connections die (a restart, a failover,
an operator's ``pg_terminate_backend``): connections idle longer than
``CHECK_IDLE_SECONDS`` are checked before use, so a store idle a moment survives the loss
unnoticed; one used within that window fails a single call with ``StoreError``, and the
pool replaces it for the next."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from deepexec_server.errors import StoreError
from deepexec_server.store import postgres
from deepexec_server.store.postgres import PostgresStore

from .conftest import PG_URL

pytestmark = pytest.mark.timeout(60)


async def _pool_backends(store: PostgresStore, size: int) -> set[int]:
    """The server pids behind ``size`` pooled connections, held at once so each is its own."""
    held = asyncio.Barrier(size)

    async def one() -> int:
        async with store.connection() as conn:
            row = await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone()
            await held.wait()
            assert row is not None
            return int(row["pid"])

    return set(await asyncio.gather(*(one() for _ in range(size))))


def _terminate(pids: set[int]) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def test_connections_killed_while_idle_are_replaced_unseen(
    pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "CHECK_IDLE_SECONDS", 0.2)
    pids = await _pool_backends(pg_store, 4)
    assert len(pids) == 4
    _terminate(pids)
    await asyncio.sleep(0.5)
    for _ in range(8):  # every pooled connection is handed out, and each works
        assert await pg_store.get_job("missing") is None
    assert not pids & await _pool_backends(pg_store, 4)


async def test_a_connection_killed_just_after_use_fails_one_call_then_is_replaced(
    pg_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "CHECK_IDLE_SECONDS", 30.0)
    pids = await _pool_backends(pg_store, 4)
    _terminate(pids)
    await asyncio.sleep(0.2)
    failures = 0
    for _ in range(12):
        try:
            assert await pg_store.get_job("missing") is None
        except StoreError:
            failures += 1
    # Each dead connection fails the call it serves once, then the pool replaces it.
    assert 1 <= failures <= 4
    assert await pg_store.get_job("missing") is None
    assert not pids & await _pool_backends(pg_store, 4)
