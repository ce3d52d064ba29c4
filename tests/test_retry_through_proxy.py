"""A submit whose connection drops after the server got it is retried without a second job.

A real TCP proxy sits between the SDK and the real server. It forwards the first connection's
request, lets the server answer, then cuts the connection before the answer reaches the client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from deepexec_sdk import DeepExecAsyncClient, DeepExecClient
from tests.serverproc import ServerProcess


class CuttingProxy:
    def __init__(self, upstream_port: int, cut_first: int = 1) -> None:
        self.upstream_port = upstream_port
        self.cut_remaining = cut_first
        self.cut_count = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                cut = self.cut_remaining > 0
                self.cut_remaining -= 1 if cut else 0
            t = threading.Thread(target=self._handle, args=(conn, cut), daemon=True)
            t.start()
            self._threads.append(t)

    def _handle(self, client: socket.socket, cut: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        client.settimeout(10)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        if not cut:
            t = threading.Thread(target=pump, args=(client, upstream), daemon=True)
            t.start()
            pump(upstream, client)
            t.join(5)
            client.close()
            upstream.close()
            return
        # Forward the request, wait for the server's answer to begin (so it has created the
        # job), then drop both connections without passing the answer on.
        t = threading.Thread(target=pump, args=(client, upstream), daemon=True)
        t.start()
        try:
            upstream.recv(1)
        finally:
            self.cut_count += 1
            client.shutdown(socket.SHUT_RDWR)
            client.close()
            upstream.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._accept.join(2)
        for t in self._threads:
            t.join(2)


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[CuttingProxy]:
    p = CuttingProxy(server.port)
    yield p
    p.close()


def test_sync_submit_retried_after_cut_connection_creates_one_job(
    server: ServerProcess, proxy: CuttingProxy
) -> None:
    tag = f"proxy-{uuid.uuid4().hex[:8]}"
    with DeepExecClient(
        base_url=f"http://127.0.0.1:{proxy.port}", api_key=server.api_key, max_retries=3
    ) as c:
        job = c.submit_mcp_job("through proxy", "code_execution", {"code": "print(1)"}, tags=[tag])
    assert proxy.cut_count == 1
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as direct:
        jobs = direct.list_mcp_jobs(tags=[tag]).jobs
    assert [j.job_id for j in jobs] == [job.job_id]


async def test_async_submit_retried_after_cut_connection_creates_one_job(
    server: ServerProcess, proxy: CuttingProxy
) -> None:
    tag = f"proxy-{uuid.uuid4().hex[:8]}"
    async with DeepExecAsyncClient(
        base_url=f"http://127.0.0.1:{proxy.port}", api_key=server.api_key, max_retries=3
    ) as c:
        job = await c.submit_mcp_job(
            "through proxy", "code_execution", {"code": "print(1)"}, tags=[tag]
        )
    assert proxy.cut_count == 1
    with DeepExecClient(base_url=server.base_url, api_key=server.api_key) as direct:
        jobs = direct.list_mcp_jobs(tags=[tag]).jobs
    assert [j.job_id for j in jobs] == [job.job_id]
