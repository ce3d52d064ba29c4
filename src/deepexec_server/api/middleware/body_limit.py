"""The cap on request bodies, ``max_body_bytes``, in two steps around authentication: a body
that declares its length is refused at once; one sent in chunks (no ``Content-Length``) is
read here, up to the cap, once the request is authenticated, and replayed to the app (a limit
raised inside the app would be reported by FastAPI as a parse error). ``per_path`` gives
some paths a cap of their own (a batch of jobs, ``max_batch_body_bytes``)."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

from ...errors import BadRequest, PayloadTooLarge, ServiceError
from ...web.asgi import ASGIApp, Message, Receive, Scope, Send, scope_request_id
from ...web.envelope import send_error

_CONTENT_LENGTH = b"content-length"


def _content_length(scope: Scope) -> bytes | None:
    length = None
    for key, value in scope.get("headers") or ():
        if key == _CONTENT_LENGTH:
            length = value
    return length


class ContentLengthLimit:
    """Refuses a ``Content-Length`` that is not a number (400) or is over the cap (413)."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, per_path: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.per_path = dict(per_path or {})

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        length = _content_length(scope) if scope["type"] == "http" else None
        if length is not None:
            refusal: ServiceError | None = None
            if not length.isdigit():
                refusal = BadRequest("Content-Length is not a number")
            elif int(length) > (limit := self.per_path.get(scope["path"], self.max_body_bytes)):
                refusal = PayloadTooLarge(
                    f"request body is {int(length)} bytes; the limit is {limit}"
                )
            if refusal is not None:
                return send_error(send, refusal, scope_request_id(scope))
        return self.app(scope, receive, send)


class ChunkedBodyLimit:
    """Reads a POST, PUT or PATCH body sent without ``Content-Length``, refusing it (413) once
    over the cap, and hands the app the whole body."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, per_path: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.per_path = dict(per_path or {})

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("POST", "PUT", "PATCH")
            or _content_length(scope) is not None
        ):
            return self.app(scope, receive, send)
        return self._read_then_call(scope, receive, send)

    async def _read_then_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        limit = self.per_path.get(scope["path"], self.max_body_bytes)
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                refusal = PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                await send_error(send, refusal, scope_request_id(scope))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
