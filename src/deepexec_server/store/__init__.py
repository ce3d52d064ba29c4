"""The store: where jobs and API keys live, and the queue. ``open_store(url)`` picks the backend;
``Store`` (in ``base``) is the contract both backends honour. A backend raises the driver's
errors as ``errors.StoreError``; list pages are continued with the cursors of ``cursors``."""

from __future__ import annotations

from pathlib import Path

from .base import Store
from .cursors import decode_cursor, encode_cursor

__all__ = ["Store", "decode_cursor", "encode_cursor", "open_store", "sqlite_path"]

_ACCEPTED = (
    "sqlite:///path/to/file.db (sqlite:////abs/path.db) or postgresql://... (postgres://...)"
)


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:///`` URL names: everything after the third slash, so
    ``sqlite:////var/lib/x.db`` is absolute and ``sqlite:///x.db`` is relative."""
    path = url.removeprefix("sqlite:///").partition("?")[0]
    if not url.startswith("sqlite:///") or not path:
        raise ValueError(f"not a SQLite database URL: {url!r}; expected {_ACCEPTED}")
    if path == ":memory:":
        raise ValueError("an in-memory SQLite database is not supported: the store must persist")
    return Path(path)


def open_store(url: str) -> Store:
    """The store a database URL names, not yet opened (call ``await store.open()``).

    Accepts ``sqlite:///<path>`` and ``postgresql://`` / ``postgres://`` URLs; anything else is a
    ``ValueError`` naming the accepted forms. PostgreSQL support is imported only when used.
    """
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    scheme = url.partition(":")[0] if ":" in url else url
    raise ValueError(f"unsupported database URL scheme {scheme!r}; expected {_ACCEPTED}")
