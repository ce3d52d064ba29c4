"""The sender: every server process (``deepexec serve`` and ``deepexec worker``) runs one,
taking due deliveries from the store's outbox and trying them.

- **Durable.** A delivery is a row, written with the job's end (``store.base``): a crash
  loses none. A sender leases what it takes; a lease outlives the longest attempt, so a
  sender that died mid-attempt only delays its deliveries until their leases expire, and
  another process (or the same server, restarted) tries them again. A receiver may thus see
  one message twice; ``webhook-id`` tells it so.
- **Woken, not polling.** A job's end (in this process or, on PostgreSQL, in another) wakes
  the sender; otherwise it sleeps until the soonest delivery is due, and checks the store
  every ``IDLE_CHECK_S`` at most as a safety net.
- **Retries.** 2xx is delivered. 410 gives up and disables the tenant's endpoint. Anything
  else (3xx, which is never followed, 4xx, 5xx, a timeout, a refused connection) is retried
  after ``Settings.webhook_retry_schedule``'s next wait, jittered, or after the answer's
  ``Retry-After`` when it asks for longer; past the schedule's end the delivery is given up.
  A target the SSRF guard refuses is given up at once: retrying would not change the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import httpx

from ..domain import (
    AttemptOutcome,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    new_endpoint_id,
    utcnow,
)
from ..errors import StoreError
from ..metrics import Metrics
from ..settings import Settings
from ..store import Store
from . import guard
from .messages import method_of, new_secret, render, signed_headers

log = logging.getLogger("deepexec_server.webhooks")

#: Longest sleep between two looks at the store when nothing wakes the sender.
IDLE_CHECK_S = 10.0
#: A lease outlives the attempt's timeout by this much.
LEASE_MARGIN_S = 30.0
#: The longest ``Retry-After`` honoured (a day, the schedule's longest wait).
MAX_RETRY_AFTER_S = 86400.0
#: Jitter: each wait is scaled by a random factor within 1 ± this.
JITTER = 0.1
USER_AGENT = "DeepExec-Webhooks/1"


def _retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds asked by a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def job_url_key(tenant_id: str, now: datetime) -> WebhookEndpoint:
    """A fresh key for a tenant's jobs' own URLs (stored unless it has one already)."""
    return WebhookEndpoint(
        id=new_endpoint_id(),
        tenant_id=tenant_id,
        url=None,
        events=None,
        secret=new_secret(),
        created_at=now,
        updated_at=now,
    )


class WebhookSender:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        describe: Callable[[], Mapping[str, Any]],
    ) -> None:
        """``describe``: the code executor's ``describe()`` (a Judge0 callback's languages)."""
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._describe = describe
        self._allowed = guard.networks(settings.webhook_allow_networks)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def job_ended(self, job_id: str) -> None:
        """A job ended somewhere: it may have deliveries."""
        self._wake.set()

    def start(self) -> None:
        timeout = self.settings.webhook_timeout_seconds
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            trust_env=False,  # no proxy from the environment: the guard checked the address
            limits=httpx.Limits(max_connections=self.settings.webhook_concurrency),
        )
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="webhooks")

    async def stop(self) -> None:
        """Stop taking deliveries; attempts under way are abandoned (their leases expire and
        they are tried again)."""
        tasks = [t for t in (self._task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = await self._round()
            except StoreError:
                log.warning("webhook sender: the store failed; trying again shortly")
                delay = 1.0
            if delay > 0:
                # asyncio.timeout, not wait_for: on 3.11 wait_for returns the event's result
                # and drops a cancel that arrives as the event is set, so stop() never ends.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()

    async def _round(self) -> float:
        """Start what is due and there is room for; how long to sleep before looking again."""
        now = utcnow()
        due = await self.store.next_delivery_at()
        if due is None:
            return IDLE_CHECK_S
        if due > now:
            return min(IDLE_CHECK_S, (due - now).total_seconds())
        free = self.settings.webhook_concurrency - len(self._in_flight)
        if free <= 0:
            return IDLE_CHECK_S  # a finishing attempt wakes the loop
        lease = now + timedelta(seconds=self.settings.webhook_timeout_seconds + LEASE_MARGIN_S)
        claimed = await self.store.claim_deliveries(self._owner, lease, now, free)
        for delivery in claimed:
            task = asyncio.get_running_loop().create_task(self._attempt(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._done)
        return 0.0  # the next look sleeps until what is not leased is due

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook attempt failed", exc_info=task.exception())

    # --- one attempt ----------------------------------------------------------------------------

    async def _attempt(self, delivery: WebhookDelivery) -> None:
        async with self._slots:
            outcome = await self._try(delivery)
        self.metrics.webhook_attempts.labels(
            "retry" if outcome.state == "pending" else outcome.state
        ).inc()
        if not await self.store.finish_attempt(delivery, self._owner, outcome, utcnow()):
            log.warning("webhook %s: lease lost before its attempt was recorded", delivery.id)

    async def _keys(self, delivery: WebhookDelivery, now: datetime) -> list[str] | None:
        if delivery.endpoint_id is None:
            key = await self.store.job_url_key(job_url_key(delivery.tenant_id, now))
        else:
            found = await self.store.get_endpoint(delivery.endpoint_id, delivery.tenant_id)
            if found is None or found.disabled_at is not None:
                return None
            key = found
        return key.secrets_at(now)

    async def _try(self, delivery: WebhookDelivery) -> AttemptOutcome:
        now = utcnow()
        number = delivery.attempts + 1
        started = time.monotonic()

        def outcome(
            status: int | None, error: str | None, *, retry: bool, after: float | None = None
        ) -> AttemptOutcome:
            attempt = WebhookAttempt(
                attempt=number,
                started_at=now,
                duration_ms=round((time.monotonic() - started) * 1000, 3),
                status_code=status,
                error=error,
            )
            if status is not None and 200 <= status < 300:
                return AttemptOutcome(attempt, "delivered", None, body)
            if status == 410:
                reason = f"{delivery.url} answered 410 Gone"
                return AttemptOutcome(attempt, "failed", None, body, disable_endpoint=reason)
            wait = self._wait_after(number, after) if retry else None
            if wait is None:
                return AttemptOutcome(attempt, "failed", None, body)
            return AttemptOutcome(attempt, "pending", utcnow() + timedelta(seconds=wait), body)

        body = delivery.body or ""
        if delivery.body is None:
            job = await self.store.get_job(delivery.job_id, delivery.tenant_id)
            if job is None:
                return outcome(None, "the job no longer exists", retry=False)
            try:
                body = render(delivery, job, self._describe())
            except Exception as exc:  # a bug here must not retry forever
                log.exception("webhook %s: cannot render its body", delivery.id)
                return outcome(None, f"cannot render the message: {exc}", retry=False)
        keys = await self._keys(delivery, now)
        if keys is None:
            return outcome(None, "the endpoint was deleted or disabled", retry=False)
        try:
            target = await guard.resolve(delivery.url, self._allowed)
        except guard.UnsafeTarget as exc:
            return outcome(None, f"refused: {exc}", retry=False)
        except OSError as exc:
            return outcome(None, f"cannot resolve the host: {exc}", retry=True)
        headers = {
            **signed_headers(delivery.id, body, keys, now),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": target.host,
        }
        extensions = {"sni_hostname": target.sni} if target.https else {}
        client = self._client
        assert client is not None, "the sender is not started"
        try:
            async with client.stream(
                method_of(delivery),
                target.url,
                content=body.encode(),
                headers=headers,
                extensions=extensions,
            ) as answer:
                status = answer.status_code
                retry_after = _retry_after(answer.headers.get("retry-after"), utcnow())
                location = answer.headers.get("location")
        except httpx.TimeoutException:
            timeout = self.settings.webhook_timeout_seconds
            return outcome(None, f"no answer within {timeout:g} s", retry=True)
        except httpx.HTTPError as exc:
            return outcome(None, f"{type(exc).__name__}: {exc}".rstrip(": "), retry=True)
        error = None
        if 300 <= status < 400:
            error = f"redirect to {location!r} not followed" if location else "redirect"
        elif not 200 <= status < 300 and status != 410:
            error = f"answered {status}"
        return outcome(status, error, retry=True, after=retry_after)

    def _wait_after(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before the attempt after ``attempt`` (1-based), or None: give up."""
        schedule = self.settings.webhook_retry_schedule
        if attempt > len(schedule):
            return None
        wait = schedule[attempt - 1] * random.uniform(1 - JITTER, 1 + JITTER)
        if retry_after is not None:
            wait = max(wait, min(retry_after, MAX_RETRY_AFTER_S))
        return wait
