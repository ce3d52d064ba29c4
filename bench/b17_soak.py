"""17. A soak: 30 minutes of mixed load on one server (three tenants submitting code jobs,
text jobs and hostile programs, cancelling some, reading statuses all along). Every minute
it samples the server's RSS, open file descriptors and sockets, and the status reads' p99;
at the end every accepted job must have ended and none may be lost. A bench command, not a
test: ``python -m bench --only 17`` (``--quick``: 20 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from pathlib import Path

import httpx

from .common import RunConfig
from .harness import Server, rss_kib, running_server
from .stats import Outcome, Summary, Table, Verdict, fmt, percentile

TENANTS = ("soak-a", "soak-b", "soak-c")
TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}
#: Programs a hostile tenant sends: each must end with its limit, the server unharmed.
HOSTILE = (
    ("fork bomb", "import os\nwhile True:\n    os.fork()", 10),
    ("memory hog", "x = bytearray(4 * 2**30)", 10),
    ("output flood", "while True:\n    print('x' * 1000)", 10),
    ("past its timeout", "import time; time.sleep(30)", 1),
    ("disk filler", "open('f', 'wb').write(b'x' * (600 * 2**20))", 10),
)


def _fds(pid: int) -> tuple[int, int]:
    """Open file descriptors of ``pid``, and how many of them are sockets."""
    entries = list(Path(f"/proc/{pid}/fd").iterdir())
    sockets = 0
    for e in entries:
        with contextlib.suppress(OSError):  # closed meanwhile
            sockets += os.readlink(e).startswith("socket:")
    return len(entries), sockets


class Soak:
    def __init__(self, server: Server, keys: dict[str, str]) -> None:
        self.server = server
        self.keys = keys
        self.accepted: dict[str, str] = {}  # job id -> tenant
        self.status_ms: list[float] = []
        self.refused = 0
        self.errors: list[str] = []

    def _auth(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    async def submitter(self, http: httpx.AsyncClient, seed: int, until: float) -> None:
        rng = random.Random(seed)
        n = 0
        while time.monotonic() < until:
            n += 1
            tenant = rng.choice(TENANTS)
            if n % 9 == 0:
                name, code, timeout = rng.choice(HOSTILE)
                body = {
                    "name": name,
                    "job_type": "code_execution",
                    "data": {"code": code},
                    "timeout": timeout,
                }
            elif n % 5 == 0:
                body = {
                    "name": "text",
                    "job_type": "text_generation",
                    "data": {"prompt": "Say hi", "max_tokens": 4},
                }
            else:
                body = {
                    "name": "code",
                    "job_type": "code_execution",
                    "data": {"code": f"print({n})"},
                }
            try:
                r = await http.post("/v1/jobs", json=body, headers=self._auth(tenant))
            except httpx.HTTPError as exc:
                self.errors.append(f"submit: {exc!r}")
                continue
            if r.status_code == 201:
                self.accepted[r.json()["job_id"]] = tenant
            elif r.status_code in (429, 503):
                self.refused += 1
                await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
            else:
                self.errors.append(f"submit {r.status_code}: {r.text[:200]}")
            if n % 13 == 0 and self.accepted:
                job_id = rng.choice(list(self.accepted))
                await http.post(
                    f"/v1/jobs/{job_id}/cancel",
                    json={"reason": "soak"},
                    headers=self._auth(self.accepted[job_id]),
                )
            await asyncio.sleep(rng.uniform(0.01, 0.05))

    async def reader(self, http: httpx.AsyncClient, seed: int, until: float) -> None:
        rng = random.Random(seed)
        while time.monotonic() < until:
            if self.accepted:
                job_id = rng.choice(list(self.accepted))
                t0 = time.perf_counter()
                r = await http.get(f"/v1/jobs/{job_id}", headers=self._auth(self.accepted[job_id]))
                self.status_ms.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    self.errors.append(f"status {r.status_code}")
            await asyncio.sleep(0.02)

    async def lost(self, http: httpx.AsyncClient, limit: float) -> tuple[int, int]:
        """Jobs lost (not found) and stuck (not ended within ``limit`` s)."""
        deadline = time.monotonic() + limit
        lost = stuck = 0
        for job_id, tenant in self.accepted.items():
            while True:
                r = await http.get(
                    f"/v1/jobs/{job_id}?wait=10", headers=self._auth(tenant), timeout=30
                )
                if r.status_code != 200:
                    lost += 1
                    break
                if r.json()["status"] in TERMINAL:
                    break
                if time.monotonic() > deadline:
                    stuck += 1
                    break
        return lost, stuck


async def run(cfg: RunConfig) -> Outcome:
    duration = cfg.secs(1800, 20)
    every = cfg.secs(60, 5)
    out = Outcome(
        17, f"Soak: {fmt(duration / 60)} minutes of mixed, hostile load (sqlite)", cfg.command(17)
    )
    samples = Table(
        "The server every sample (RSS, descriptors, sockets; status reads since the last one)",
        ["minute", "RSS MiB", "fds", "sockets", "status reads", "p50 ms", "p99 ms", "accepted"],
    )
    env = {"DEEPEXEC_TENANT_MAX_PENDING": "500"}
    with running_server("--concurrency", "code_execution=2,text_generation=1", env=env) as srv:
        soak = Soak(srv, {t: srv.tenant_key(t) for t in TENANTS})
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=30, limits=limits) as http:
            t0 = time.monotonic()
            until = t0 + duration
            tasks = [asyncio.create_task(soak.submitter(http, i, until)) for i in range(3)]
            tasks += [asyncio.create_task(soak.reader(http, 100 + i, until)) for i in range(2)]
            first_rss = rss_kib(srv.pid)
            first_fds = _fds(srv.pid)
            rss: list[float] = []
            fds: list[int] = []
            window_p99: list[float] = []
            seen = 0
            while time.monotonic() < until:
                await asyncio.sleep(min(every, max(0.0, until - time.monotonic())))
                window = soak.status_ms[seen:]
                seen += len(window)
                n_fds, n_sockets = _fds(srv.pid)
                rss.append(rss_kib(srv.pid) / 1024)
                fds.append(n_fds)
                p99 = percentile(window, 99)
                window_p99.append(p99)
                samples.add(
                    f"{(time.monotonic() - t0) / 60:.1f}",
                    rss[-1],
                    n_fds,
                    n_sockets,
                    len(window),
                    percentile(window, 50),
                    p99,
                    len(soak.accepted),
                )
            await asyncio.gather(*tasks)
            lost, stuck = await soak.lost(http, 600)
    out.tables.append(samples)
    growth = rss[-1] - rss[len(rss) // 4] if rss else 0.0  # after the first quarter's warm-up
    summary = Table("The soak", ["what", "value"])
    summary.add("duration (min)", duration / 60)
    summary.add("jobs accepted", len(soak.accepted))
    summary.add("submits refused (429/503, retried after Retry-After)", soak.refused)
    summary.add("jobs lost / stuck", f"{lost} / {stuck}")
    summary.add(
        "RSS at start → end (MiB)", f"{fmt(first_rss / 1024)} → {fmt(rss[-1] if rss else 0)}"
    )
    summary.add("RSS growth after the first quarter (MiB)", growth)
    summary.add("fds at start → end", f"{first_fds[0]} → {fds[-1] if fds else 0}")
    summary.add("status read p99, worst sample (ms)", max(window_p99, default=float("nan")))
    summary.add("status reads", len(soak.status_ms))
    summary.add("client-side errors", len(soak.errors))
    summary.notes.append(
        "Three submitters (code jobs, text jobs, every ninth a hostile program: fork bomb, "
        "memory hog, output flood, past its timeout, disk filler), cancelling every 13th, and "
        "two status readers, on 2 code slots and 1 text slot; tenants capped at 500 pending. "
        "Load and server share this 2-core machine."
    )
    out.tables.append(summary)
    overall = Summary.of(soak.status_ms)
    out.verdicts += [
        Verdict(
            "no accepted job lost or stuck",
            lost == 0 and stuck == 0,
            f"{lost} lost, {stuck} stuck of {len(soak.accepted)}",
        ),
        Verdict(
            "server RSS grows ≤ 50 MiB after the first quarter", growth <= 50, f"{fmt(growth)} MiB"
        ),
        Verdict(
            "file descriptors at the end ≤ at the start + 32",
            bool(fds) and fds[-1] <= first_fds[0] + 32,
            f"{first_fds[0]} → {fds[-1] if fds else '-'}",
        ),
        Verdict(
            "status read p99 ≤ 100 ms in every sample",
            max(window_p99, default=0) <= 100,
            f"worst {fmt(max(window_p99, default=float('nan')))} ms "
            f"(overall p50 {fmt(overall.median)} ms)",
        ),
    ]
    if soak.errors:
        out.notes.append("first client errors: " + "; ".join(soak.errors[:5]))
    return out
