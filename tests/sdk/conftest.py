"""Helpers for the SDK tests: wire bodies, a fake transport at the HTTP seam, and a real
scripted HTTP server on a loopback port."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from deepexec_sdk import DeepExecAsyncClient, DeepExecClient

BASE = "http://deepexec.test"
KEY = "dxk_test_key"
PROTO = {"DeepExec-Protocol": "1"}


def job_json(status: str = "RUNNING", job_id: str = "job_1", **extra: Any) -> dict[str, Any]:
    """A job status body as the server sends it."""
    return {
        "job_id": job_id,
        "name": "t",
        "job_type": "code_execution",
        "status": status,
        "progress": None,
        "result": None,
        "error": None,
        "tags": [],
        "priority": 0,
        "timeout": 60,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:01Z",
        **extra,
    }


def summary_json(job_id: str = "job_1") -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": "PENDING",
        "name": "t",
        "job_type": "code_execution",
        "priority": 0,
        "timeout": 60,
        "tags": [],
        "created_at": "2026-01-01T00:00:00Z",
    }


def envelope(type_: str, message: str, request_id: str = "req_1", details: Any = None) -> Any:
    return {
        "error": {"type": type_, "message": message, "details": details, "request_id": request_id}
    }


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n".encode()


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body delivered chunk by chunk to either client; an exception in the list is
    raised at that point, as a broken connection would."""

    def __init__(self, chunks: list[bytes | Exception]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk


Handler = Callable[[httpx.Request], httpx.Response]


def run_client(
    kind: str,
    handler: Handler,
    method: str,
    *args: Any,
    max_retries: int = 3,
    api_key: str | None = KEY,
    **kwargs: Any,
) -> Any:
    """Call ``method`` on a sync or async client whose HTTP goes to ``handler``. Streams are
    collected into a list."""
    transport = httpx.MockTransport(handler)
    if kind == "sync":
        with (
            httpx.Client(transport=transport) as http,
            DeepExecClient(BASE, api_key, max_retries=max_retries, http_client=http) as client,
        ):
            result = getattr(client, method)(*args, **kwargs)
            return list(result) if method == "stream_mcp_job_events" else result

    async def main() -> Any:
        async with (
            httpx.AsyncClient(transport=transport) as http,
            DeepExecAsyncClient(BASE, api_key, max_retries=max_retries, http_client=http) as client,
        ):
            if method == "stream_mcp_job_events":
                return [e async for e in client.stream_mcp_job_events(*args, **kwargs)]
            return await getattr(client, method)(*args, **kwargs)

    return asyncio.run(main())


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --- a real HTTP server -----------------------------------------------------------------------

Reply = Callable[[BaseHTTPRequestHandler], None]


class ScriptedServer:
    """A stdlib HTTP server on 127.0.0.1 that answers each request with the next scripted
    reply and records what it received."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.received: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection; bodies end at close

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.received.append((self.command, self.path, dict(self.headers), body))
                reply = outer.replies.pop(0)
                reply(self)

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def reply_json(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    def reply(h: BaseHTTPRequestHandler) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        for k, v in {**PROTO, "Content-Type": "application/json", **(headers or {})}.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return reply


def reply_stream(parts: list[bytes]) -> Reply:
    """An event stream sent part by part, flushed each time; the connection closes after."""

    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("DeepExec-Protocol", "1")
        h.end_headers()
        for part in parts:
            h.wfile.write(part)
            h.wfile.flush()

    return reply
