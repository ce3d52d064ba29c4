"""The one builder of the JSON error envelope every door answers a failure with,
``{"error": {type, message, details, request_id}}`` (docs/api.md), and what goes with it."""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import ServiceError
from .asgi import Headers, Send, send_json


def error_body(type_: str, message: str, request_id: str, details: Any = None) -> bytes:
    """The envelope's bytes."""
    return json.dumps(
        {
            "error": {
                "type": type_,
                "message": message,
                "details": details,
                "request_id": request_id,
            }
        }
    ).encode()


def internal_error(request_id: str) -> ServiceError:
    """What a request that failed on a bug answers (500 ``internal_error``); the log has the
    traceback under ``request_id``."""
    return ServiceError(
        f"internal error; the server log has the details under request {request_id}"
    )


def retry_after_value(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def retry_headers(exc: ServiceError) -> Headers:
    """What the error tells a client about retrying: ``Retry-After`` (whole seconds, at least
    1) when it should wait, ``X-Should-Retry: false`` when retrying cannot help."""
    if exc.final:
        return ((b"x-should-retry", b"false"),)
    if exc.retry_after is None:
        return ()
    return ((b"retry-after", retry_after_value(exc.retry_after).encode()),)


def error_answer(exc: ServiceError, request_id: str) -> tuple[int, bytes, Headers]:
    """Status, envelope and headers (``retry_headers``) that ``exc`` answers."""
    body = error_body(exc.type, exc.message, request_id, exc.details)
    return exc.status_code, body, retry_headers(exc)


async def send_error(
    send: Send, exc: ServiceError, request_id: str, extra_headers: Headers = ()
) -> None:
    """Answer ``exc`` as the envelope, from plain ASGI."""
    status, body, headers = error_answer(exc, request_id)
    await send_json(send, status, body, headers + extra_headers)
