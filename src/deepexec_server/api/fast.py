"""The two hottest routes, ``POST /v1/jobs`` and ``GET /v1/jobs/{job_id}``, answered as plain
ASGI ahead of FastAPI.

Submitting and reading a job's status are what clients send most: every job is a submit and a
long-poll, and polling loops read status again and again. Through FastAPI, routing, dependency
solving and the response class cost more than the work itself (benchmarks 4 and 5). Here a
request costs its auth check, the engine call and pydantic's parsing or JSON. A terminal job,
which never changes again, costs no store read either: its bytes are kept in ``TerminalCache``.

The FastAPI routes stay: they document the operations in OpenAPI and share the functions below.
A status read this path does not recognise (another query parameter, a ``wait`` that is not a
plain number in range) is passed on to FastAPI, so its validation errors keep their one format.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from pydantic import TypeAdapter, ValidationError

from deepexec_sdk.types import IDEMPOTENCY_HEADER, JobSubmitRequest, MCPJobStatusResponse

from ..errors import BadRequest, ServiceError, UnsupportedMediaType
from ..views import job_status, job_summary
from .errors import internal_error, validation_details, validation_failure
from .middleware import (
    TENANT_STATE_KEY,
    ASGIApp,
    Receive,
    Scope,
    Send,
    error_body,
    scope_request_id,
    scope_tenant,
    send_json,
)

if TYPE_CHECKING:
    from .services import Services

logger = logging.getLogger("deepexec_server.api")

_JOBS = "/v1/jobs"
_JOB_PREFIX = "/v1/jobs/"
_WAIT = re.compile(rb"wait=([0-9]{1,9}(?:\.[0-9]{0,9})?)")
_AUTHORIZATION = b"authorization"
_CONTENT_TYPE = b"content-type"
_IDEMPOTENCY_KEY = IDEMPOTENCY_HEADER.lower().encode()

#: Serialises straight to bytes: a status can carry megabytes of output, and
#: ``model_dump_json().encode()`` would hold them twice more.
_STATUS_JSON = TypeAdapter(MCPJobStatusResponse)

#: Bytes of terminal statuses kept, and the largest one worth keeping.
CACHE_BYTES = 16 * 1024 * 1024
CACHE_ITEM_BYTES = 256 * 1024
#: Seconds a kept status is served before the store is read again: the bound on how long
#: a result purged by another process sharing the store may still be served from here.
CACHE_MAX_AGE_SECONDS = 60.0


class TerminalCache:
    """The JSON of terminal jobs by id, least recently used out first, within a byte budget.

    Sound because a terminal job changes once at most: its status, result and error are
    written by the transition that ended it, and later only its result may be purged. A purge
    by this process's engine drops the job from here (``discard``); one by another process
    sharing the store is seen once the entry is ``max_age`` seconds old. Each entry keeps its
    tenant, so a hit for another tenant is still a miss (and a 404 from the store).
    """

    def __init__(
        self,
        max_bytes: int = CACHE_BYTES,
        max_item_bytes: int = CACHE_ITEM_BYTES,
        max_age: float = CACHE_MAX_AGE_SECONDS,
    ):
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self.max_age = max_age
        self.size = 0
        #: Per job id: its tenant, its body, and until when (monotonic) it may be served.
        self._items: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, tenant_id: str, job_id: str) -> bytes | None:
        item = self._items.get(job_id)
        if item is None or item[0] != tenant_id:
            return None
        if item[2] < time.monotonic():
            self._drop(job_id)
            return None
        self._items.move_to_end(job_id)
        return item[1]

    def discard(self, job_ids: Iterable[str]) -> None:
        """Forget these jobs (their results were purged)."""
        for job_id in job_ids:
            self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        item = self._items.pop(job_id, None)
        if item is not None:
            self.size -= len(item[1])

    def put(self, tenant_id: str, job_id: str, body: bytes) -> None:
        """Keep ``body`` as the status of ``tenant_id``'s terminal job ``job_id``, unless it
        is too big. Only ever call it for a terminal job."""
        if len(body) > self.max_item_bytes or job_id in self._items:
            return
        self._items[job_id] = (tenant_id, body, time.monotonic() + self.max_age)
        self.size += len(body)
        while self.size > self.max_bytes:
            _, (_, old, _) = self._items.popitem(last=False)
            self.size -= len(old)


# --- the operations, shared with the FastAPI routes ---------------------------------------------


async def status_body(svc: Services, tenant_id: str, job_id: str, wait: float) -> bytes:
    """The JSON a status read answers: the job now, or once terminal when ``wait`` > 0 (up to
    that many seconds, capped by the server's ``max_wait_seconds``). Raises ``NotFound``."""
    cache = svc.status_cache
    cached = cache.get(tenant_id, job_id)
    if cached is not None:
        return cached
    if wait > 0:
        job = await svc.engine.wait(tenant_id, job_id, min(wait, svc.settings.max_wait_seconds))
        body, terminal = _STATUS_JSON.dump_json(job_status(job)), job.is_terminal
    else:
        body, terminal = await svc.engine.status_json(tenant_id, job_id)
    if terminal:
        cache.put(tenant_id, job_id, body)
    return body


def check_json_media(content_type: str | None) -> None:
    """Raise ``UnsupportedMediaType`` unless a body's media type is JSON (or not given)."""
    if content_type is None:
        return
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"send the body as application/json (got {media or 'no media type'})"
        )


