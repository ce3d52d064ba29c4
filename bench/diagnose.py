"""Why a target was missed, decided from figures measured in the same run (pure)."""

from __future__ import annotations

import time

import httpx

#: A loopback HTTP round trip slower than this is not the app's work: it is a TCP stall.
STALL_MS = 30.0

#: Seen on every response of ``deepexec serve`` at the time of writing: cli.py builds the
#: listening socket as ``socket.socket(family, SOCK_STREAM)`` (proto 0), and asyncio only sets
#: TCP_NODELAY on accepted sockets whose proto is IPPROTO_TCP, so a response written in two
#: pieces waits for the client's delayed ACK (40 ms). Fix: pass ``socket.IPPROTO_TCP``.
NAGLE = (
    "TCP stall: every HTTP response takes ~{ms:.0f} ms, even GET /healthz (Nagle + delayed "
    "ACK: TCP_NODELAY is off on the server's sockets; see RESULTS.md findings)"
)


def http_limit(healthz_median_ms: float, otherwise: str) -> str:
    """The limit to report: the TCP stall when /healthz shows one, else ``otherwise``."""
    if healthz_median_ms >= STALL_MS:
        return NAGLE.format(ms=healthz_median_ms)
    return otherwise


def healthz_ms(base_url: str, n: int = 15) -> float:
    """Median ms of ``n`` sequential keep-alive GET /healthz: the server's HTTP floor."""
    times: list[float] = []
    with httpx.Client() as client:
        client.get(f"{base_url}/healthz")
        for _ in range(n):
            t0 = time.perf_counter()
            client.get(f"{base_url}/healthz")
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return times[len(times) // 2]
