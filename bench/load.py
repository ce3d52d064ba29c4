"""HTTP load from a separate process: ``wrk`` if installed, else httpx worker processes."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import re
import subprocess
import time

import httpx

from .harness import have


@dataclasses.dataclass(frozen=True, slots=True)
class LoadResult:
    """Requests per second and latency tails of one load run."""

    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    tool: str


def ensure_wrk(allow_install: bool) -> str | None:
    """Path of ``wrk``; installs Debian's package first when allowed (root with apt-get).
    None: not available, ``load`` then uses httpx processes."""
    if have("wrk") or not allow_install or os.geteuid() != 0 or not have("apt-get"):
        return have("wrk")
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, timeout=300)
    return have("wrk")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(text: str) -> LoadResult:
    """Read ``wrk --latency`` output: Requests/sec, the latency distribution, errors."""
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", text).group(1))  # type: ignore[union-attr]
    pct: dict[str, float] = {}
    for q, value, unit in re.findall(r"^\s*(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        pct[q] = float(value) * _UNITS[unit]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        errors += sum(int(g) for g in m.groups())
    return LoadResult(
        rps, pct.get("50", 0.0), pct.get("90", 0.0), pct.get("99", 0.0), errors, "wrk"
    )


def _worker(
    url: str,
    headers: dict[str, str],
    seconds: float,
    q: multiprocessing.Queue,  # type: ignore[type-arg]
    body: bytes | None = None,
    count: int | None = None,
) -> None:
    """GETs for ``seconds``; or, with ``body``, ``count`` POSTs of it (expecting 201)."""
    n = errors = 0
    lat: list[float] = []
    with httpx.Client(headers=headers) as client:
        end = time.perf_counter() + seconds
        while (t0 := time.perf_counter()) < end and (count is None or n < count):
            if body is None:
                ok = client.get(url).status_code == 200
            else:
                ok = client.post(url, content=body).status_code == 201
            errors += not ok
            lat.append((time.perf_counter() - t0) * 1000)
            n += 1
    q.put((n, errors, lat))


@dataclasses.dataclass(frozen=True, slots=True)
class PostResult:
    """A fixed number of POSTs: how many got the expected status, how fast, latency tails."""

    answered: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        """Answers per second."""
        return self.answered / self.seconds if self.seconds else 0.0


async def _post_connection(
    host: str, port: int, request: bytes, count: int, expect: bytes, lat: list[float]
) -> int:
    """``count`` requests over one keep-alive connection, one at a time; returns how many
    answers did not start with ``expect`` (the status line's prefix)."""
    import asyncio

    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        for _ in range(count):
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            lat.append((time.perf_counter() - t0) * 1000)
            errors += not head.startswith(expect)
    finally:
        writer.close()
    return errors


def _post_process(
    url: str,
    headers: dict[str, str],
    body: bytes,
    counts: list[int],
    q: multiprocessing.Queue,  # type: ignore[type-arg]
) -> None:
    """One load process: a connection per entry of ``counts``, all at once."""
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    lat: list[float] = []

    async def main() -> int:
        done = await asyncio.gather(
            *(_post_connection(host, port, request, n, b"HTTP/1.1 201", lat) for n in counts)
        )
        return sum(done)

    t0 = time.perf_counter()
    errors = asyncio.run(main())
    q.put((t0, time.perf_counter(), errors, lat))


def post_load(
    url: str,
    headers: dict[str, str],
    body: bytes,
    total: int,
    connections: int = 16,
    processes: int = 1,
) -> PostResult:
    """POST ``body`` to ``url`` exactly ``total`` times from separate processes, over
    ``connections`` keep-alive connections at once, expecting 201 each time. The client is a
    few lines of asyncio writing one prepared request, so that its own cost stays small next
    to the server's (an SDK client costs ~10x more per request, see benchmark 5's notes)."""
    from .stats import percentile

    shares = [total // connections + (i < total % connections) for i in range(connections)]
    per_proc = [shares[i::processes] for i in range(processes)]
    q: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [
        multiprocessing.Process(target=_post_process, args=(url, headers, body, counts, q))
        for counts in per_proc
    ]
    for p in procs:
        p.start()
    parts = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(10)
    start = min(t0 for t0, _, _, _ in parts)
    end = max(t1 for _, t1, _, _ in parts)
    lat = [x for _, _, _, part in parts for x in part]
    errors = sum(e for _, _, e, _ in parts)
    return PostResult(
        len(lat) - errors,
        errors,
        end - start,
        percentile(lat, 50),
        percentile(lat, 90),
        percentile(lat, 99),
    )


def load(
    url: str, headers: dict[str, str], seconds: float, connections: int = 16, threads: int = 1
) -> LoadResult:
    """Hammer ``url`` with GETs for ``seconds`` from another process."""
    wrk = have("wrk")
    if wrk:
        argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
        for name, value in headers.items():
            argv += ["-H", f"{name}: {value}"]
        argv += ["--latency", url]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        return parse_wrk(res.stdout)
    from .stats import percentile

    q: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    procs = [
        multiprocessing.Process(target=_worker, args=(url, headers, seconds, q))
        for _ in range(max(1, threads))
    ]
    for p in procs:
        p.start()
    parts = [q.get(timeout=seconds + 30) for _ in procs]
    for p in procs:
        p.join(10)
    total = sum(n for n, _, _ in parts)
    lat = [x for _, _, part in parts for x in part]
    return LoadResult(
        total / seconds,
        percentile(lat, 50),
        percentile(lat, 90),
        percentile(lat, 99),
        sum(e for _, e, _ in parts),
        "httpx processes",
    )
