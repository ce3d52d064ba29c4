"""Counts every answer by method and status, refusals of the inner middlewares included."""

from __future__ import annotations

from collections.abc import Callable

from ...web.asgi import ASGIApp, Message, Receive, Scope, Send


class RequestCounter:
    """Calls ``on_response(method, status)`` as each answer starts."""

    def __init__(self, app: ASGIApp, on_response: Callable[[str, int], None]) -> None:
        self.app = app
        self.on_response = on_response

    # A coroutine function, unlike the inner layers' ``__call__``: as the outermost layer, it
    # is what servers look at to tell an ASGI 3 app (uvicorn would take it for ASGI 2).
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        on_response = self.on_response

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                on_response(scope["method"], message["status"])
            await send(message)

        await self.app(scope, receive, counted)
