"""Slow, idle and keyless connections against the real server: a request's head and body must
arrive in time, connections are capped with a clear 503 below the open-file limit, and a body
sent without a valid key is refused before it is read."""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serverproc import ServerProcess

HEADER_TIMEOUT = 1
BODY_TIMEOUT = 2


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Timeouts set short, so that the tests see them fire."""
    srv = ServerProcess(
        tmp_path_factory.mktemp("home"),
        env={
            "DEEPEXEC_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "DEEPEXEC_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        },
    ).start()
    yield srv
    srv.stop()


def connect(server: ServerProcess, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return sock


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and how long that took; fails
    if it is still open after ``limit`` seconds."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the connection open over {limit} s; it sent {data[:200]!r}")
    return data, time.monotonic() - t0


def test_a_connection_sending_a_partial_head_is_closed_within_the_header_timeout(
    quick_server: ServerProcess,
) -> None:
    with connect(quick_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        data, took = read_until_closed(sock, HEADER_TIMEOUT + 8)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert took < HEADER_TIMEOUT + 5
    with connect(quick_server) as silent:  # connected, and never a byte
        _, took = read_until_closed(silent, HEADER_TIMEOUT + 8)
    assert took < HEADER_TIMEOUT + 5


def test_a_chunked_body_that_stalls_is_closed_within_the_body_timeout(
    quick_server: ServerProcess,
) -> None:
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {quick_server.api_key}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with connect(quick_server) as sock:
        sock.sendall(head.encode() + b'5\r\n{"nam\r\n')
        _, took = read_until_closed(sock, BODY_TIMEOUT + 8)
    assert took < BODY_TIMEOUT + 5
    # Requests that do arrive in time are served as before.
    r = httpx.get(f"{quick_server.base_url}/healthz", timeout=10)
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("path", "framing"),
    [
        ("/v1/jobs", "Transfer-Encoding: chunked"),
        ("/v1/jobs", "Content-Length: 1000000"),
        ("/v1/jobs/job_x/cancel", "Content-Length: 1000000"),
    ],
)
@pytest.mark.parametrize("key", [None, "dxk_not-a-key"])
def test_a_body_without_a_valid_key_is_refused_before_it_is_read(
    quick_server: ServerProcess, path: str, framing: str, key: str | None
) -> None:
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{auth}{framing}\r\nExpect: 100-continue\r\n\r\n"
    )
    with connect(quick_server) as sock:
        sock.sendall(head.encode())
        # The client holds its body back until told to go on: the answer is the refusal, not
        # "100 Continue", and the server then closes (the body will never come).
        data, _ = read_until_closed(sock, BODY_TIMEOUT + 8)
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    assert b"100 Continue" not in data
    assert b"authentication_required" in data or b"invalid_api_key" in data


# --- many connections -----------------------------------------------------------------------

IDLE = 2000
CAP = 2100


@pytest.fixture(scope="module")
def crowded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Started with a soft open-file limit of 1024 (a common default), below the connections
    the tests open; the hard limit must allow them."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < CAP + 1024:
        pytest.skip(f"the hard open-file limit ({hard}) is below {CAP + 1024}")
    # This process holds the client ends.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < CAP + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    home = tmp_path_factory.mktemp("home")
    srv = ServerProcess(
        home,
        env={
            "DEEPEXEC_HEADER_TIMEOUT_SECONDS": "120",
            "DEEPEXEC_MAX_CONNECTIONS": str(CAP),
            # Its own, so that it sweeps no other server's job dirs at start.
            "DEEPEXEC_WORK_DIR": str(home / "work"),
        },
        nofile_soft=1024,
    ).start()
    yield srv
    srv.stop()


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def idle_connections(server: ServerProcess, n: int) -> list[socket.socket]:
    """``n`` connections that send nothing, once the server holds them all (or 20 s pass)."""
    assert server.proc is not None
    before = open_sockets(server.proc.pid)
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", server.port))
        socks.append(s)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and open_sockets(server.proc.pid) < before + n:
        time.sleep(0.2)
    return socks


def test_health_answers_while_thousands_of_idle_connections_are_open(
    crowded_server: ServerProcess,
) -> None:
    assert crowded_server.proc is not None
    socks = idle_connections(crowded_server, IDLE)
    try:
        # The server accepted every one (its file limit raised from 1024) ...
        assert open_sockets(crowded_server.proc.pid) >= IDLE
        # ... and still answers.
        r = httpx.get(f"{crowded_server.base_url}/healthz", timeout=10)
        assert r.status_code == 200

        # Past the cap, a connection is told so, with when to come back.
        more = idle_connections(crowded_server, CAP - IDLE)
        socks += more
        with connect(crowded_server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data, _ = read_until_closed(sock, 10)
        assert data.startswith(b"HTTP/1.1 503"), data[:200]
        assert b"retry-after: 1\r\n" in data.lower()
        assert b"server_busy" in data
    finally:
        for s in socks:
            s.close()
    # With the idle ones gone, room is back.
    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(f"{crowded_server.base_url}/healthz", timeout=10)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200


def test_failed_accepts_are_logged_once_per_interval_with_a_count() -> None:
    import logging

    from deepexec_server.api.connections import AcceptErrorFilter

    log = logging.getLogger("test.accept-errors")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    log.addHandler(handler)
    log.addFilter(AcceptErrorFilter(interval=0.5))
    log.propagate = False
    try:
        err = OSError(24, "Too many open files")
        for _ in range(1000):  # as asyncio logs each failed accept, with its traceback
            log.error("socket.accept() out of system resource", exc_info=(OSError, err, None))
        log.error("something else")
        time.sleep(0.6)
        log.error("socket.accept() out of system resource", exc_info=(OSError, err, None))
    finally:
        log.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert messages == [
        "socket.accept() out of system resource",
        "something else",
        "socket.accept() out of system resource (999 more since the last report)",
    ]
    assert all(r.exc_info is None for r in records)
