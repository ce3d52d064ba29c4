"""The clients' default transport: HTTP/1.1 over plain TCP, for ``http://`` servers.

httpx's own transport (httpcore over h11 and anyio) spends about 0.4 ms of CPU on each loopback
request, more than the server spends answering a status read. This one reads and writes the
bytes itself, for about a quarter of that. It speaks only what a DeepExec server needs:
keep-alive connections and Content-Length, chunked or close-delimited bodies. Everything else
stays with httpx: ``https://`` URLs go to an ``httpx`` transport, and a client whose environment
names a proxy keeps httpx's default transport (``used_for``), which goes through the proxy.

``ResponseReader`` is the parser, with no I/O; ``AsyncHTTP11Transport`` and ``HTTP11Transport``
move the bytes. Errors come out as httpx's exceptions, as from httpx's own transports.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import httpx

#: Largest status line plus headers accepted.
MAX_HEAD_BYTES: Final = 64 * 1024
#: Largest chunk-size line or trailer line accepted.
MAX_LINE_BYTES: Final = 8 * 1024
#: Bytes asked for per read.
READ_SIZE: Final = 64 * 1024
#: An idle connection older than this is closed instead of reused. Below uvicorn's default
#: keep-alive of 5 s, so the server rarely closes one just as it is reused.
KEEPALIVE_EXPIRY: Final = 4.0
#: Idle connections kept per server.
MAX_IDLE: Final = 20

NO_BODY_STATUS: Final = frozenset({204, 304})


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response."""


class Disconnected(ProtocolError):
    """The server closed the connection before sending any byte of a response."""


