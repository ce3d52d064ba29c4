"""Refuses a URL that carries a NUL character, raw or percent-encoded, before any route sees
it (paths and queries reach file names, SQL and logs)."""

from __future__ import annotations

from collections.abc import Awaitable

from ...errors import BadRequest
from ...web.asgi import ASGIApp, Receive, Scope, Send, scope_request_id
from ...web.envelope import send_error


class NulUrlMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http":
            raw_path = scope.get("raw_path") or scope.get("path", "").encode()
            query = scope.get("query_string", b"")
            if b"%00" in raw_path or b"\x00" in raw_path or b"%00" in query:
                refusal = BadRequest("the URL must not contain a NUL character (%00)")
                return send_error(send, refusal, scope_request_id(scope))
        return self.app(scope, receive, send)
