"""The clients' own HTTP/1.1 transport: its parser byte by byte, and both transports against a
real loopback server that writes raw bytes (keep-alive, chunks, a server that hangs up)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import resource
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from deepexec_sdk import DeepExecAsyncClient, DeepExecClient
from deepexec_sdk._http11 import (
    END,
    NEED_DATA,
    AsyncHTTP11Transport,
    Disconnected,
    Head,
    HTTP11Transport,
    ProtocolError,
    ResponseReader,
    used_for,
)
from tests.sdk.conftest import KEY, job_json

# --- the parser ------------------------------------------------------------------------------


def parse(method: str, wire: bytes, *, step: int = 0, eof: bool = True) -> tuple[Head, bytes, bool]:
    """Feed ``wire`` whole (step 0) or ``step`` bytes at a time; (head, body, reusable)."""
    reader = ResponseReader(method)
    pieces = [wire] if step == 0 else [wire[i : i + step] for i in range(0, len(wire), step)]
    head: Head | None = None
    body = b""
    while True:
        event = reader.next_event()
        if event is NEED_DATA:
            if pieces:
                reader.feed(pieces.pop(0))
            elif eof:
                reader.feed_eof()
            else:
                raise AssertionError("the parser wants bytes after the whole response")
        elif event is END:
            assert head is not None
            return head, body, reader.reusable
        elif isinstance(event, Head):
            head = event
        else:
            assert isinstance(event, bytes)
            body += event


LENGTH = (
    b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"a": 123}\n'
)
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n"
)


@pytest.mark.parametrize("step", [0, 1, 2, 7])
def test_a_content_length_body_parses_the_same_however_the_bytes_arrive(step: int) -> None:
    head, body, reusable = parse("GET", LENGTH, step=step, eof=False)
    assert (head.status, head.reason) == (200, b"OK")
    assert (b"Content-Type", b"application/json") in head.headers
    assert body == b'{"a": 123}\n'
    assert reusable


@pytest.mark.parametrize("step", [0, 1, 3])
def test_chunks_with_extensions_and_trailers_are_joined(step: int) -> None:
    head, body, reusable = parse("GET", CHUNKED, step=step, eof=False)
    assert head.status == 200 and body == b"hello world" and reusable


def test_a_body_without_length_ends_at_close_and_the_connection_is_not_reused() -> None:
    _, body, reusable = parse("GET", b"HTTP/1.1 200 OK\r\n\r\npart one, part two", step=5)
    assert body == b"part one, part two" and not reusable


@pytest.mark.parametrize(
    ("method", "wire"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"),
    ],
)
def test_responses_that_have_no_body_end_at_their_head(method: str, wire: bytes) -> None:
    _, body, reusable = parse(method, wire, eof=False)
    assert body == b"" and reusable


def test_an_interim_100_continue_is_skipped() -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH
    head, body, _ = parse("POST", wire, step=4, eof=False)
    assert head.status == 200 and body == b'{"a": 123}\n'


def test_connection_close_and_http_1_0_are_not_reused() -> None:
    closing = LENGTH.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    assert not parse("GET", closing, eof=False)[2]
    assert not parse("GET", LENGTH.replace(b"HTTP/1.1", b"HTTP/1.0"), eof=False)[2]


def test_bytes_after_the_response_make_the_connection_unusable() -> None:
    reader = ResponseReader("GET")
    reader.feed(LENGTH + b"HTTP/1.1 200 OK\r\n")
    events = [reader.next_event() for _ in range(3)]
    assert events[2] is END and not reader.reusable


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY", "CRLF"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "mid-body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "mid-body"),
        (b"HTTP/1.1 200 O", "mid-head"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    ],
)
def test_malformed_or_cut_responses_are_protocol_errors(wire: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse("GET", wire)


def test_a_head_too_large_is_refused_before_it_is_all_read() -> None:
    reader = ResponseReader("GET")
    reader.feed(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000)
    with pytest.raises(ProtocolError, match="over"):
        reader.next_event()


def test_a_connection_closed_before_any_byte_is_a_disconnect() -> None:
    reader = ResponseReader("GET")
    reader.feed_eof()
    with pytest.raises(Disconnected):
        reader.next_event()


# --- both transports against a raw loopback server --------------------------------------------

Action = Callable[[socket.socket], bool]  # send the answer; False closes the connection


class RawServer:
    """Reads each request (head and Content-Length body) and runs the next action on it."""

    def __init__(self, actions: list[Action]) -> None:
        self.actions = list(actions)
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def __enter__(self) -> RawServer:
        self._threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buf = b""
        with conn:
            while not self._stop.is_set():
                while b"\r\n\r\n" not in buf:
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        if self._stop.is_set():
                            return
                        continue
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                if not self.actions or not self.actions.pop(0)(conn):
                    return


def answer(body: bytes = b'{"ok": true}', *, keep: bool = True, extra: bytes = b"") -> Action:
    def act(conn: socket.socket) -> bool:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + extra
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        return keep

    return act


def hang_up(conn: socket.socket) -> bool:
    return False


def cut_mid_body(conn: socket.socket) -> bool:
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
    return False


def silent(conn: socket.socket) -> bool:
    time.sleep(1.0)
    return False


def chunked(parts: list[bytes], pause: float) -> Action:
    def act(conn: socket.socket) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            time.sleep(pause)
            conn.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        conn.sendall(b"0\r\n\r\n")
        return True

    return act


def get_all(kind: str, url: str, calls: list[dict[str, Any]], timeout: float = 5.0) -> list[Any]:
    """Each call is ``httpx.Client.request`` kwargs; a response's JSON, or the exception."""

    if kind == "sync":
        with httpx.Client(transport=HTTP11Transport(), timeout=timeout) as client:
            out: list[Any] = []
            for c in calls:
                try:
                    out.append(client.request(url=url, **c).json())
                except httpx.HTTPError as exc:
                    out.append(exc)
            return out

    async def main() -> list[Any]:
        async with httpx.AsyncClient(transport=AsyncHTTP11Transport(), timeout=timeout) as client:
            out: list[Any] = []
            for c in calls:
                try:
                    out.append((await client.request(url=url, **c)).json())
                except httpx.HTTPError as exc:
                    out.append(exc)
            return out

    return asyncio.run(main())


