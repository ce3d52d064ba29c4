"""Pure ASGI middleware (no BaseHTTPMiddleware): request ids, the protocol header, the API
key, and the request body cap. Each answers refusals itself with the JSON error envelope."""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from deepexec_sdk.types import PROTOCOL_HEADER, PROTOCOL_VERSION, REQUEST_ID_HEADER

from ..errors import ServiceError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PROTOCOL = PROTOCOL_HEADER.lower().encode()
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()
_VERSION = PROTOCOL_VERSION.encode()


def error_body(status_type: str, message: str, request_id: str, details: Any = None) -> bytes:
    return json.dumps(
        {
            "error": {
                "type": status_type,
                "message": message,
                "details": details,
                "request_id": request_id,
            }
        }
    ).encode()


#: Bodies above this are sent in pieces of this size (see ``send_json``).
SEND_CHUNK_BYTES = 256 * 1024


async def send_json(
    send: Send, status: int, body: bytes, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """Answer with ``body``, JSON. A large body (a job with megabytes of output) goes out in
    pieces, each sent once the client has taken the previous ones: handed over whole, the
    transport would copy all that the socket did not take at once into its own buffer."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra_headers,
            ],
        }
    )
    if len(body) <= SEND_CHUNK_BYTES:
        await send({"type": "http.response.body", "body": body})
        return
    view = memoryview(body)
    for start in range(0, len(body), SEND_CHUNK_BYTES):
        piece = bytes(view[start : start + SEND_CHUNK_BYTES])
        more = start + SEND_CHUNK_BYTES < len(body)
        await send({"type": "http.response.body", "body": piece, "more_body": more})


#: Where ``ProtocolMiddleware``'s ``authenticate`` leaves the request's tenant.
TENANT_STATE_KEY = "tenant_id"


def scope_tenant(scope: Scope) -> str | None:
    """The tenant ``ProtocolMiddleware`` authenticated for this request, if it did."""
    tenant = scope.get("state", {}).get(TENANT_STATE_KEY)
    return tenant if isinstance(tenant, str) else None


def scope_request_id(scope: Scope) -> str:
    """The id ``ProtocolMiddleware`` gave this request ("" outside of it)."""
    return str(scope.get("state", {}).get("request_id", ""))


def _valid_request_id(raw: bytes) -> bool:
    return 0 < len(raw) <= 128 and all(33 <= b < 127 for b in raw)


class ProtocolMiddleware:
    """Gives every request an id (the client's ``X-Request-Id`` if sane), stamps
    ``X-Request-Id`` and ``DeepExec-Protocol`` on every response, refuses a protocol major
    version the server does not speak, and caps request bodies at ``max_body_bytes``.
    ``on_response(method, status)`` is called as each answer starts (the request counter).
    ``authenticate(scope)`` runs before anything reads the body, and may raise a
    ``ServiceError`` (a missing or unknown key): a client without a key cannot make the server
    read, or wait for, a body."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        on_response: Callable[[str, int], None] | None = None,
        authenticate: Callable[[Scope], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_response = on_response
        self.authenticate = authenticate
        # Ids are this server's random prefix and a counter: unique, and unlike a fresh random
        # id each, no system call per request. They name requests in logs; they guard nothing.
        self._id_prefix = "req_" + secrets.token_hex(4)
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        raw_id = headers.get(_REQUEST_ID, b"")
        request_id = (
            raw_id.decode()
            if _valid_request_id(raw_id)
            else f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFF:08x}"
        )
        scope.setdefault("state", {})["request_id"] = request_id
        extra = ((_REQUEST_ID, request_id.encode()), (_PROTOCOL, _VERSION))
        on_response = self.on_response

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
                if on_response is not None:
                    on_response(scope["method"], message["status"])
            await send(message)

        async def refuse(status: int, type_: str, msg: str, details: Any = None) -> None:
            await send_json(send_with_headers, status, error_body(type_, msg, request_id, details))

        proto = headers.get(_PROTOCOL)
        if proto is not None and proto.split(b".")[0].strip() != _VERSION:
            await refuse(
                400,
                "unsupported_protocol",
                f"this server speaks {PROTOCOL_HEADER} {PROTOCOL_VERSION}, the client "
                f"sent {proto.decode(errors='replace')!r}: upgrade the older side",
            )
            return

        raw_path = scope.get("raw_path") or scope.get("path", "").encode()
        if b"%00" in raw_path or b"\x00" in raw_path or b"%00" in scope.get("query_string", b""):
            await refuse(400, "invalid_request", "the URL must not contain a NUL character (%00)")
            return

        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await refuse(400, "invalid_request", "Content-Length is not a number")
                return
            if int(length) > self.max_body_bytes:
                await refuse(
                    413,
                    "body_too_large",
                    f"request body is {int(length)} bytes; the limit is {self.max_body_bytes}",
                )
                return

        if self.authenticate is not None:
            try:
                await self.authenticate(scope)
            except ServiceError as exc:
                await refuse(exc.status_code, exc.type, exc.message, exc.details)
                return

        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # No Content-Length (chunked): read the body here, up to the cap, and replay it.
            # A limit raised inside the app would be reported by FastAPI as a parse error.
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    await self.app(scope, receive, send_with_headers)
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    await refuse(
                        413,
                        "body_too_large",
                        f"request body is over the limit of {self.max_body_bytes} bytes",
                    )
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

            await self.app(scope, replay, send_with_headers)
            return

        await self.app(scope, receive, send_with_headers)
