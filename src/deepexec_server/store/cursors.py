"""List-page cursors: an opaque token for "after this job" in the order lists use
(``created_at`` DESC, then ``id`` DESC), for the service to hand out and read back."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from ._codec import as_utc

_INVALID_CURSOR = "invalid cursor"


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """An opaque page cursor for "after the job ``(created_at, job_id)``" (urlsafe base64 of
    JSON, so it travels in a query string untouched)."""
    payload = json.dumps([as_utc(created_at).isoformat(), job_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, job_id)`` inside a cursor from ``encode_cursor``.

    Raises ``ValueError("invalid cursor")`` for anything else, whatever is wrong with it: not
    base64, not JSON, not a ``[timestamp, id]`` pair, a timestamp without a zone or one that
    leaves the representable range once moved to UTC (``0001-01-01T00:00+01:00``), an id that
    is not a short printable ASCII string (the databases refuse NUL and lone surrogates).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
        if not (isinstance(decoded, list) and len(decoded) == 2):
            raise ValueError(_INVALID_CURSOR)
        created_at_text, job_id = decoded
        if not isinstance(created_at_text, str) or not _valid_cursor_id(job_id):
            raise ValueError(_INVALID_CURSOR)
        created_at = datetime.fromisoformat(created_at_text)
        if created_at.utcoffset() is None:
            raise ValueError(_INVALID_CURSOR)
        return created_at.astimezone(UTC), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError, RecursionError):
        raise ValueError(_INVALID_CURSOR) from None


def _valid_cursor_id(job_id: object) -> bool:
    return (
        isinstance(job_id, str)
        and 0 < len(job_id) <= 64
        and job_id.isascii()
        and job_id.isprintable()
    )
