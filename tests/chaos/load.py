"""A mixed load for the chaos tests, and the ledger that proves what happened to it.

Three tenants submit code jobs (each prints a number the ledger remembers), text jobs, and
cancels of their earlier jobs, over plain HTTP with an ``Idempotency-Key`` of their own on
every submit. A submit whose answer never came (the server was killed, the database was
down) is *in doubt*: ``settle`` sends it again with the same key once the server is back, as
the SDK would, so that at the end every submit is either answered with one job or was refused
with an error the client could retry. Then ``check`` proves: no accepted job lost, none stuck,
none duplicated (one job per key, and a replay returns it), every result intact.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid

import httpx

TENANTS = ("chaos-a", "chaos-b", "chaos-c")
TERMINAL = {"COMPLETED", "FAILED", "CANCELED"}
#: Statuses a submit may be refused with while the service is in trouble: all retryable.
RETRYABLE = {408, 429, 502, 503, 504}


@dataclasses.dataclass
class Submit:
    tenant: str
    key: str
    body: dict[str, object]
    #: The printed number of a code job, to check its stdout; None for a text job.
    prints: int | None
    job_id: str | None = None


@dataclasses.dataclass
class Ledger:
    base_url: str
    keys: dict[str, str]
    submits: list[Submit] = dataclasses.field(default_factory=list)
    #: Statuses of submits refused outright, by status code.
    refused: dict[int, int] = dataclasses.field(default_factory=dict)
    canceled: set[str] = dataclasses.field(default_factory=set)
    failures: list[BaseException] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def headers(self, tenant: str, key: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.keys[tenant]}"}
        if key is not None:
            h["Idempotency-Key"] = key
        return h

    def send(self, http: httpx.Client, s: Submit) -> None:
        """One attempt at ``s``: records its job id if answered, a refusal's status if not;
        leaves it in doubt if no answer came."""
        try:
            r = http.post(
                f"{self.base_url}/v1/jobs", json=s.body, headers=self.headers(s.tenant, s.key)
            )
        except httpx.TransportError:
            return
        if r.status_code in (200, 201):
            job_id = r.json()["job_id"]
            with self.lock:
                if s.job_id is not None and s.job_id != job_id:
                    raise AssertionError(f"key {s.key} made two jobs: {s.job_id}, {job_id}")
                s.job_id = job_id
        elif r.status_code in RETRYABLE:
            with self.lock:
                self.refused[r.status_code] = self.refused.get(r.status_code, 0) + 1
        else:
            raise AssertionError(f"submit answered {r.status_code}: {r.text}")

    def run(self, stop: threading.Event, seed: int, *, text_every: int = 5) -> None:
        """Submit (and now and then cancel) until ``stop``; one thread. What goes wrong in it
        is kept in ``failures`` (a thread's exception reaches no test)."""
        try:
            self._run(stop, seed, text_every)
        except BaseException as exc:
            with self.lock:
                self.failures.append(exc)

    def _run(self, stop: threading.Event, seed: int, text_every: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=httpx.Timeout(5.0)) as http:
            n = 0
            while not stop.is_set():
                n += 1
                tenant = rng.choice(TENANTS)
                if n % text_every == 0:
                    body: dict[str, object] = {
                        "name": f"text-{seed}-{n}",
                        "job_type": "text_generation",
                        "data": {"prompt": "Say hi", "max_tokens": 2},
                    }
                    prints = None
                else:
                    value = rng.randrange(1_000_000)
                    body = {
                        "name": f"code-{seed}-{n}",
                        "job_type": "code_execution",
                        "data": {"code": f"print({value})"},
                    }
                    prints = value
                s = Submit(tenant, f"chaos-{uuid.uuid4().hex}", body, prints)
                with self.lock:
                    self.submits.append(s)
                self.send(http, s)
                if n % 7 == 0:
                    self._cancel_one(http, rng)
                time.sleep(rng.uniform(0, 0.02))

    def _cancel_one(self, http: httpx.Client, rng: random.Random) -> None:
        with self.lock:
            known = [s for s in self.submits if s.job_id is not None]
        if not known:
            return
        s = rng.choice(known)
        try:
            r = http.post(
                f"{self.base_url}/v1/jobs/{s.job_id}/cancel",
                json={"reason": "chaos"},
                headers=self.headers(s.tenant),
            )
        except httpx.TransportError:
            return
        if r.status_code == 200:
            assert s.job_id is not None
            with self.lock:
                self.canceled.add(s.job_id)

    def settle(self, limit: float = 60) -> None:
        """Send every submit in doubt again, with its own key, until each has its job."""
        deadline = time.monotonic() + limit
        with httpx.Client(timeout=httpx.Timeout(10.0)) as http:
            while True:
                doubtful = [s for s in self.submits if s.job_id is None]
                if not doubtful:
                    return
                assert time.monotonic() < deadline, f"{len(doubtful)} submits never answered"
                for s in doubtful:
                    self.send(http, s)
                time.sleep(0.2)

    def check(self, limit: float = 120) -> dict[str, int]:
        """Every submit has exactly one job, every job ends, and every result is right; the
        counts by final status."""
        assert not self.failures, self.failures
        self.settle()
        ids = [s.job_id for s in self.submits]
        assert len(set(ids)) == len(ids), "two submits share a job"
        deadline = time.monotonic() + limit
        final: dict[str, dict[str, object]] = {}
        with httpx.Client(timeout=httpx.Timeout(30.0)) as http:
            for s in self.submits:
                while True:
                    r = http.get(
                        f"{self.base_url}/v1/jobs/{s.job_id}?wait=10",
                        headers=self.headers(s.tenant),
                    )
                    assert r.status_code == 200, (s, r.text)  # never lost
                    job = r.json()
                    if job["status"] in TERMINAL:
                        break
                    assert time.monotonic() < deadline, f"{s.job_id} stuck in {job['status']}"
                final[str(s.job_id)] = job
                # A replay of the submit returns its job, never a second one.
                again = http.post(
                    f"{self.base_url}/v1/jobs", json=s.body, headers=self.headers(s.tenant, s.key)
                )
                assert (again.status_code, again.json()["job_id"]) == (200, s.job_id), again.text
                if job["status"] == "COMPLETED":
                    result = job["result"]
                    if s.prints is not None:
                        assert result["stdout"] == f"{s.prints}\n", (s, result)
                    else:
                        assert isinstance(result.get("text"), str), (s, result)
                elif job["status"] == "CANCELED":
                    assert s.job_id in self.canceled or job["cancel_reason"] == "chaos", job
                else:
                    # Only a job the crash interrupted (or a cancel that caught it) fails.
                    error = job["error"] or {}
                    assert error.get("type") in ("interrupted", "canceled"), job
        counts: dict[str, int] = {}
        for job in final.values():
            counts[str(job["status"])] = counts.get(str(job["status"]), 0) + 1
        return counts
