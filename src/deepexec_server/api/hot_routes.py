"""``HotRoutes``: the two routes clients send most, answered as plain ASGI ahead of FastAPI.

Answered here (``HOT_ROUTES``):

- ``POST /v1/jobs`` (submit), and
- ``GET /v1/jobs/{job_id}`` with no query or a plain ``wait=<seconds>`` (status read).

Every job is a submit and a long-poll, and polling loops read status again and again. Through
FastAPI, routing, dependency solving and the response class cost more than the work itself
(benchmarks 4 and 5). Here a request costs its auth check, the engine call and pydantic's
parsing or JSON (the operations in ``jobs.py``, shared with the FastAPI routes).

The FastAPI routes stay: they document the operations in OpenAPI. A status read this path does
not recognise (another query parameter, a ``wait`` that is not a plain number in range) is
passed on to FastAPI, so its validation errors keep their one format.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable

from deepexec_sdk.types import IDEMPOTENCY_HEADER

from ..errors import ServiceError
from ..web.asgi import (
    ASGIApp,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    scope_request_id,
    scope_tenant,
    send_json,
)
from ..web.envelope import error_answer, internal_error
from ..web.services import Services
from .jobs import check_json_media, parse_submission, status_body, submit_body

logger = logging.getLogger("deepexec_server.api")

#: The routes ``HotRoutes`` answers, as (method, path) of the FastAPI routes they stand for.
HOT_ROUTES = (("POST", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"))

_JOBS = "/v1/jobs"
_JOB_PREFIX = "/v1/jobs/"
_WAIT = re.compile(rb"wait=([0-9]{1,9}(?:\.[0-9]{0,9})?)")
_AUTHORIZATION = b"authorization"
_CONTENT_TYPE = b"content-type"
_IDEMPOTENCY_KEY = IDEMPOTENCY_HEADER.lower().encode()


def _parse_wait(query: bytes) -> float | None:
    """``wait`` from a query string this path takes: empty, or ``wait=<number>`` within the
    route's 0-60 bounds. None: anything else, for FastAPI to validate."""
    if not query:
        return 0.0
    m = _WAIT.fullmatch(query)
    if m is None:
        return None
    value = float(m.group(1))
    return value if value <= 60 else None


class HotRoutes:
    """ASGI middleware answering ``HOT_ROUTES`` itself (see the module doc); every other
    request goes to ``app``. Sits inside the middlewares of ``middleware/``, which have already
    given the request its id, checked the protocol header, capped the body, refused NUL
    characters in the URL and authenticated ``/v1`` requests."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if method == "GET" and path.startswith(_JOB_PREFIX):
            job_id = path[len(_JOB_PREFIX) :]
            wait = _parse_wait(scope.get("query_string", b""))
            if job_id and "/" not in job_id and wait is not None:
                await self._answer(scope, send, self._status(scope, job_id, wait))
                return
        elif method == "POST" and path == _JOBS:
            await self._answer(scope, send, self._submit(scope, receive))
            return
        await self.app(scope, receive, send)

    async def _tenant(self, scope: Scope) -> str:
        known = scope_tenant(scope)
        if known is not None:
            return known
        return await self.services.auth.tenant_for(header(scope, _AUTHORIZATION))

    async def _status(self, scope: Scope, job_id: str, wait: float) -> tuple[int, bytes]:
        tenant_id = await self._tenant(scope)
        return 200, await status_body(self.services, tenant_id, job_id, wait)

    async def _submit(self, scope: Scope, receive: Receive) -> tuple[int, bytes] | None:
        check_json_media(header(scope, _CONTENT_TYPE))
        tenant_id = await self._tenant(scope)
        body = await read_body(receive)
        if body is None:
            return None
        req = parse_submission(body)
        return await submit_body(self.services, tenant_id, req, header(scope, _IDEMPOTENCY_KEY))

    @staticmethod
    async def _answer(scope: Scope, send: Send, work: Awaitable[tuple[int, bytes] | None]) -> None:
        """Run ``work`` and send its JSON answer, or the error envelope it raised."""
        headers: Headers = ()
        try:
            answer = await work
        except Exception as exc:
            rid = scope_request_id(scope)
            if not isinstance(exc, ServiceError):
                logger.exception("request %s failed", rid)
                exc = internal_error(rid)
            status, body, headers = error_answer(exc, rid)
            answer = status, body
        if answer is None:  # the client left
            return
        await send_json(send, *answer, headers)
