"""Stamps ``DeepExec-Protocol`` on every answer and refuses a request that speaks another
major version of the protocol."""

from __future__ import annotations

from collections.abc import Awaitable

from deepexec_sdk.types import PROTOCOL_HEADER, PROTOCOL_VERSION

from ...errors import BadRequest
from ...web.asgi import ASGIApp, Message, Receive, Scope, Send, scope_request_id
from ...web.envelope import send_error

_PROTOCOL = PROTOCOL_HEADER.lower().encode()
_VERSION = PROTOCOL_VERSION.encode()
_STAMP = (_PROTOCOL, _VERSION)


class ProtocolVersionMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self.app(scope, receive, send)

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), _STAMP]
            await send(message)

        proto = None
        for key, value in scope.get("headers") or ():
            if key == _PROTOCOL:
                proto = value
        if proto is not None and proto.split(b".")[0].strip() != _VERSION:
            refusal = BadRequest(
                f"this server speaks {PROTOCOL_HEADER} {PROTOCOL_VERSION}, the client "
                f"sent {proto.decode(errors='replace')!r}: upgrade the older side",
                type="unsupported_protocol",
            )
            return send_error(stamped, refusal, scope_request_id(scope))
        return self.app(scope, receive, stamped)