@dataclass(frozen=True)
class Head:
    """A response's status line and headers."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
END: Final = _Sentinel("END")

Event = Head | bytes | _Sentinel


def _header_tokens(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """The comma-separated, lower-cased values of every ``name`` header, in order."""
    out: list[bytes] = []
    for key, value in headers:
        if key.lower() == name:
            out += [t.strip().lower() for t in value.split(b",") if t.strip()]
    return out


class ResponseReader:
    """Parses one response, fed the bytes read from its connection (no I/O).

    ``next_event()`` returns the ``Head`` first, then pieces of the body as ``bytes``, then
    ``END``; ``NEED_DATA`` when it needs more bytes (``feed``) or to know the connection ended
    (``feed_eof``). Raises ``ProtocolError`` on a malformed response, ``Disconnected`` when the
    connection ended before the response began.
    """

    def __init__(self, method: str) -> None:
        self._buf = bytearray()
        self._eof = False
        self._head_only = method.upper() == "HEAD"
        self._state = "head"
        self._left = 0
        self._keep_alive = False
        self.started = False

    def feed(self, data: bytes) -> None:
        """Bytes read from the connection."""
        if data:
            self.started = True
            self._buf += data

    def feed_eof(self) -> None:
        """The server closed the connection."""
        self._eof = True

    def receive(self, data: bytes) -> None:
        """What one read of the connection returned: bytes, or b"" when it ended."""
        if data:
            self.feed(data)
        else:
            self.feed_eof()

    @property
    def reusable(self) -> bool:
        """The whole response was read and the connection may carry another request."""
        return self._state == "done" and self._keep_alive and not self._buf and not self._eof

    def next_event(self) -> Event:
        """The next event of the response; see the class."""
        while True:
            state = self._state
            if state == "head":
                event = self._head()
                if event is None:
                    continue  # an interim 1xx response was skipped
                return event
            if state in ("length", "chunk"):
                if not self._buf:
                    if self._eof:
                        raise ProtocolError("the server closed the connection mid-body")
                    return NEED_DATA
                piece = bytes(self._buf[: self._left])
                del self._buf[: len(piece)]
                self._left -= len(piece)
                if self._left == 0:
                    self._state = "done" if state == "length" else "chunk_end"
                return piece
            if state == "chunk_end":
                if len(self._buf) < 2:
                    if self._eof:
                        raise ProtocolError("the server closed the connection mid-chunk")
                    return NEED_DATA
                if self._buf[:2] != b"\r\n":
                    raise ProtocolError("a chunk does not end with CRLF")
                del self._buf[:2]
                self._state = "chunk_size"
                continue
            if state in ("chunk_size", "trailers"):
                line = self._line()
                if line is None:
                    return NEED_DATA
                if state == "trailers":
                    if not line:
                        self._state = "done"
                    continue
                size = line.split(b";", 1)[0].strip()
                try:
                    self._left = int(size, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size {bytes(size)[:20]!r}") from None
                if self._left < 0 or not size.isalnum():
                    raise ProtocolError(f"bad chunk size {bytes(size)[:20]!r}")
                self._state = "chunk" if self._left else "trailers"
                continue
            if state == "close":
                if self._buf:
                    piece = bytes(self._buf)
                    self._buf.clear()
                    return piece
                if self._eof:
                    self._state = "done"
                    continue
                return NEED_DATA
            return END

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_LINE_BYTES:
                raise ProtocolError("a chunk line is too long")
            if self._eof:
                raise ProtocolError("the server closed the connection mid-body")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 2]
        return line

    def _head(self) -> Head | _Sentinel | None:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                raise ProtocolError(f"response head over {MAX_HEAD_BYTES} bytes")
            if self._eof:
                if not self._buf:
                    raise Disconnected("the server closed the connection without a response")
                raise ProtocolError("the server closed the connection mid-head")
            return NEED_DATA
        if end > MAX_HEAD_BYTES:
            raise ProtocolError(f"response head over {MAX_HEAD_BYTES} bytes")
        lines = bytes(self._buf[:end]).split(b"\r\n")
        del self._buf[: end + 4]
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"bad status line {lines[0][:60]!r}")
        status = int(code)
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise ProtocolError(f"bad header line {line[:60]!r}")
            headers.append((name, value.strip()))
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("unexpected 101 Switching Protocols")
            return None
        self._frame(version, status, headers)
        return Head(status, reason, headers)

    def _frame(self, version: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """How the body ends (RFC 9112 §6.3), and whether the connection can be reused."""
        connection = _header_tokens(headers, b"connection")
        self._keep_alive = version == b"HTTP/1.1" and b"close" not in connection
        encodings = _header_tokens(headers, b"transfer-encoding")
        lengths = set(_header_tokens(headers, b"content-length"))
        if self._head_only or status in NO_BODY_STATUS:
            self._state = "done"
        elif encodings:
            if encodings[-1] == b"chunked":
                self._state = "chunk_size"
            else:
                self._state, self._keep_alive = "close", False
        elif lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise ProtocolError(f"bad Content-Length {sorted(lengths)!r}")
            self._left = int(next(iter(lengths)))
            self._state = "length" if self._left else "done"
        else:
            self._state, self._keep_alive = "close", False


def used_for(base_url: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether a client of ``base_url`` uses this transport: a plain ``http://`` server and no
    proxy variable in the environment (httpx only reads those when it picks the transport)."""
    env = os.environ if environ is None else environ
    proxied = any(env.get(n) or env.get(n.upper()) for n in ("http_proxy", "all_proxy"))
    return base_url.startswith("http://") and not proxied


# --- shared by both transports -----------------------------------------------------------------


