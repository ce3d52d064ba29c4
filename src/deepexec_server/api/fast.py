"""The hottest route, ``GET /v1/jobs/{job_id}``, answered as plain ASGI ahead of FastAPI.

A status read is what clients send most: ``get_mcp_job_status``, polling loops, and the SDK's
long-poll after every submit. Through FastAPI, routing, dependency solving and the response
class cost more than the read itself (bench 4). Here a request costs its auth check, one store
read and pydantic's JSON, and a terminal job, which never changes again, costs none of the last
two: its bytes are kept in ``TerminalCache``.

The FastAPI route stays: it documents the operation in OpenAPI, and any request this path does
not recognise (another query parameter, a ``wait`` that is not a plain number in range) is
passed on to it, so validation errors keep their one format.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import TYPE_CHECKING

from ..errors import ServiceError
from ..views import job_status
from .middleware import ASGIApp, Receive, Scope, Send, error_body

if TYPE_CHECKING:
    from ..domain import Job
    from .services import Services

logger = logging.getLogger("deepexec_server.api")

_PREFIX = "/v1/jobs/"
_WAIT = re.compile(rb"wait=([0-9]{1,9}(?:\.[0-9]{0,9})?)")
_JSON_HEADERS = (b"content-type", b"application/json")
_AUTHORIZATION = b"authorization"

#: Bytes of terminal statuses kept, and the largest one worth keeping.
CACHE_BYTES = 16 * 1024 * 1024
CACHE_ITEM_BYTES = 256 * 1024


class TerminalCache:
    """The JSON of terminal jobs by id, least recently used out first, within a byte budget.

    Sound because a terminal job never changes: its status, result and error are written once,
    by the transition that ended it. Each entry keeps its tenant, so a hit for another tenant
    is still a miss (and a 404 from the store).
    """

    def __init__(self, max_bytes: int = CACHE_BYTES, max_item_bytes: int = CACHE_ITEM_BYTES):
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self.size = 0
        self._items: OrderedDict[str, tuple[str, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, tenant_id: str, job_id: str) -> bytes | None:
        item = self._items.get(job_id)
        if item is None or item[0] != tenant_id:
            return None
        self._items.move_to_end(job_id)
        return item[1]

    def put(self, job: Job, body: bytes) -> None:
        """Keep ``body`` as ``job``'s status if the job is terminal and the body not too big."""
        if not job.is_terminal or len(body) > self.max_item_bytes or job.id in self._items:
            return
        self._items[job.id] = (job.tenant_id, body)
        self.size += len(body)
        while self.size > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self.size -= len(old)


async def status_body(svc: Services, tenant_id: str, job_id: str, wait: float) -> bytes:
    """The JSON a status read answers: the job now, or once terminal when ``wait`` > 0 (up to
    that many seconds, capped by the server's ``max_wait_seconds``). Raises ``NotFound``."""
    cache = svc.status_cache
    cached = cache.get(tenant_id, job_id)
    if cached is not None:
        return cached
    if wait > 0:
        job = await svc.engine.wait(tenant_id, job_id, min(wait, svc.settings.max_wait_seconds))
    else:
        job = await svc.engine.get(tenant_id, job_id)
    body = job_status(job).model_dump_json().encode()
    cache.put(job, body)
    return body


def _request_id(scope: Scope) -> str:
    return str(scope.get("state", {}).get("request_id", ""))


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


class FastStatusRoute:
    """ASGI middleware answering ``GET /v1/jobs/{job_id}`` itself (see the module doc); every
    other request goes to ``app``. Sits inside ``ProtocolMiddleware``, which has already given
    the request its id, checked the protocol header and refused NUL characters."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        job_id = path[len(_PREFIX) :] if path.startswith(_PREFIX) else ""
        wait = _parse_wait(scope.get("query_string", b""))
        if not job_id or "/" in job_id or wait is None:
            await self.app(scope, receive, send)
            return
        svc = self.services
        authorization = None
        for name, value in scope["headers"]:
            if name == _AUTHORIZATION:
                authorization = value.decode("latin-1")
                break
        try:
            tenant_id = await svc.auth.tenant_for(authorization)
            body = await status_body(svc, tenant_id, job_id, wait)
            status = 200
        except ServiceError as exc:
            body = error_body(exc.type, exc.message, _request_id(scope), exc.details)
            status = exc.status_code
        except Exception:
            rid = _request_id(scope)
            logger.exception("request %s failed", rid)
            body = error_body(
                "internal_error",
                f"internal error; the server log has the details under request {rid}",
                rid,
            )
            status = 500
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [_JSON_HEADERS, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
