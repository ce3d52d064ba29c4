"""The SQLite store's connections: the writer thread that owns the main connection, the
event loop's reader and writer connections for short reads and writes, WAL checkpoints, the
schema scripts, and rows to and from plain column values. ``sqlite.SQLiteStore`` writes its
queries on top of ``SQLiteDatabase``; a driver error leaves here as ``errors.StoreError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StoreError
from ._codec import json_text, migrations, pending, ts_from_text, ts_to_text
from .base import driver_failure

logger = logging.getLogger("deepexec_server.store.sqlite")

T = TypeVar("T")

#: SQLite added ``UPDATE ... RETURNING`` in 3.35.0.
RETURNING_SUPPORTED = sqlite3.sqlite_version_info >= (3, 35, 0)
#: Bound on ``?`` placeholders per statement on old SQLite builds (their limit is 999).
_CHUNK = 500

_TIMESTAMPS = frozenset(
    {
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "cancel_requested_at",
        "lease_expires_at",
        "revoked_at",
        "result_purged_at",
        # webhooks
        "previous_until",
        "disabled_at",
        "next_attempt_at",
        "delivered_at",
    }
)
_JSON = frozenset(
    {"data", "result", "error", "tags", "events", "max_running_by_type", "code_limits"}
)


def to_db(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Plain column values (``_codec.job_to_fields``) as SQLite keeps them: timestamps as
    sortable text, JSON values as text."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            out[name] = None
        elif name in _TIMESTAMPS:
            out[name] = ts_to_text(value)
        elif name in _JSON:
            out[name] = json_text(value)
        else:
            out[name] = value
    return out


_DECODERS: dict[str, Callable[[Any], Any]] = {
    **dict.fromkeys(_TIMESTAMPS, ts_from_text),
    **dict.fromkeys(_JSON, json.loads),
}


def from_db(row: sqlite3.Row) -> dict[str, Any]:
    """The inverse of ``to_db`` for a fetched row."""
    out: dict[str, Any] = {}
    # By position: a lookup by name in a ``sqlite3.Row`` compares every column name.
    for name, value in zip(row.keys(), row, strict=True):
        decode = _DECODERS.get(name)
        out[name] = value if value is None or decode is None else decode(value)
    return out


def split_statements(script: str) -> Iterator[str]:
    """The complete SQL statements of a script, in order (``executescript`` would commit the
    migration's transaction first)."""
    buf: list[str] = []
    for line in script.splitlines(keepends=True):
        buf.append(line)
        text = "".join(buf)
        if sqlite3.complete_statement(text):
            yield text
            buf.clear()


def fetch_one(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
    return row


#: How long a loop-thread read waits for a lock before it hands over to the writer thread.
READER_BUSY_TIMEOUT_MS = 20
#: A write carrying more than this many bytes goes to the writer thread, loop or not:
#: copying megabytes (a 2 MB submit, a 16 MB result) would hold the loop for milliseconds.
LOOP_WRITE_MAX_BYTES = 64 * 1024
#: WAL pages the loop's connection writes between two checkpoints (an estimate: a few pages
#: per row plus one per 4 KiB of its text); SQLite's own autocheckpoint default is 1000.
CHECKPOINT_PAGES = 1000


def _read_only_connection(path: Path) -> sqlite3.Connection:
    """The reader connection (see ``SQLiteStore._reader``): used from the event loop's thread,
    so made without the same-thread check, read-only, and quick to give up on a lock."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {READER_BUSY_TIMEOUT_MS:d}")
        conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _loop_writer_connection(path: Path) -> sqlite3.Connection:
    """The writer used on the event loop's thread (see ``SQLiteStore._write``): never waits
    for a lock and never checkpoints, so a statement on it cannot stall the loop."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    except BaseException:
        conn.close()
        raise
    return conn


def size_of(values: Sequence[Any]) -> int:
    """Bytes of text and blobs among a statement's parameters."""
    return sum(len(v) for v in values if isinstance(v, str | bytes))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLite gave up on a lock another connection holds (SQLITE_BUSY / SQLITE_LOCKED)."""
    text = str(exc)
    return "locked" in text or "busy" in text


def marks(n: int) -> str:
    return ", ".join("?" * n)


def chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class SQLiteDatabase:
    """One SQLite file (WAL mode) and the connections to it; the base of ``SQLiteStore``."""

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 10.0, returning: bool | None = None
    ) -> None:
        """``busy_timeout``: seconds to wait for another process's write lock. ``returning``:
        force (True) or avoid (False) ``UPDATE ... RETURNING``; default: use it when the linked
        SQLite has it. False exercises the path for SQLite < 3.35."""
        if returning and not RETURNING_SUPPORTED:
            raise ValueError(f"SQLite {sqlite3.sqlite_version} has no RETURNING (needs 3.35)")
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._returning = RETURNING_SUPPORTED if returning is None else returning
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        #: A second, read-only connection used on the event loop's thread for one-row reads
        #: (``get_job``): in WAL mode a reader never waits for the writer, and a point read
        #: (≈20 µs) costs far less than the hop to the writer thread and back (≈100 µs).
        self._reader: sqlite3.Connection | None = None
        #: A third connection, for the short writes of every job (insert, claim, progress,
        #: finish) on the loop's thread: the hop to the writer thread and back costs more
        #: than such a write (≈50 µs in WAL mode with synchronous=NORMAL). It never waits:
        #: when another connection holds the write lock, the write goes to the writer thread,
        #: which does. It never checkpoints either: after about ``CHECKPOINT_PAGES`` pages of
        #: its writes the writer thread does, and writes go there until it is done.
        self._loop_writer: sqlite3.Connection | None = None
        self._loop_pages = 0
        self._checkpoint: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    # --- plumbing -------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        executor = self._executor
        if executor is None:
            raise RuntimeError(f"{self!r} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, self._call, fn)
        except sqlite3.Error as exc:
            raise driver_failure(self, exc) from exc

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError(f"{self!r} is not open")
        return fn(self._conn)

    def _connect(self) -> None:
        path = self.path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            # Pre-create user-only: SQLite gives its -wal and -shm files the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(path, timeout=self._busy_timeout, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000):d}")
            mode = _enable_wal(conn, time.monotonic() + self._busy_timeout)
            if str(mode).lower() != "wal":
                logger.warning("SQLite at %s runs in %s journal mode, not WAL", path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn)
            wal = str(mode).lower() == "wal"
            reader = _read_only_connection(path) if wal else None
            loop_writer = _loop_writer_connection(path) if wal else None
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._reader = reader
        self._loop_writer = loop_writer

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        reader, self._reader = self._reader, None
        loop_writer, self._loop_writer = self._loop_writer, None
        for c in (reader, loop_writer, conn):  # the last to close checkpoints the WAL
            if c is not None:
                c.close()

    async def _write(self, fn: Callable[[sqlite3.Connection], T], size: int = 0) -> T:
        """Run a short write of ``size`` bytes of data on the loop's thread; on the writer
        thread when it is larger than ``LOOP_WRITE_MAX_BYTES``, when a checkpoint runs, or
        when another connection holds the write lock. ``fn`` must leave nothing behind when
        SQLite refuses it for a lock (one statement, or its own ``BEGIN IMMEDIATE``)."""
        conn = self._loop_writer
        if (
            conn is None
            or size > LOOP_WRITE_MAX_BYTES
            or (self._checkpoint is not None and not self._checkpoint.done())
        ):
            # While the writer thread checkpoints, writes queue behind it there: a checkpoint
            # that writes keep overtaking never catches up, and the WAL would only grow.
            return await self._run(fn)
        try:
            result = fn(conn)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise driver_failure(self, exc) from exc
            return await self._run(fn)
        except sqlite3.Error as exc:
            raise driver_failure(self, exc) from exc
        self._loop_pages += 4 + size // 4096
        if self._loop_pages >= CHECKPOINT_PAGES:
            self._loop_pages = 0
            self._checkpoint = asyncio.get_running_loop().create_task(self._run_checkpoint())
        return result

    async def _run_checkpoint(self) -> None:
        try:
            # Its row read to the end: a statement left unfinished on the writer's connection
            # would make that connection's next COMMIT fail ("SQL statements in progress").
            await self._run(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        except Exception:  # the next one will try again; a failed one loses nothing
            logger.warning("SQLite checkpoint of %s failed", self.path, exc_info=True)

    async def _read_one(self, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
        """One short read: on the loop's thread through the reader connection, or through the
        writer thread when there is none or SQLite is busy (a checkpoint, a recovery)."""
        reader = self._reader
        if reader is not None:
            try:
                row: sqlite3.Row | None = reader.execute(sql, params).fetchone()
                return row
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise driver_failure(self, exc) from exc
            except sqlite3.Error as exc:
                raise driver_failure(self, exc) from exc
        return await self._run(lambda conn: fetch_one(conn, sql, params))

    def _update(
        self,
        conn: sqlite3.Connection,
        table: str,
        set_sql: str,
        set_params: Sequence[Any],
        where_sql: str,
        where_params: Sequence[Any],
    ) -> list[sqlite3.Row]:
        """One conditional ``UPDATE``; returns the rows it changed, as they are after it."""
        if self._returning:
            return conn.execute(
                f"UPDATE {table} SET {set_sql} WHERE {where_sql} RETURNING *",
                [*set_params, *where_params],
            ).fetchall()
        # Without RETURNING: the same update, with the select of its targets before and of the
        # rows after, inside one write transaction so no other process slips in between.
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [
                r[0]
                for r in conn.execute(f"SELECT id FROM {table} WHERE {where_sql}", where_params)
            ]
            rows: list[sqlite3.Row] = []
            for chunk in chunks(ids):
                places = marks(len(chunk))
                conn.execute(
                    f"UPDATE {table} SET {set_sql} WHERE id IN ({places})", [*set_params, *chunk]
                )
                rows += conn.execute(f"SELECT * FROM {table} WHERE id IN ({places})", chunk)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return rows

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file (and its directory, user-only) if needed, connect, and bring the
        schema up to date. Idempotent."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepexec-sqlite")
        self._executor = executor
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except BaseException as exc:
            self._executor = None
            executor.shutdown(wait=True)
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open the SQLite database {self.path}: {exc}") from exc
            raise

    async def close(self) -> None:
        """Close the connection and stop the thread. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        checkpoint, self._checkpoint = self._checkpoint, None
        if checkpoint is not None:
            await asyncio.gather(checkpoint, return_exceptions=True)
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._disconnect)
        except sqlite3.Error as exc:
            raise driver_failure(self, exc) from exc
        finally:
            executor.shutdown(wait=True)

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())


def _enable_wal(conn: sqlite3.Connection, deadline: float) -> str:
    """Switch to WAL and return the journal mode now in force. Switching a new file needs a
    moment alone with it, and SQLite answers "busy" at once instead of waiting, so processes
    opening a new file together retry until the busy timeout."""
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _migrate(conn: sqlite3.Connection) -> None:
    """Apply the schema scripts this file lacks, each with its version, in one transaction.
    ``BEGIN IMMEDIATE`` makes two processes opening a new file together take turns."""
    scripts = migrations("sqlite")
    if not pending(scripts, conn.execute("PRAGMA user_version").fetchone()[0]):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for migration in pending(scripts, conn.execute("PRAGMA user_version").fetchone()[0]):
            for statement in split_statements(migration.script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {migration.version:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
