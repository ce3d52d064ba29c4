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


def _worker(url: str, headers: dict[str, str], seconds: float, q: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    n = errors = 0
    lat: list[float] = []
    with httpx.Client(headers=headers) as client:
        end = time.perf_counter() + seconds
        while (t0 := time.perf_counter()) < end:
            if client.get(url).status_code != 200:
                errors += 1
            lat.append((time.perf_counter() - t0) * 1000)
            n += 1
    q.put((n, errors, lat))


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
