"""Quotas: what a tenant may queue and how fast, and the whole server's back-pressure, checked
as a submission is admitted (``JobService.submit``, batches). Running jobs are capped in the
store's claim (``Store.claim_next``), where fair share between tenants is decided too: a job
past a tenant's ``max_running`` waits in the queue, it is not refused.

A tenant's settings (``deepexec tenants set``, ``Store.get_tenant``) are read at most every
``SETTINGS_TTL_S`` per process, so a change reaches every server within that. Pending counts
are read from the store at most every ``COUNT_TTL_S`` per tenant, plus what this process
admitted since, and read again before a submit is refused (so jobs that started meanwhile
never cause a refusal): exact for one server; with several API servers on one database, each
may overshoot a quota by what the others admitted within that time. The submit rate is a token
bucket per tenant and process (``aiolimiter``'s leaky bucket, the same meter): with N API
servers a tenant may submit N times its rate in all.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from aiolimiter import AsyncLimiter

from ..domain import SharePolicy, Tenant
from ..errors import TooManyRequests, Unavailable
from ..metrics import Metrics
from ..settings import Settings
from ..store import Store

#: How long a tenant's settings read from the store are used before they are read again.
SETTINGS_TTL_S = 2.0
#: How long a pending count read from the store is used (with this process's admissions
#: added) before it is read again.
COUNT_TTL_S = 0.5
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Retry-After of a submit refused because a queue is full: about when a slot frees.
QUEUE_RETRY_AFTER_S = 1.0


@dataclasses.dataclass(slots=True)
class _Count:
    read_at: float
    value: int


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """A tenant's effective limits: its own settings over the server's defaults; 0: none."""

    weight: float
    max_running: int
    max_pending: int
    submit_rate: float
    max_timeout: int
    #: The tenant's caps on a code job's ``data.limits`` (none: the server's maxima only).
    code_limits: Mapping[str, int] = dataclasses.field(default_factory=dict)


class Quotas:
    """One process's quota checks (see the module)."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._tenants: dict[str, tuple[float, Tenant | None]] = {}
        #: Pending counts by tenant; None: every tenant's.
        self._pending: dict[str | None, _Count] = {}
        self._buckets: dict[str, tuple[float, AsyncLimiter]] = {}

    def share_policy(self) -> SharePolicy:
        """What a claim takes for a tenant without its own ``max_running``."""
        return SharePolicy(self.settings.tenant_max_running)

    async def limits(self, tenant_id: str) -> Limits:
        now = time.monotonic()
        cached = self._tenants.get(tenant_id)
        if cached is None or now - cached[0] > SETTINGS_TTL_S:
            cached = (now, await self.store.get_tenant(tenant_id))
            self._tenants[tenant_id] = cached
        return effective_limits(self.settings, cached[1])

    async def admit(self, tenant_id: str, count: int, timeouts: list[int]) -> None:
        """Let ``count`` new jobs of the tenant in (with these timeouts), or raise: a timeout
        past the tenant's ``max_timeout``, a full queue of the tenant's or a submit rate past
        its own is a 429 ``quota_exceeded`` naming the quota (with Retry-After where waiting
        helps, else final); the server's full queue a 503 ``queue_full``. Counts them as
        admitted."""
        limits = await self.limits(tenant_id)
        server_max = self.settings.max_timeout
        if limits.max_timeout and limits.max_timeout < server_max:
            over = [t for t in timeouts if t > limits.max_timeout]
            if over:
                self._rejected(tenant_id, "max_timeout")
                raise TooManyRequests(
                    f"timeout {over[0]} s is over tenant {tenant_id!r}'s max_timeout quota of "
                    f"{limits.max_timeout} s",
                    type="quota_exceeded",
                    details={"quota": "max_timeout", "limit": limits.max_timeout},
                    final=True,  # waiting frees nothing: ask for less
                )
        cap = self.settings.max_pending_jobs
        if cap and (queued := await self._over(None, count, cap)) is not None:
            self._rejected(tenant_id, "queue_full")
            raise Unavailable(
                f"the server's queue is full ({queued} jobs pending, the cap is {cap}); "
                "try again shortly",
                type="queue_full",
                details={"pending": queued, "max_pending_jobs": cap},
                retry_after=QUEUE_RETRY_AFTER_S,
            )
        mine_cap = limits.max_pending
        if mine_cap and (mine := await self._over(tenant_id, count, mine_cap)) is not None:
            self._rejected(tenant_id, "max_pending")
            raise TooManyRequests(
                f"tenant {tenant_id!r} has {mine} jobs pending; its max_pending quota is "
                f"{mine_cap}",
                type="quota_exceeded",
                details={"quota": "max_pending", "limit": mine_cap},
                retry_after=QUEUE_RETRY_AFTER_S,
            )
        if limits.submit_rate:
            bucket = self._bucket(tenant_id, limits.submit_rate)
            if count > bucket.max_rate:  # a batch bigger than the bucket: it never fits
                self._rejected(tenant_id, "submit_rate")
                raise TooManyRequests(
                    f"a batch of {count} jobs is more than tenant {tenant_id!r}'s submit_rate "
                    f"quota of {_rate(limits.submit_rate)} lets in at once "
                    f"({int(bucket.max_rate)}); send smaller batches",
                    type="quota_exceeded",
                    details={"quota": "submit_rate", "limit": limits.submit_rate},
                    final=True,
                )
            if not bucket.has_capacity(count):
                self._rejected(tenant_id, "submit_rate")
                raise TooManyRequests(
                    f"tenant {tenant_id!r} is over its submit_rate quota of "
                    f"{_rate(limits.submit_rate)}",
                    type="quota_exceeded",
                    details={"quota": "submit_rate", "limit": limits.submit_rate},
                    retry_after=max(1.0, math.ceil(count / limits.submit_rate)),
                )
            await bucket.acquire(count)  # has capacity: returns at once
        self.admitted(tenant_id, count)

    def admitted(self, tenant_id: str, count: int) -> None:
        for counted in (self._pending.get(tenant_id), self._pending.get(None)):
            if counted is not None:
                counted.value += count

    def returned(self, tenant_id: str, count: int) -> None:
        """``count`` jobs admitted were not stored after all (a replayed key, a failure)."""
        self.admitted(tenant_id, -count)

    async def queue_full(self) -> str | None:
        """Why the server refuses submits now (its queue is at ``max_pending_jobs``), or None."""
        cap = self.settings.max_pending_jobs
        if not cap:
            return None
        queued = await self._queued(None)
        if queued.value < cap:
            return None
        return f"the queue is full: {queued.value} jobs pending, the cap is {cap}"

    # --- counts -----------------------------------------------------------------------------

    async def _queued(self, tenant_id: str | None, *, fresh: bool = False) -> _Count:
        """The tenant's pending jobs (every tenant's for None), as last read plus what this
        process admitted since; read again when older than ``COUNT_TTL_S`` or ``fresh``."""
        now = time.monotonic()
        counted = self._pending.get(tenant_id)
        if fresh or counted is None or now - counted.read_at > COUNT_TTL_S:
            counted = _Count(now, await self.store.count_pending(tenant_id))
            self._pending[tenant_id] = counted
        return counted

    async def _over(self, tenant_id: str | None, count: int, cap: int) -> int | None:
        """How many are pending (as ``_queued``) if ``count`` more would pass ``cap``, read
        afresh before saying so; None if they fit."""
        queued = await self._queued(tenant_id)
        if queued.value + count > cap:
            queued = await self._queued(tenant_id, fresh=True)
        return queued.value if queued.value + count > cap else None

    def _bucket(self, tenant_id: str, rate: float) -> AsyncLimiter:
        held = self._buckets.get(tenant_id)
        if held is None or held[0] != rate:
            # Holds a second's worth of submits (at least one): a burst of ``rate`` at once,
            # then ``rate`` per second.
            held = (rate, AsyncLimiter(max(1.0, rate), max(1.0, rate) / rate))
            self._buckets[tenant_id] = held
        return held[1]

    def _rejected(self, tenant_id: str, reason: str) -> None:
        self.metrics.submits_rejected.labels(tenant_id, reason).inc()


def effective_limits(settings: Settings, tenant: Tenant | None) -> Limits:
    """The tenant's own settings where it has them (``UNLIMITED``, 0, included), else the
    server's defaults (where 0 is no cap too)."""
    own = tenant or Tenant("", created_at=EPOCH, updated_at=EPOCH)
    return Limits(
        weight=1.0 if own.weight is None else own.weight,
        max_running=_pick(own.max_running, settings.tenant_max_running),
        max_pending=_pick(own.max_pending, settings.tenant_max_pending),
        submit_rate=settings.tenant_submit_rate if own.submit_rate is None else own.submit_rate,
        max_timeout=_pick(own.max_timeout, settings.tenant_max_timeout),
        code_limits=dict(own.code_limits or {}),
    )


def _pick(own: int | None, default: int) -> int:
    return default if own is None else own


def _rate(per_second: float) -> str:
    if per_second >= 1:
        return f"{per_second:g}/s"
    return f"{per_second * 60:g}/min"
