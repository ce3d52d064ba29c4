"""Messages between the processes sharing one PostgreSQL store, over LISTEN/NOTIFY.

Each process holds one dedicated listening connection (``PgEventBus``) and publishes through
the store's pool. A message is a JSON object; the bus adds the publishing process's ``origin``
so a process skips its own messages (it delivered them in-process already).

- **Size.** PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more. A bigger message is
  written to the ``event_payloads`` table and the notification carries its row id; receivers
  read it from there. Rows older than ``PAYLOAD_TTL`` are deleted as new ones are written.
- **Order.** Messages are handed to ``on_message`` one at a time, in the order the database
  delivered them, big ones included (a reader task queues, one consumer resolves and delivers).
- **A lost connection loses no wake-up.** The listener reconnects with backoff; once its
  ``LISTEN`` is active again it calls ``on_reconnect``, so the process re-reads what it waits
  for (anything published while it was away). ``start`` returns only once the first ``LISTEN``
  is active, so nothing published after it is missed.
- **One channel per store schema**: deployments sharing a database in different schemas never
  hear each other.

See docs/architecture.md ("Many processes") for what the engine sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from deepexec_sdk.retry import RetryPolicy

from ..errors import StoreError

log = logging.getLogger("deepexec_server.store.pg_notify")

Conn = AsyncConnection[DictRow]
Message = dict[str, Any]

#: PostgreSQL's limit is 8,000 bytes; the envelope and a margin stay under it.
MAX_NOTIFY_BYTES = 7_900
#: How long a stored big message is kept for receivers to read.
PAYLOAD_TTL_S = 600
#: How often (in stored messages) old ones are deleted.
PAYLOAD_SWEEP_EVERY = 64
#: Reconnection backoff of the listener: forever, capped.
RECONNECT = RetryPolicy(max_retries=2**31, backoff_base=0.1, backoff_cap=5.0)

_ORIGIN = "o"
_REF = "ref"


def channel_name(schema: str | None) -> str:
    """The channel of a store: one per schema (PostgreSQL identifiers are at most 63 bytes)."""
    return "deepexec" if schema in (None, "public") else f"deepexec_{schema}"[:63]


class PgEventBus:
    """Publish and receive messages between processes (see the module's docstring).

    ``connection`` lends a connection of the store's pool (search path set to its schema):
    publishing and reading stored big messages go through it.
    """

    def __init__(
        self,
        conninfo: str,
        connection: Callable[[], AbstractAsyncContextManager[Conn]],
        *,
        schema: str | None = None,
        channel: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        """``channel``: the channel's name; by default the store's (``channel_name`` of
        ``schema``, or of the connections' current schema when ``schema`` is None)."""
        self.conninfo = conninfo
        self.channel = channel or (channel_name(schema) if schema is not None else "")
        self.origin = uuid.uuid4().hex[:16]
        self._own_prefix = f'{{"{_ORIGIN}":"{self.origin}"'
        self._connection = connection
        self._connect_timeout = connect_timeout
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._listening = asyncio.Event()
        self._listener: AsyncConnection[Any] | None = None
        self._stored = 0
        #: How many times ``LISTEN`` became active (1 after ``start``; +1 per reconnection).
        self.connections = 0
        #: Notifications received from other processes.
        self.notifications = 0

    @property
    def listener_pid(self) -> int | None:
        """The backend pid of the listening connection, while it is up."""
        conn = self._listener
        return None if conn is None or conn.closed else conn.info.backend_pid

    async def start(
        self,
        on_message: Callable[[Message], None],
        on_reconnect: Callable[[], Awaitable[None]],
    ) -> None:
        """Listen. Returns once ``LISTEN`` is active; raises ``ConnectionError`` if the first
        connection cannot be made within the connect timeout."""
        if self._tasks:
            raise RuntimeError("the event bus is already started")
        if not self.channel:
            async with self._connection() as conn:
                cur = await conn.execute("SELECT current_schema() AS schema")
                row = await cur.fetchone()
            self.channel = channel_name(row["schema"] if row is not None else None)
        self._tasks = [
            asyncio.create_task(self._listen(on_reconnect), name="pg-listen"),
            asyncio.create_task(self._deliver(on_message), name="pg-deliver"),
        ]
        waiting = asyncio.create_task(self._listening.wait())
        done, _ = await asyncio.wait(
            [waiting, self._tasks[0]],
            timeout=self._connect_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if waiting not in done:
            waiting.cancel()
            await self.stop()
            raise ConnectionError(f"cannot listen on PostgreSQL channel {self.channel!r}")

    async def stop(self) -> None:
        """Stop listening and close the connection. Idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        conn, self._listener = self._listener, None
        if conn is not None:
            await conn.close()

    async def publish(self, message: Message) -> None:
        """Send ``message`` to every other listening process (delivered after the sender's
        transaction, here a single autocommitted statement)."""
        # The origin first: a listener drops its own messages by their prefix, unparsed.
        payload = json.dumps({_ORIGIN: self.origin, **message}, separators=(",", ":"))
        async with self._connection() as conn:
            if len(payload.encode()) >= MAX_NOTIFY_BYTES:
                payload = await self._store(conn, payload)
            await conn.execute("SELECT pg_notify(%s, %s)", [self.channel, payload])

    async def _store(self, conn: Conn, payload: str) -> str:
        cur = await conn.execute(
            "INSERT INTO event_payloads (body) VALUES (%s) RETURNING id", [payload]
        )
        row = await cur.fetchone()
        assert row is not None
        self._stored += 1
        if self._stored % PAYLOAD_SWEEP_EVERY == 0:
            await conn.execute(
                "DELETE FROM event_payloads WHERE created_at < now() - make_interval(secs => %s)",
                [PAYLOAD_TTL_S],
            )
        return json.dumps({_ORIGIN: self.origin, _REF: row["id"]}, separators=(",", ":"))

    # --- receiving --------------------------------------------------------------------------

    async def _listen(self, on_reconnect: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while True:
            try:
                conn = await AsyncConnection.connect(
                    self.conninfo,
                    autocommit=True,
                    connect_timeout=max(1, round(self._connect_timeout)),
                )
            except psycopg.OperationalError as exc:
                attempt = await self._backoff(attempt, exc)
                continue
            self._listener = conn
            try:
                async with conn:
                    await conn.execute(f"LISTEN {_quoted(self.channel)}")
                    attempt = 0
                    self.connections += 1
                    self._listening.set()
                    await on_reconnect()
                    async for notify in conn.notifies():
                        self._received(notify.payload)
            except psycopg.OperationalError as exc:
                attempt = await self._backoff(attempt, exc)
            finally:
                self._listener = None

    async def _backoff(self, attempt: int, exc: Exception) -> int:
        delay = RECONNECT.backoff(attempt, jitter=random.random()) + 0.05
        log.warning(
            "PostgreSQL listener on %r lost (%s); reconnecting in %.2fs",
            self.channel,
            str(exc).strip() or type(exc).__name__,
            delay,
        )
        await asyncio.sleep(delay)
        return attempt + 1

    def _received(self, payload: str) -> None:
        if payload.startswith(self._own_prefix):
            return  # this process's own message (a worker's events come back to it)
        try:
            message = json.loads(payload)
        except ValueError:
            log.warning("ignoring a malformed message on %r", self.channel)
            return
        if isinstance(message, dict) and message.get(_ORIGIN) != self.origin:
            self.notifications += 1
            self._queue.put_nowait(message)

    async def _deliver(self, on_message: Callable[[Message], None]) -> None:
        while True:
            message = await self._queue.get()
            if _REF in message:
                found = await self._fetch(message[_REF])
                if found is None:
                    continue
                message = found
            message.pop(_ORIGIN, None)
            try:
                on_message(message)
            except Exception:
                log.exception("handling a message from another process failed")

    async def _fetch(self, ref: object) -> Message | None:
        try:
            async with self._connection() as conn:
                cur = await conn.execute("SELECT body FROM event_payloads WHERE id = %s", [ref])
                row = await cur.fetchone()
        except (psycopg.Error, StoreError) as exc:
            log.warning("cannot read stored message %s: %s", ref, exc)
            return None
        if row is None:
            log.warning("stored message %s is gone (older than %ss)", ref, PAYLOAD_TTL_S)
            return None
        found = json.loads(row["body"])
        return found if isinstance(found, dict) else None


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'