def encode_request(request: httpx.Request) -> bytes:
    """Request line, headers and (already read) body, ready to write."""
    url = request.url
    parts = [request.method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\n"]
    chunked = False
    for name, value in request.headers.raw:
        parts += [name, b": ", value, b"\r\n"]
        chunked = chunked or (name.lower() == b"transfer-encoding" and b"chunked" in value.lower())
    parts.append(b"\r\n")
    body = request.content
    if chunked:  # a streamed body, read into memory: sent as one chunk
        parts += [b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n"] if body else [b"0\r\n\r\n"]
    else:
        parts.append(body)
    return b"".join(parts)


def _origin(url: httpx.URL) -> tuple[str, int]:
    return url.host, url.port or 80


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    value = request.extensions.get("timeout") or {}
    return {k: value.get(k) for k in ("connect", "read", "write", "pool")}


def _response(head: Head, stream: httpx.SyncByteStream | httpx.AsyncByteStream) -> httpx.Response:
    return httpx.Response(
        head.status,
        headers=head.headers,
        stream=stream,
        extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
    )


def _transport_error(
    exc: BaseException, request: httpx.Request, phase: str
) -> httpx.TransportError:
    """httpx's exception for ``exc``, raised while ``phase`` ("connect", "write", "read")."""
    if isinstance(exc, ProtocolError):
        return httpx.RemoteProtocolError(str(exc), request=request)
    if isinstance(exc, TimeoutError):
        kind: type[httpx.TransportError] = {
            "connect": httpx.ConnectTimeout,
            "write": httpx.WriteTimeout,
        }.get(phase, httpx.ReadTimeout)
        verb = {"connect": "connecting", "write": "writing"}.get(phase, "reading")
        return kind(f"timed out {verb}", request=request)
    kind = {"connect": httpx.ConnectError, "write": httpx.WriteError}.get(phase, httpx.ReadError)
    return kind(str(exc) or type(exc).__name__, request=request)


_ERRORS = (OSError, ProtocolError, EOFError)


# --- asyncio ---------------------------------------------------------------------------------


class _AsyncConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        origin: tuple[str, int],
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        return (
            now - self.idle_since < KEEPALIVE_EXPIRY
            and self.loop is asyncio.get_running_loop()
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    async def write(self, data: bytes, timeout: float | None) -> None:
        self.writer.write(data)
        async with asyncio.timeout(timeout):
            await self.writer.drain()

    async def next_event(self, parser: ResponseReader, timeout: float | None) -> Event:
        while (event := parser.next_event()) is NEED_DATA:
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_SIZE)
            parser.receive(data)
        return event

    def close(self) -> None:
        if self.loop.is_closed():  # left over from an ended asyncio.run(): GC closes it
            return
        if not self.writer.is_closing():
            self.writer.close()


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(
        self,
        pool: AsyncHTTP11Transport,
        conn: _AsyncConnection,
        parser: ResponseReader,
        request: httpx.Request,
        timeout: float | None,
    ) -> None:
        self._pool, self._conn, self._parser = pool, conn, parser
        self._request, self._timeout = request, timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                event = await self._conn.next_event(self._parser, self._timeout)
            except _ERRORS as exc:
                raise _transport_error(exc, self._request, "read") from exc
            if event is END:
                return
            assert isinstance(event, bytes)
            yield event

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool._release(self._conn, self._parser.reusable)


class AsyncHTTP11Transport(httpx.AsyncBaseTransport):
    """``http://`` requests over reused TCP connections; anything else goes to ``other``
    (default: an ``httpx.AsyncHTTPTransport()``, made on first use)."""

    def __init__(self, other: httpx.AsyncBaseTransport | None = None) -> None:
        self._other = other
        self._idle: dict[tuple[str, int], list[_AsyncConnection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            if self._other is None:
                self._other = httpx.AsyncHTTPTransport()
            return await self._other.handle_async_request(request)
        await request.aread()
        payload = encode_request(request)
        timeouts = _timeouts(request)
        origin = _origin(request.url)
        while True:
            conn = self._checkout(origin)
            reused = conn is not None
            if conn is None:
                conn = await self._connect(request, origin, timeouts["connect"])
            parser = ResponseReader(request.method)
            phase = "write"
            try:
                await conn.write(payload, timeouts["write"])
                phase = "read"
                head = await conn.next_event(parser, timeouts["read"])
            except _ERRORS as exc:
                conn.close()
                # A kept-alive connection the server closed before we wrote: try another.
                if reused and not parser.started and not isinstance(exc, TimeoutError):
                    continue
                raise _transport_error(exc, request, phase) from exc
            except BaseException:  # cancelled mid-exchange: the connection state is unknown
                conn.close()
                raise
            assert isinstance(head, Head)
            body = _AsyncBody(self, conn, parser, request, timeouts["read"])
            return _response(head, body)

    async def _connect(
        self, request: httpx.Request, origin: tuple[str, int], timeout: float | None
    ) -> _AsyncConnection:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(*origin, limit=READ_SIZE)
        except OSError as exc:
            raise _transport_error(exc, request, "connect") from exc
        return _AsyncConnection(reader, writer, origin)

    def _checkout(self, origin: tuple[str, int]) -> _AsyncConnection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    def _release(self, conn: _AsyncConnection, reusable: bool) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if reusable and not self._closed and len(idle) < MAX_IDLE and not conn.writer.is_closing():
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        if self._other is not None:
            await self._other.aclose()


# --- blocking sockets --------------------------------------------------------------------------


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has bytes or EOF to read now. ``poll`` where there is one: ``select``
    refuses file descriptors over 1023."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class _SyncConnection:
    def __init__(self, sock: socket.socket, origin: tuple[str, int]) -> None:
        self.sock = sock
        self.origin = origin
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        if now - self.idle_since >= KEEPALIVE_EXPIRY:
            return False
        # Readable while idle means the server closed it (or sent bytes nobody asked for).
        return not _readable(self.sock)

    def write(self, data: bytes, timeout: float | None) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def next_event(self, parser: ResponseReader, timeout: float | None) -> Event:
        while (event := parser.next_event()) is NEED_DATA:
            self.sock.settimeout(timeout)
            data = self.sock.recv(READ_SIZE)
            parser.receive(data)
        return event

    def close(self) -> None:
        self.sock.close()


class _SyncBody(httpx.SyncByteStream):
    def __init__(
        self,
        pool: HTTP11Transport,
        conn: _SyncConnection,
        parser: ResponseReader,
        request: httpx.Request,
        timeout: float | None,
    ) -> None:
        self._pool, self._conn, self._parser = pool, conn, parser
        self._request, self._timeout = request, timeout
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                event = self._conn.next_event(self._parser, self._timeout)
            except _ERRORS as exc:
                raise _transport_error(exc, self._request, "read") from exc
            if event is END:
                return
            assert isinstance(event, bytes)
            yield event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool._release(self._conn, self._parser.reusable)


class HTTP11Transport(httpx.BaseTransport):
    """The blocking twin of ``AsyncHTTP11Transport``; safe to share between threads."""

    def __init__(self, other: httpx.BaseTransport | None = None) -> None:
        self._other = other
        self._idle: dict[tuple[str, int], list[_SyncConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            with self._lock:
                if self._other is None:
                    self._other = httpx.HTTPTransport()
            return self._other.handle_request(request)
        request.read()
        payload = encode_request(request)
        timeouts = _timeouts(request)
        origin = _origin(request.url)
        while True:
            conn = self._checkout(origin)
            reused = conn is not None
            if conn is None:
                conn = self._connect(request, origin, timeouts["connect"])
            parser = ResponseReader(request.method)
            phase = "write"
            try:
                conn.write(payload, timeouts["write"])
                phase = "read"
                head = conn.next_event(parser, timeouts["read"])
            except _ERRORS as exc:
                conn.close()
                if reused and not parser.started and not isinstance(exc, TimeoutError):
                    continue
                raise _transport_error(exc, request, phase) from exc
            except BaseException:
                conn.close()
                raise
            assert isinstance(head, Head)
            return _response(head, _SyncBody(self, conn, parser, request, timeouts["read"]))

    def _connect(
        self, request: httpx.Request, origin: tuple[str, int], timeout: float | None
    ) -> _SyncConnection:
        try:
            sock = socket.create_connection(origin, timeout=timeout)
        except OSError as exc:
            raise _transport_error(exc, request, "connect") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _SyncConnection(sock, origin)

    def _checkout(self, origin: tuple[str, int]) -> _SyncConnection | None:
        now = time.monotonic()
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                conn = idle.pop() if idle else None
            if conn is None or conn.usable(now):
                return conn
            conn.close()

    def _release(self, conn: _SyncConnection, reusable: bool) -> None:
        if reusable:
            with self._lock:
                idle = self._idle.setdefault(conn.origin, [])
                if not self._closed and len(idle) < MAX_IDLE:
                    conn.idle_since = time.monotonic()
                    idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
        if self._other is not None:
            self._other.close()
