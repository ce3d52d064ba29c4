"""Authenticates every ``/v1`` request from its headers alone, before anything reads the body:
a client without a key cannot make the server read, or wait for, a body (FastAPI would read
and parse a body before solving the route's key dependency)."""

from __future__ import annotations

from collections.abc import Awaitable

from ...auth import Authenticator
from ...errors import ServiceError
from ...web.asgi import TENANT_STATE_KEY, ASGIApp, Receive, Scope, Send, header, scope_request_id
from ...web.envelope import send_error


class ApiKeyMiddleware:
    """Leaves the key's tenant on the scope (``web.asgi.scope_tenant``), or answers the
    ``ServiceError`` the authenticator raised (a missing or unknown key)."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/v1/") or path == "/v1":
                return self._authenticated(scope, receive, send)
        return self.app(scope, receive, send)

    async def _authenticated(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            tenant = await self.auth.tenant_for(header(scope, b"authorization"))
        except ServiceError as exc:
            await send_error(send, exc, scope_request_id(scope))
            return
        scope.setdefault("state", {})[TENANT_STATE_KEY] = tenant
        await self.app(scope, receive, send)
