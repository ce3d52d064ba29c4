"""A tenant's webhooks as the doors see them: its endpoints (create, list, change, rotate the
key, delete), the key of its jobs' own URLs (``job-urls``), and a job's delivery log.

The deliveries themselves are written by the store when a job ends, and sent by the process's
``webhooks.sender.WebhookSender``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta

from ..domain import (
    JOB_EVENT_TYPES,
    JOB_URLS_ID,
    WebhookDelivery,
    WebhookEndpoint,
    new_endpoint_id,
    utcnow,
)
from ..errors import NotFound, Unprocessable, job_not_found
from ..settings import Settings
from ..webhooks import guard
from ..webhooks.messages import new_secret
from ..webhooks.sender import job_url_key
from .parts import EnginePart

#: Most endpoints (with a URL) one tenant may hold.
MAX_ENDPOINTS = 20


def endpoint_not_found(endpoint_id: str) -> NotFound:
    return NotFound(
        f"no webhook endpoint {endpoint_id!r} for this API key", type="webhook_not_found"
    )


def check_webhook_url(settings: Settings, url: str, loc: Sequence[str | int]) -> str:
    """``url`` if a webhook may be sent there, else ``Unprocessable`` naming ``loc``."""
    try:
        guard.check_url(url, guard.networks(settings.webhook_allow_networks))
    except guard.UnsafeTarget as exc:
        raise Unprocessable(
            f"webhook URL {url!r} cannot be used: {exc}",
            type="invalid_webhook_url",
            details=[{"loc": list(loc), "msg": str(exc)}],
        ) from None
    return url


class WebhookOps(EnginePart):
    def check_webhook_url(self, url: str, loc: Sequence[str | int]) -> str:
        return check_webhook_url(self.settings, url, loc)

    @staticmethod
    def _events(events: Sequence[str] | None) -> tuple[str, ...] | None:
        if events is None:
            return None
        known = set(JOB_EVENT_TYPES.values())
        unknown = [e for e in events if e not in known]
        if unknown:  # the request models refuse these already; a caller in Python may not
            raise Unprocessable(f"unknown webhook event types: {unknown}; known: {sorted(known)}")
        return tuple(dict.fromkeys(events))

    async def create_webhook(
        self, tenant_id: str, url: str, events: Sequence[str] | None
    ) -> WebhookEndpoint:
        self.check_webhook_url(url, ("body", "url"))
        if len(await self.store.list_endpoints(tenant_id)) >= MAX_ENDPOINTS:
            raise Unprocessable(
                f"a tenant may hold {MAX_ENDPOINTS} webhook endpoints; delete one first",
                type="too_many_webhooks",
            )
        now = utcnow()
        endpoint = WebhookEndpoint(
            id=new_endpoint_id(),
            tenant_id=tenant_id,
            url=url,
            events=self._events(events),
            secret=new_secret(),
            created_at=now,
            updated_at=now,
        )
        await self.store.create_endpoint(endpoint)
        return endpoint

    async def list_webhooks(self, tenant_id: str) -> list[WebhookEndpoint]:
        return await self.store.list_endpoints(tenant_id)

    async def get_webhook(self, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
        if endpoint_id == JOB_URLS_ID:
            return await self.store.job_url_key(job_url_key(tenant_id, utcnow()))
        found = await self.store.get_endpoint(endpoint_id, tenant_id)
        if found is None or found.url is None:
            raise endpoint_not_found(endpoint_id)
        return found

    async def update_webhook(
        self,
        tenant_id: str,
        endpoint_id: str,
        *,
        url: str | None = None,
        events: Sequence[str] | None = None,
        enabled: bool | None = None,
    ) -> WebhookEndpoint:
        if endpoint_id == JOB_URLS_ID:
            raise Unprocessable(
                f"{JOB_URLS_ID} has no URL or events to change; only its key can be rotated",
                type="invalid_webhook_update",
            )
        current = await self.get_webhook(tenant_id, endpoint_id)
        now = utcnow()
        disabled_at, reason = current.disabled_at, current.disabled_reason
        if enabled is True:
            disabled_at = reason = None
        elif enabled is False and disabled_at is None:
            disabled_at, reason = now, "disabled by the tenant"
        changed = dataclasses.replace(
            current,
            url=current.url if url is None else self.check_webhook_url(url, ("body", "url")),
            events=current.events if events is None else self._events(events),
            disabled_at=disabled_at,
            disabled_reason=reason,
            updated_at=now,
        )
        saved = await self.store.save_endpoint(changed)
        if saved is None:
            raise endpoint_not_found(endpoint_id)
        return saved

    async def rotate_webhook_secret(self, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
        """A new key; the old one keeps signing beside it for ``webhook_secret_overlap``."""
        current = await self.get_webhook(tenant_id, endpoint_id)
        now = utcnow()
        rotated = dataclasses.replace(
            current,
            secret=new_secret(),
            previous_secret=current.secret,
            previous_until=now + timedelta(seconds=self.settings.webhook_secret_overlap_seconds),
            updated_at=now,
        )
        saved = await self.store.save_endpoint(rotated)
        if saved is None:
            raise endpoint_not_found(endpoint_id)
        return saved

    async def delete_webhook(self, tenant_id: str, endpoint_id: str) -> None:
        if not await self.store.delete_endpoint(endpoint_id, tenant_id, utcnow()):
            raise endpoint_not_found(endpoint_id)

    async def job_webhooks(self, tenant_id: str, job_id: str) -> list[WebhookDelivery]:
        """The job's deliveries with their attempts (``job_not_found`` if it is not the
        tenant's)."""
        if await self.store.get_job(job_id, tenant_id) is None:
            raise job_not_found(job_id)
        return await self.store.job_deliveries(job_id, tenant_id)