async def submit_body(
    svc: Services, tenant_id: str, req: JobSubmitRequest, idempotency_key: str | None
) -> tuple[int, bytes]:
    """Submit a job: 201 and its summary, or 200 and the first job for a replayed key."""
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= 200
        and idempotency_key.isprintable()
        and idempotency_key.isascii()
    ):
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be 1-200 printable ASCII characters")
    job, created = await svc.engine.submit(tenant_id, req, idempotency_key)
    return 201 if created else 200, job_summary(job).model_dump_json().encode()


def parse_submission(body: bytes) -> JobSubmitRequest:
    """The body of a submit, or the 400/422 ``ServiceError`` FastAPI's validation would give."""
    if not body.strip():
        details = [{"loc": ["body"], "msg": "Field required", "type": "missing"}]
        raise validation_failure(details)
    try:
        return JobSubmitRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_failure(validation_details(exc.errors(), ("body",))) from None


# --- the ASGI side ------------------------------------------------------------------------------


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


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None if the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class HotRoutes:
    """ASGI middleware answering ``POST /v1/jobs`` and ``GET /v1/jobs/{job_id}`` itself (see
    the module doc); every other request goes to ``app``. Sits inside ``ProtocolMiddleware``,
    which has already given the request its id, checked the protocol header, capped the body
    and refused NUL characters in the URL."""

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

    async def _status(self, scope: Scope, job_id: str, wait: float) -> tuple[int, bytes]:
        svc = self.services
        tenant_id = scope_tenant(scope) or await svc.auth.tenant_for(_header(scope, _AUTHORIZATION))
        return 200, await status_body(svc, tenant_id, job_id, wait)

    async def _submit(self, scope: Scope, receive: Receive) -> tuple[int, bytes] | None:
        svc = self.services
        check_json_media(_header(scope, _CONTENT_TYPE))
        tenant_id = scope_tenant(scope) or await svc.auth.tenant_for(_header(scope, _AUTHORIZATION))
        body = await _read_body(receive)
        if body is None:
            return None
        req = parse_submission(body)
        return await submit_body(svc, tenant_id, req, _header(scope, _IDEMPOTENCY_KEY))

    @staticmethod
    async def _answer(scope: Scope, send: Send, work: Awaitable[tuple[int, bytes] | None]) -> None:
        """Run ``work`` and send its JSON answer, or the error envelope it raised."""
        headers: tuple[tuple[bytes, bytes], ...] = ()
        try:
            answer = await work
        except Exception as exc:
            rid = scope_request_id(scope)
            if not isinstance(exc, ServiceError):
                logger.exception("request %s failed", rid)
                exc = internal_error(rid)
            answer = exc.status_code, error_body(exc.type, exc.message, rid, exc.details)
            headers = retry_after_header(exc)
        if answer is None:  # the client left
            return
        await send_json(send, *answer, headers)


def retry_after_header(exc: ServiceError) -> tuple[tuple[bytes, bytes], ...]:
    """``Retry-After`` (whole seconds, at least 1) when the error asks the client to wait."""
    if exc.retry_after is None:
        return ()
    return ((b"retry-after", str(max(1, math.ceil(exc.retry_after))).encode()),)


def api_authenticator(services: Services) -> Callable[[Scope], Awaitable[None]]:
    """``ProtocolMiddleware``'s ``authenticate`` for the REST API: every ``/v1`` request must
    carry a valid key, checked from its headers alone (FastAPI would read and parse a body
    before solving the route's key dependency)."""

    async def authenticate(scope: Scope) -> None:
        path: str = scope["path"]
        if path.startswith("/v1/") or path == "/v1":
            tenant = await services.auth.tenant_for(_header(scope, _AUTHORIZATION))
            scope.setdefault("state", {})[TENANT_STATE_KEY] = tenant

    return authenticate


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), as text."""
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None