GET: dict[str, Any] = {"method": "GET"}


def test_requests_reuse_one_connection(kind: str) -> None:
    with RawServer([answer(b'{"n": 1}'), answer(b'{"n": 2}'), answer(b'{"n": 3}')]) as srv:
        out = get_all(kind, srv.url + "/x?y=1", [GET, {"method": "POST", "json": {"a": 1}}, GET])
    assert out == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert srv.connections == 1
    first, post = srv.requests[0], srv.requests[1]
    assert first.startswith(b"GET /x?y=1 HTTP/1.1\r\n") and b"\r\nHost: 127.0.0.1:" in first
    assert post.startswith(b"POST /x?y=1 HTTP/1.1\r\n") and post.endswith(b'\r\n\r\n{"a":1}')


def test_a_kept_alive_connection_the_server_dropped_is_replaced_without_an_error(
    kind: str,
) -> None:
    # The server answers as if it would keep the connection, then closes it: the next request
    # finds it dead, before or while writing, and goes out again on a new connection.
    with RawServer([answer(keep=False), answer(b'{"n": 2}')]) as srv:
        out = get_all(kind, srv.url, [GET, GET])
    assert out == [{"ok": True}, {"n": 2}]
    assert srv.connections == 2 and len(srv.requests) == 2


def test_connection_close_is_honoured(kind: str) -> None:
    with RawServer([answer(extra=b"Connection: close\r\n", keep=False), answer()]) as srv:
        out = get_all(kind, srv.url, [GET, GET])
    assert out == [{"ok": True}, {"ok": True}] and srv.connections == 2


def test_a_fresh_connection_closed_without_an_answer_is_an_error(kind: str) -> None:
    with RawServer([hang_up]) as srv:
        (out,) = get_all(kind, srv.url, [GET])
    assert isinstance(out, httpx.RemoteProtocolError) and "without a response" in str(out)
    assert len(srv.requests) == 1  # not sent twice


def test_a_body_cut_short_is_an_error_and_the_next_request_still_works(kind: str) -> None:
    with RawServer([cut_mid_body, answer(b'{"n": 2}')]) as srv:
        out = get_all(kind, srv.url, [GET, GET])
    assert isinstance(out[0], httpx.RemoteProtocolError) and "mid-body" in str(out[0])
    assert out[1] == {"n": 2}


def test_a_silent_server_is_a_read_timeout(kind: str) -> None:
    with RawServer([silent]) as srv:
        t0 = time.monotonic()
        (out,) = get_all(kind, srv.url, [GET], timeout=0.2)
        took = time.monotonic() - t0
    assert isinstance(out, httpx.ReadTimeout)
    assert took < 0.9


