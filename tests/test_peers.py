"""What crosses processes (``engine/peers.py``) over the real PostgreSQL at 127.0.0.1:5432:
job events arrive whole and in order, a burst of them in few notifications, pending and cancel
messages reach the other process, and a killed listening connection leads to a resync."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

import psycopg
import pytest

from deepexec_sdk.types import JobStatus, MCPJobEvent, MCPJobStatusResponse
from deepexec_server.engine.peers import BATCH_MAX, NoPeers, PeerHandlers, PgPeers
from deepexec_server.store.pg_notify import PgEventBus, channel_name
from deepexec_server.store.postgres import PostgresStore

pytestmark = pytest.mark.timeout(60)

PG_URL = os.environ.get("DEEPEXEC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Received:
    def __init__(self) -> None:
        self.events: list[MCPJobEvent] = []
        self.pending: list[str] = []
        self.cancels: list[str] = []
        self.resyncs = 0
        self.changed = asyncio.Event()

    def handlers(self) -> PeerHandlers:
        return PeerHandlers(
            job_event=self._add(self.events),
            job_pending=self._add(self.pending),
            cancel=self._add(self.cancels),
            resync=self._resync,
        )

    def _add(self, into: list) -> object:  # type: ignore[type-arg]
        def add(item: object) -> None:
            into.append(item)
            self.changed.set()

        return add

    async def _resync(self) -> None:
        self.resyncs += 1
        self.changed.set()

    async def until(self, check: object, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
def store(pg_store: PostgresStore) -> PostgresStore:
    return pg_store


async def peers(store: PostgresStore) -> tuple[PgPeers, Received]:
    bus = PgEventBus(PG_URL, store.connection, channel=channel_name(store.schema))
    got = Received()
    p = PgPeers(bus)
    await p.start(got.handlers())
    return p, got


def output(job_id: str, i: int) -> MCPJobEvent:
    return MCPJobEvent(type="output", job_id=job_id, stream="stdout", text=f"line {i}\n")


async def test_events_cross_whole_and_in_order(store: PostgresStore) -> None:
    a, _ = await peers(store)
    b, got = await peers(store)
    try:
        now = datetime.now(UTC)
        status = MCPJobEvent(
            type="status",
            job_id="j1",
            job=MCPJobStatusResponse(
                job_id="j1",
                name="n",
                job_type="code_execution",
                status=JobStatus.COMPLETED,
                created_at=now,
                started_at=now,
                finished_at=now,
                updated_at=now,
                result={"stdout": "x" * 50_000},
            ),
        )
        sent = [output("j1", i) for i in range(500)]
        for event in sent:
            a.job_event(event)
        a.job_event(status)
        await got.until(lambda: len(got.events) == 501)
        assert got.events[:500] == sent
        assert got.events[500] == status
        # A burst shares notifications: all 501 were queued before the sender ran, so it
        # sent them BATCH_MAX at a time.
        assert b.bus.notifications == -(-501 // BATCH_MAX)
    finally:
        await a.stop()
        await b.stop()


async def test_pending_and_cancel_reach_the_other_process(store: PostgresStore) -> None:
    a, got_a = await peers(store)
    b, got_b = await peers(store)
    try:
        a.job_pending("code_execution")
        b.cancel("j9")
        await got_b.until(lambda: got_b.pending)
        await got_a.until(lambda: got_a.cancels)
        assert got_b.pending == ["code_execution"] and got_b.cancels == []
        assert got_a.cancels == ["j9"] and got_a.pending == []
    finally:
        await a.stop()
        await b.stop()


async def test_a_lost_listener_resyncs(store: PostgresStore) -> None:
    a, _ = await peers(store)
    b, got = await peers(store)
    try:
        assert got.resyncs == 1  # on start: nothing was missed, but the contract holds
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [b.bus.listener_pid])
        await got.until(lambda: got.resyncs == 2)
        a.job_pending("text_generation")
        await got.until(lambda: got.pending)
        assert got.pending == ["text_generation"]
    finally:
        await a.stop()
        await b.stop()


async def test_one_process_alone_sends_nothing() -> None:
    alone = NoPeers()
    got = Received()
    await alone.start(got.handlers())
    alone.job_pending("code_execution")
    alone.cancel("j1")
    await alone.stop()
    assert (got.pending, got.cancels, got.resyncs) == ([], [], 0)
