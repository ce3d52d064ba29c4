"""Plain ASGI helpers shared by the doors: the types, what the outer middlewares leave on a
request's scope (its id, its tenant), reading headers and bodies, and sending JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = tuple[tuple[bytes, bytes], ...]

#: Where the request-id middleware leaves the request's id in the scope's ``state``.
REQUEST_ID_STATE_KEY = "request_id"
#: Where the API-key middleware leaves the request's tenant.
TENANT_STATE_KEY = "tenant_id"


def scope_tenant(scope: Scope) -> str | None:
    """The tenant the API-key middleware authenticated for this request, if it did."""
    tenant = scope.get("state", {}).get(TENANT_STATE_KEY)
    return tenant if isinstance(tenant, str) else None


def scope_request_id(scope: Scope) -> str:
    """The id the request-id middleware gave this request ("" outside of it)."""
    return str(scope.get("state", {}).get(REQUEST_ID_STATE_KEY, ""))


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case), as text."""
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; None if the client went away first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


#: Bodies above this are sent in pieces of this size (see ``send_json``).
SEND_CHUNK_BYTES = 256 * 1024


async def send_json(send: Send, status: int, body: bytes, extra_headers: Headers = ()) -> None:
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
