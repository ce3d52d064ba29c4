"""Messages between processes over PostgreSQL LISTEN/NOTIFY (``store/pg_notify.py``), on the
real PostgreSQL at 127.0.0.1:5432: delivery to the others and not to the sender, big messages
through the table and in order, and no lost wake-up when the listening connection is killed.

Each test uses a store in a schema of its own, so its channel is its own too.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg
import pytest

from deepexec_server.store.pg_notify import MAX_NOTIFY_BYTES, PgEventBus, channel_name
from deepexec_server.store.postgres import PostgresStore

pytestmark = pytest.mark.timeout(60)

PG_URL = os.environ.get("DEEPEXEC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class Inbox:
    """What one bus received, and how often it (re)connected."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.reconnects = 0
        self._changed = asyncio.Event()

    def receive(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._changed.set()

    async def reconnected(self) -> None:
        self.reconnects += 1
        self._changed.set()

    async def until(self, check: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def store(pg_store: PostgresStore) -> PostgresStore:
    return pg_store


def new_bus(store: PostgresStore) -> PgEventBus:
    return PgEventBus(
        PG_URL,
        store.connection,
        channel=channel_name(store.schema),
        connect_timeout=5,
    )


async def started(store: PostgresStore) -> tuple[PgEventBus, Inbox]:
    bus, inbox = new_bus(store), Inbox()
    await bus.start(inbox.receive, inbox.reconnected)
    return bus, inbox


async def test_a_message_reaches_the_other_processes_and_not_the_sender(
    store: PostgresStore,
) -> None:
    a, a_inbox = await started(store)
    b, b_inbox = await started(store)
    c, c_inbox = await started(store)
    try:
        await a.publish({"kind": "new", "job_type": "code_execution"})
        await b_inbox.until(lambda: b_inbox.messages)
        await c_inbox.until(lambda: c_inbox.messages)
        assert b_inbox.messages == [{"kind": "new", "job_type": "code_execution"}]
        assert c_inbox.messages == b_inbox.messages
        # The sender's own message comes back to its listener and is dropped there: a
        # message from b after it arrives at a alone.
        await b.publish({"kind": "cancel", "job_id": "j1"})
        await a_inbox.until(lambda: a_inbox.messages)
        assert a_inbox.messages == [{"kind": "cancel", "job_id": "j1"}]
        assert a_inbox.reconnects == 1
    finally:
        for bus in (a, b, c):
            await bus.stop()


async def test_big_messages_go_through_the_table_and_keep_their_order(
    store: PostgresStore,
) -> None:
    a, _ = await started(store)
    b, inbox = await started(store)
    big = "x" * (4 * MAX_NOTIFY_BYTES)
    try:
        for i in range(6):
            await a.publish({"seq": i, "text": big if i % 2 else "small"})
        await inbox.until(lambda: len(inbox.messages) == 6)
        assert [m["seq"] for m in inbox.messages] == list(range(6))
        assert [len(m["text"]) for m in inbox.messages] == [5, len(big)] * 3
        # Only the big ones were stored.
        async with store.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM event_payloads")
            row = await cur.fetchone()
        assert row is not None and row["n"] == 3
        # A message just under the limit travels inline, whatever its characters' widths.
        wide = "é" * ((MAX_NOTIFY_BYTES - 100) // 2)
        await a.publish({"seq": 6, "text": wide})
        await inbox.until(lambda: len(inbox.messages) == 7)
        assert inbox.messages[-1]["text"] == wide
    finally:
        await a.stop()
        await b.stop()


async def test_a_killed_listener_reconnects_and_says_so(store: PostgresStore) -> None:
    """The listener's backend is terminated: the bus reconnects, calls ``on_reconnect`` (the
    process re-reads what it waits for, since a message sent meanwhile is lost to it), and
    receives what is published after that."""
    a, _ = await started(store)
    b, inbox = await started(store)
    try:
        pid = b.listener_pid
        assert pid is not None
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()
        assert killed == (True,)
        await inbox.until(lambda: inbox.reconnects == 2)
        assert b.listener_pid not in (None, pid)
        await a.publish({"after": "reconnect"})
        await inbox.until(lambda: inbox.messages)
        assert inbox.messages == [{"after": "reconnect"}]
    finally:
        await a.stop()
        await b.stop()


async def test_start_fails_clearly_when_the_database_is_unreachable(
    store: PostgresStore,
) -> None:
    bus = PgEventBus("postgresql://postgres@127.0.0.1:1/test", store.connection, connect_timeout=1)
    with pytest.raises(ConnectionError, match="cannot listen"):
        await bus.start(lambda m: None, Inbox().reconnected)
    assert bus.listener_pid is None


def test_channels_are_per_schema() -> None:
    assert channel_name(None) == "deepexec"
    assert channel_name("tenant_x") == "deepexec_tenant_x"
    assert len(channel_name("s" * 100)) == 63
