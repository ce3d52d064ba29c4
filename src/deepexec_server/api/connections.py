"""Connection limits for ``deepexec serve``: how long a client may take to send a request,
how many connections are open at once, and what the process may open.

uvicorn closes a connection only when it has been idle for ``timeout_keep_alive`` *after* a
response. A connection that sends nothing, or a request's head or body a byte at a time, is
never timed out (its keep-alive timer is disarmed by the first byte and re-armed only after a
response), and it offers no cap on connections short of the process' file limit: 20,000 such
connections took the server to that limit, and ``/healthz`` stopped answering. No uvicorn
setting covers this, nor does ASGI middleware (it runs once the head has been parsed), so
``limited_protocol`` subclasses uvicorn's httptools protocol (the one ``uvicorn[standard]``
runs) and only adds timers around the parser's own callbacks:

- from the accept, and from the first byte of each later request, the head must be complete
  within ``header_timeout`` (else 408 and close);
- once the head is in, a body must be complete within ``body_timeout`` (else close);
- over ``max_connections`` open connections, a new one is answered 503 with ``Retry-After``
  and closed at once, so a flood costs the server a file descriptor only for an instant.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger("deepexec_server.api")

#: File descriptors kept for everything but client connections: the database, sandboxes'
#: pipes and cgroup files, model files, logs.
FD_RESERVE = 512
RETRY_AFTER_SECONDS = 1


def raise_file_limit() -> int:
    """Raise this process' soft ``RLIMIT_NOFILE`` to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def connection_cap(wanted: int, file_limit: int) -> int:
    """The connection cap: ``wanted``, lowered below ``file_limit`` with room for the rest."""
    room = file_limit - FD_RESERVE if file_limit > 2 * FD_RESERVE else file_limit // 2
    return max(1, min(wanted, room))


def _raw_response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        len(body),
    )
    return head + extra + b"connection: close\r\n\r\n" + body


def _error(type_: str, message: str) -> bytes:
    envelope = {"error": {"type": type_, "message": message, "details": None, "request_id": ""}}
    return json.dumps(envelope).encode()


def limited_protocol(
    *, header_timeout: float, body_timeout: float, max_connections: int
) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the limits of the module doc (pass it as ``http=``)."""
    busy = _raw_response(
        b"503 Service Unavailable",
        _error(
            "server_busy",
            f"the server has {max_connections} open connections, its limit; retry shortly",
        ),
        b"retry-after: " + str(RETRY_AFTER_SECONDS).encode() + b"\r\n",
    )
    too_slow = _raw_response(
        b"408 Request Timeout",
        _error("request_timeout", f"the request head took over {header_timeout:g} s to arrive"),
    )

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _in_body = False
        _refused = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if len(self.connections) >= max_connections:
                # Answer, shut our side, and drop what the client sends until it closes (at
                # most a second): closing with its request unread would reset the
                # connection, and the client might never read the 503.
                self._refused = True
                assert isinstance(transport, asyncio.Transport)
                transport.write(busy)
                transport.write_eof()
                self._deadline = self.loop.call_later(RETRY_AFTER_SECONDS, transport.close)
                return
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm(header_timeout, self._head_too_slow)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if not self._refused:
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._deadline is None and not self._in_body:
                # The first bytes of a new request (its head).
                self._arm(header_timeout, self._head_too_slow)
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            self._in_body = True
            self._arm(body_timeout, self._body_too_slow)

        def on_message_complete(self) -> None:
            self._in_body = False
            self._disarm()
            super().on_message_complete()

        def on_response_complete(self) -> None:
            # A client that asked for "100 Continue" and got a final answer instead (a 401
            # before any body was read) will not send the body: close rather than read the
            # next request as the rest of this one.
            if self.expect_100_continue and self.cycle is not None and self.cycle.more_body:
                self.transport.close()
            super().on_response_complete()

        def _arm(self, seconds: float, callback: Any) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _head_too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(too_slow)
            self.transport.close()

        def _body_too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                # The app sees a disconnect; there is no answer to give mid-body.
                self.transport.close()

    return LimitedHttpToolsProtocol


class AcceptErrorFilter(logging.Filter):
    """Lets through one "socket.accept() out of system resource" error (which asyncio logs,
    with a traceback, for every failed accept) per ``interval`` seconds, saying how many were
    dropped since: a flood of connections at the file limit wrote 123 MB of them in 20 s."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = float("-inf")
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of system resource"):
            return True
        now = time.monotonic()
        if now - self._last < self.interval:
            self._dropped += 1
            return False
        self._last = now
        if self._dropped:
            record.msg = f"{record.msg} ({self._dropped} more since the last report)"
            self._dropped = 0
        # The traceback says nothing the message does not.
        record.exc_info = None
        record.exc_text = None
        return True
