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
import logging
import resource
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..web.envelope import error_body

logger = logging.getLogger("deepexec_server.api")

#: File descriptors kept for everything but client connections: the database, sandboxes'
#: pipes and cgroup files, model files, logs.
FD_RESERVE = 512
RETRY_AFTER_SECONDS = 1
_IDLE, _HEAD, _BODY = 0, 1, 2


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
    return error_body(type_, message, "")


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """The protocol of the module doc; ``limited_protocol`` makes a subclass with its limits
    and the two answers it gives, prepared once."""

    header_timeout: float
    body_timeout: float
    max_connections: int
    #: The bytes of the 503 over ``max_connections``, and of the 408 for a slow head.
    busy: bytes
    too_slow: bytes

    # One watchdog timer per connection, not a timer per request: a request only notes
    # when its head (or body) began, and the watchdog, when it fires, closes the
    # connection if that phase has lasted too long or else sleeps for the rest of it.
    # Arming and cancelling two timers per request cost a measurable share of a status
    # read (benchmark 4).
    _phase = _IDLE
    _phase_started = 0.0
    _watchdog: asyncio.TimerHandle | None = None
    _refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.connections) >= self.max_connections:
            # Answer, shut our side, and drop what the client sends until it closes (at
            # most a second): closing with its request unread would reset the
            # connection, and the client might never read the 503.
            self._refused = True
            assert isinstance(transport, asyncio.Transport)
            transport.write(self.busy)
            transport.write_eof()
            self._watchdog = self.loop.call_later(RETRY_AFTER_SECONDS, transport.close)
            return
        super().connection_made(transport)  # type: ignore[arg-type]
        self._enter(_HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._phase == _IDLE:  # the first bytes of a new request: its head
            self._enter(_HEAD)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.parser.should_upgrade():
            self._phase = _IDLE  # the connection is another protocol's from here
        else:
            # A request without a body completes at once (``on_message_complete``).
            self._enter(_BODY)

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # A client that asked for "100 Continue" and got a final answer instead (a 401
        # before any body was read) will not send the body: close rather than read the
        # next request as the rest of this one.
        if self.expect_100_continue and self.cycle is not None and self.cycle.more_body:
            self.transport.close()
        super().on_response_complete()

    def _enter(self, phase: int) -> None:
        self._phase = phase
        self._phase_started = self.loop.time()
        if self._watchdog is None:
            limit = self.header_timeout if phase == _HEAD else self.body_timeout
            self._watchdog = self.loop.call_later(limit, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if self._phase == _IDLE or self.transport.is_closing():
            return  # re-armed by the next request
        limit = self.header_timeout if self._phase == _HEAD else self.body_timeout
        left = self._phase_started + limit - self.loop.time()
        if left > 0:
            self._watchdog = self.loop.call_later(left, self._check)
            return
        if self._phase == _HEAD and (self.cycle is None or self.cycle.response_complete):
            self.transport.write(self.too_slow)
        # Mid-body there is no answer to give: the app sees a disconnect.
        self.transport.close()


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

    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_connections": max_connections,
            "busy": busy,
            "too_slow": too_slow,
        },
    )


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
