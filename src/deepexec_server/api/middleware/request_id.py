"""Gives every request an id, and stamps it on the answer as ``X-Request-Id``."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable

from deepexec_sdk.types import REQUEST_ID_HEADER

from ...web.asgi import REQUEST_ID_STATE_KEY, ASGIApp, Message, Receive, Scope, Send

_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()


def _valid_request_id(raw: bytes) -> bool:
    return 0 < len(raw) <= 128 and all(33 <= b < 127 for b in raw)


class RequestIdMiddleware:
    """The request's id is the client's ``X-Request-Id`` if sane, else a new one; it is left
    on the scope (``web.asgi.scope_request_id``) for logs and error envelopes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Ids are this server's random prefix and a counter: unique, and unlike a fresh random
        # id each, no system call per request. They name requests in logs; they guard nothing.
        self._id_prefix = "req_" + secrets.token_hex(4)
        self._ids = itertools.count(1)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        raw_id = b""
        for key, value in scope.get("headers") or ():
            if key == _REQUEST_ID:
                raw_id = value
        request_id = (
            raw_id.decode()
            if _valid_request_id(raw_id)
            else f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFF:08x}"
        )
        scope.setdefault("state", {})[REQUEST_ID_STATE_KEY] = request_id
        stamp = (_REQUEST_ID, request_id.encode())

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), stamp]
            await send(message)

        return self.app(scope, receive, stamped)
