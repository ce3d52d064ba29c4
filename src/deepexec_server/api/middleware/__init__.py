"""The server's middlewares, small and pure ASGI (no ``BaseHTTPMiddleware``), each doing one
thing and answering its own refusals with the JSON error envelope; ``wrap`` assembles them.

Outermost first, every request meets:

1. ``RequestCounter``: counts each answer by method and status (the metrics).
2. ``RequestIdMiddleware``: gives the request its id, stamps ``X-Request-Id`` on the answer.
3. ``ProtocolVersionMiddleware``: stamps ``DeepExec-Protocol``, refuses another major version.
4. ``NulUrlMiddleware``: refuses a URL with a NUL character.
5. ``ContentLengthLimit``: refuses a declared body over the cap.
6. ``ApiKeyMiddleware``: authenticates ``/v1`` requests from their headers alone, before
   anything reads or waits for a body.
7. ``ChunkedBodyLimit``: reads a body sent without ``Content-Length``, up to the cap.
8. ``HotRoutes`` (``api/hot_routes.py``): answers submits and status reads itself.

and then the FastAPI app (the REST routes, MCP, the dashboard, the compat APIs).

Each ``__call__`` is a plain function that returns the next app's awaitable (or its own
refusal's) when it has nothing to await itself: a layer then costs a function call, not a
coroutine of its own, on every request (benchmark 4). The outermost, ``RequestCounter``, is
a coroutine function: servers tell an ASGI 3 app by it.
"""

from __future__ import annotations

from ...web.asgi import ASGIApp
from ...web.services import Services
from ..batches import BATCH_PATH
from ..hot_routes import HotRoutes
from .api_key import ApiKeyMiddleware
from .body_limit import ChunkedBodyLimit, ContentLengthLimit
from .metrics import RequestCounter
from .protocol import ProtocolVersionMiddleware
from .request_id import RequestIdMiddleware
from .url import NulUrlMiddleware

__all__ = [
    "ApiKeyMiddleware",
    "ChunkedBodyLimit",
    "ContentLengthLimit",
    "NulUrlMiddleware",
    "ProtocolVersionMiddleware",
    "RequestCounter",
    "RequestIdMiddleware",
    "wrap",
]


def wrap(app: ASGIApp, services: Services) -> ASGIApp:
    """``app`` inside the whole stack of the module doc. Outside FastAPI, so that submits and
    status reads skip its whole stack (benchmarks 4 and 5), and every response, a 500
    included, gets the request id and protocol headers."""
    max_body = services.settings.max_body_bytes
    per_path = {BATCH_PATH: services.settings.max_batch_body_bytes}
    app = HotRoutes(app, services=services)
    app = ChunkedBodyLimit(app, max_body_bytes=max_body, per_path=per_path)
    app = ApiKeyMiddleware(app, services.auth)
    app = ContentLengthLimit(app, max_body_bytes=max_body, per_path=per_path)
    app = NulUrlMiddleware(app)
    app = ProtocolVersionMiddleware(app)
    app = RequestIdMiddleware(app)
    return RequestCounter(app, services.metrics.http_requests)
