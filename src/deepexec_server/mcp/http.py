"""MCP over Streamable HTTP at ``/mcp`` inside ``deepexec serve``.

Authenticated with the REST API's keys (``Authorization: Bearer <key>``); the key's tenant is
put on the request scope by ``TenantAuth`` and every tool and task call runs in that tenant.
The endpoint is a route at exactly ``/mcp`` (a ``Mount`` would answer ``POST /mcp`` with a
307 redirect to ``/mcp/``, which many clients do not follow for POST).
"""

from __future__ import annotations

import contextlib
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..api.middleware import error_body, scope_request_id, send_json
from ..api.services import Services
from ..auth import Authenticator
from ..errors import Unauthorized
from ..settings import Settings
from .engine_ops import EngineJobOps
from .server import build_server

MCP_PATH = "/mcp"
#: Where ``TenantAuth`` leaves the caller's tenant in the ASGI scope's ``state``.
TENANT_STATE_KEY = "deepexec_tenant"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class TenantAuth:
    """Pure ASGI: resolve the bearer key to a tenant, or answer 401 with the REST error
    envelope (and ``WWW-Authenticate: Bearer``) before MCP sees the request."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or ()).get(b"authorization")
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        try:
            tenant = await self.auth.tenant_for(raw.decode("latin-1") if raw else None)
        except Unauthorized as exc:
            body = error_body(exc.type, exc.message, scope_request_id(scope))
            await send_json(send, 401, body, ((b"www-authenticate", b'Bearer realm="deepexec"'),))
            return
        state[TENANT_STATE_KEY] = tenant
        await self.app(scope, receive, send)


def tenant_of(ctx: ServerRequestContext[Any, Any]) -> str:
    """The tenant ``TenantAuth`` authenticated for the HTTP request carrying this message."""
    request = ctx.request
    tenant = (
        request.scope.get("state", {}).get(TENANT_STATE_KEY)
        if isinstance(request, Request)
        else None
    )
    if not isinstance(tenant, str):
        # Unreachable behind TenantAuth; refuse rather than guess a tenant.
        raise MCPError(INTERNAL_ERROR, "request is not authenticated")
    return tenant


def transport_security(settings: Settings) -> TransportSecuritySettings | None:
    """DNS-rebinding protection (Host and Origin checks) when serving on loopback, where a
    browser page could otherwise reach the server; elsewhere the bearer key is the guard."""
    if settings.host not in _LOOPBACK:
        return None
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


def install(app: FastAPI, services: Services) -> contextlib.AbstractAsyncContextManager[None]:
    """Add the ``/mcp`` route to ``app``; the returned context runs the MCP session manager
    and must be entered in the app's lifespan."""
    server = build_server(lambda ctx: EngineJobOps(services.engine, tenant_of(ctx)))
    manager = StreamableHTTPSessionManager(
        app=server,
        json_response=False,  # SSE, so progress notifications stream while a tool runs
        stateless=False,  # 2025-era clients keep a session; 2026-era requests are stateless
        security_settings=transport_security(services.settings),
        max_request_body_size=services.settings.max_body_bytes,
    )
    endpoint = TenantAuth(StreamableHTTPASGIApp(manager), services.auth)
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint))
    return manager.run()