def test_connections_are_reused_in_a_process_with_over_1024_open_files() -> None:
    # select() refuses descriptors over 1023; checking an idle connection must not need it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1200")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with RawServer([answer(b'{"n": 1}'), answer(b'{"n": 2}')]) as srv:
            out = get_all("sync", srv.url, [GET, GET])
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert out == [{"n": 1}, {"n": 2}] and srv.connections == 1


def test_nobody_listening_is_a_connect_error(kind: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (out,) = get_all(kind, f"http://127.0.0.1:{port}", [GET])
    assert isinstance(out, httpx.ConnectError)


def test_chunks_reach_the_reader_as_they_are_sent(kind: str) -> None:
    parts = [b"one", b"two", b"three"]
    with RawServer([chunked(parts, 0.15)]) as srv:
        arrivals: list[tuple[bytes, float]] = []
        t0 = time.monotonic()
        if kind == "sync":
            with (
                httpx.Client(transport=HTTP11Transport()) as client,
                client.stream("GET", srv.url) as r,
            ):
                arrivals = [(p, time.monotonic() - t0) for p in r.iter_raw()]
        else:

            async def main() -> None:
                async with (
                    httpx.AsyncClient(transport=AsyncHTTP11Transport()) as client,
                    client.stream("GET", srv.url) as r,
                ):
                    async for p in r.aiter_raw():
                        arrivals.append((p, time.monotonic() - t0))

            asyncio.run(main())
    assert [p for p, _ in arrivals] == parts
    # Each part came about one pause after the one before, not all at the end.
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(arrivals)]
    assert all(g > 0.08 for g in gaps), gaps


def test_other_schemes_go_to_the_other_transport(kind: str) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"via": "other"})

    other = httpx.MockTransport(handler)
    url = "https://deepexec.test/v1/models"
    if kind == "sync":
        with httpx.Client(transport=HTTP11Transport(other)) as client:
            body = client.get(url).json()
    else:

        async def main() -> Any:
            async with httpx.AsyncClient(transport=AsyncHTTP11Transport(other)) as client:
                return (await client.get(url)).json()

        body = asyncio.run(main())
    assert body == {"via": "other"} and seen == [url]


def test_a_proxy_from_the_environment_is_still_used(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # httpx mounts environment proxies ahead of the transport: the SDK's default client must
    # still send through one.
    body = json.dumps(job_json("COMPLETED")).encode()
    proto = b"DeepExec-Protocol: 1\r\n"
    with RawServer([answer(body, extra=proto)]) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        base = "http://deepexec.invalid:8000"
        if kind == "sync":
            with DeepExecClient(base, KEY, max_retries=0) as c:
                status = c.get_mcp_job_status("job_1")
        else:

            async def main() -> Any:
                async with DeepExecAsyncClient(base, KEY, max_retries=0) as c:
                    return await c.get_mcp_job_status("job_1")

            status = asyncio.run(main())
    assert status.status == "COMPLETED"
    assert proxy.requests[0].startswith(b"GET http://deepexec.invalid:8000/v1/jobs/job_1 ")


@pytest.mark.parametrize(
    ("base", "env", "used"),
    [
        ("http://127.0.0.1:8000", {}, True),
        ("http://h:1", {"NO_PROXY": "*"}, True),
        ("https://h", {}, False),
        ("http://h:1", {"HTTP_PROXY": "http://p:3128"}, False),
        ("http://h:1", {"http_proxy": "http://p:3128"}, False),
        ("http://h:1", {"ALL_PROXY": "socks5://p:1080"}, False),
    ],
)
def test_the_transport_is_used_for_plain_http_without_a_proxy(
    base: str, env: dict[str, str], used: bool
) -> None:
    assert used_for(base, env) is used


def test_the_async_transport_drops_connections_of_a_loop_that_ended() -> None:
    transport = AsyncHTTP11Transport()
    client = httpx.AsyncClient(transport=transport)
    with RawServer([answer(b'{"n": 1}'), answer(b'{"n": 2}')]) as srv:

        async def one() -> Any:
            return (await client.get(srv.url)).json()

        first = asyncio.run(one())
        second = asyncio.run(one())  # another loop: a new connection, not the old one
    assert (first, second) == ({"n": 1}, {"n": 2}) and srv.connections == 2
    with contextlib.suppress(RuntimeError):
        asyncio.run(client.aclose())
