"""MCP over Streamable HTTP at ``/mcp`` inside ``deepexec serve``.

Authenticated with the REST API's keys (``Authorization: Bearer <key>``); the key's tenant is
put on the request scope by ``TenantAuth`` and every tool and task call runs in that tenant.
Sessions (2025-era clients) are capped per key by ``SessionQuota`` and closed when idle by the
SDK's session manager.
The endpoint is a route at exactly ``/mcp`` (a ``Mount`` would answer ``POST /mcp`` with a
307 redirect to ``/mcp/``, which many clients do not follow for POST).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..auth import Authenticator
from ..errors import Unauthorized
from ..settings import Settings
from ..web.asgi import scope_request_id, send_json
from ..web.envelope import send_error
from ..web.services import Services
from .engine_ops import EngineJobOps
from .server import build_server

MCP_PATH = "/mcp"
#: Where ``TenantAuth`` leaves the caller's tenant in the ASGI scope's ``state``.
TENANT_STATE_KEY = "deepexec_tenant"
#: Where ``TenantAuth`` leaves the id of the caller's API key.
KEY_STATE_KEY = "deepexec_key"
_SESSION_HEADER = b"mcp-session-id"
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
            tenant, key_id = await self.auth.identify(raw.decode("latin-1") if raw else None)
        except Unauthorized as exc:
            challenge = ((b"www-authenticate", b'Bearer realm="deepexec"'),)
            await send_error(send, exc, scope_request_id(scope), challenge)
            return
        state[TENANT_STATE_KEY] = tenant
        state[KEY_STATE_KEY] = key_id
        await self.app(scope, receive, send)


class _Session:
    __slots__ = ("in_flight", "last_seen")

    def __init__(self, now: float) -> None:
        self.in_flight = 0
        self.last_seen = now


class SessionQuota:
    """Pure ASGI, behind ``TenantAuth``: at most ``per_key`` live MCP sessions per API key.
    Opening one more (a request without ``Mcp-Session-Id``) is answered 429 with a JSON-RPC
    error and ``Retry-After``, as the Streamable HTTP transport lets a server refuse a request.

    The SDK's session manager caps sessions only in total, so this keeps its own account,
    learnt from what passes through: a session is the ``Mcp-Session-Id`` a successful opening
    request answered with; it is live while a request of it is in flight or for
    ``idle_seconds`` after the last one (the manager's own idle timeout, given the same value,
    then closes it); a 404 for it (expired) or a successful DELETE ends it at once.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        per_key: int,
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.per_key = per_key
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sessions: dict[str, dict[str, _Session]] = {}

    def _live(self, key_id: str, now: float) -> dict[str, _Session]:
        sessions = self._sessions.get(key_id, {})
        for sid in [
            sid
            for sid, s in sessions.items()
            if s.in_flight == 0 and now - s.last_seen >= self.idle_seconds
        ]:
            del sessions[sid]
        if not sessions:
            self._sessions.pop(key_id, None)  # keys without sessions cost nothing
        return sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key_id = str(scope.get("state", {}).get(KEY_STATE_KEY, ""))
        sid_raw = dict(scope.get("headers") or ()).get(_SESSION_HEADER)
        if sid_raw is None:
            await self._open(key_id, scope, receive, send)
        else:
            await self._use(key_id, sid_raw.decode("latin-1"), scope, receive, send)

    async def _open(self, key_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        now = self._clock()
        live = self._live(key_id, now)
        # Requests in flight without a session are not counted: most are 2026-era stateless
        # calls, which open none. Concurrent opening requests may overshoot the cap by as many.
        if len(live) >= self.per_key:
            await self._refuse(live, now, send)
            return
        new_sid: str | None = None

        async def watch(message: MutableMapping[str, Any]) -> None:
            nonlocal new_sid
            if message["type"] == "http.response.start" and message["status"] < 400:
                for name, value in message.get("headers", ()):
                    if name.lower() == _SESSION_HEADER:
                        new_sid = value.decode("latin-1")
                        self._sessions.setdefault(key_id, {})[new_sid] = _Session(self._clock())
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if new_sid is not None and (opened := self._sessions.get(key_id, {}).get(new_sid)):
                opened.last_seen = self._clock()

    async def _use(self, key_id: str, sid: str, scope: Scope, receive: Receive, send: Send) -> None:
        session = self._sessions.get(key_id, {}).get(sid)
        if session is None:  # another key's, or unknown: the manager answers for it
            await self.app(scope, receive, send)
            return
        status = 0

        async def watch(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        session.in_flight += 1
        try:
            await self.app(scope, receive, watch)
        finally:
            session.in_flight -= 1
            session.last_seen = self._clock()
            ended = status == 404 or (scope["method"] == "DELETE" and 200 <= status < 300)
            if ended:
                self._sessions.get(key_id, {}).pop(sid, None)

    async def _refuse(self, live: dict[str, _Session], now: float, send: Send) -> None:
        idle = [self.idle_seconds - (now - s.last_seen) for s in live.values() if not s.in_flight]
        retry_after = max(1, math.ceil(min(idle, default=self.idle_seconds)))
        message = (
            f"this API key has {len(live)} open MCP sessions, the most allowed "
            f"(mcp_sessions_per_key = {self.per_key}): end one with DELETE /mcp and its "
            f"Mcp-Session-Id, or retry once an idle one expires "
            f"(after {self.idle_seconds:g} s without requests)"
        )
        body = json.dumps(
            {"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": message}}
        ).encode()
        await send_json(send, 429, body, ((b"retry-after", str(retry_after).encode()),))


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
        session_idle_timeout=services.settings.mcp_session_idle_seconds,
    )
    quota = SessionQuota(
        StreamableHTTPASGIApp(manager),
        per_key=services.settings.mcp_sessions_per_key,
        idle_seconds=services.settings.mcp_session_idle_seconds,
    )
    endpoint = TenantAuth(quota, services.auth)
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint))
    return manager.run()
