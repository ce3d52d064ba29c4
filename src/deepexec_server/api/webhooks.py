"""Webhooks under /v1 (docs/api.md, "Webhooks"): a tenant's endpoints, the key of its jobs'
own URLs (``job-urls``), and a job's delivery log."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from deepexec_sdk.types import (
    WebhookDeletedResponse,
    WebhookDeliveryListResponse,
    WebhookEndpointListResponse,
    WebhookEndpointRequest,
    WebhookEndpointResponse,
    WebhookEndpointUpdate,
)

from ..views import webhook_delivery, webhook_endpoint
from .routes import _ERRORS, Svc, Tenant, require_json

router = APIRouter(prefix="/v1", responses=_ERRORS, tags=["Webhooks"])


@router.post(
    "/webhooks",
    status_code=201,
    response_model=WebhookEndpointResponse,
    dependencies=[Depends(require_json)],
    summary="Add a webhook endpoint",
)
async def create_webhook(
    body: WebhookEndpointRequest, tenant_id: Tenant, svc: Svc
) -> WebhookEndpointResponse:
    """A URL that receives the end of every job of this tenant (of the `events` listed),
    signed with the endpoint's own key, returned here as `secret`."""
    made = await svc.engine.create_webhook(tenant_id, body.url, body.events)
    return webhook_endpoint(made)


@router.get(
    "/webhooks", response_model=WebhookEndpointListResponse, summary="List webhook endpoints"
)
async def list_webhooks(tenant_id: Tenant, svc: Svc) -> WebhookEndpointListResponse:
    """The tenant's endpoints, oldest first, without their keys (read one to see its key)."""
    found = await svc.engine.list_webhooks(tenant_id)
    return WebhookEndpointListResponse(
        endpoints=[webhook_endpoint(e, with_secret=False) for e in found]
    )


@router.get(
    "/webhooks/{endpoint_id}",
    response_model=WebhookEndpointResponse,
    summary="Get a webhook endpoint and its key",
)
async def get_webhook(endpoint_id: str, tenant_id: Tenant, svc: Svc) -> WebhookEndpointResponse:
    """An endpoint with its key. `job-urls` is the key that signs the deliveries to the jobs'
    own `webhook_url` (made on first read)."""
    return webhook_endpoint(await svc.engine.get_webhook(tenant_id, endpoint_id))


@router.patch(
    "/webhooks/{endpoint_id}",
    response_model=WebhookEndpointResponse,
    dependencies=[Depends(require_json)],
    summary="Change a webhook endpoint",
)
async def update_webhook(
    endpoint_id: str, body: WebhookEndpointUpdate, tenant_id: Tenant, svc: Svc
) -> WebhookEndpointResponse:
    """Change its URL or events; `enabled: true` re-enables it after a 410 disabled it."""
    changed = await svc.engine.update_webhook(
        tenant_id, endpoint_id, url=body.url, events=body.events, enabled=body.enabled
    )
    return webhook_endpoint(changed)


@router.post(
    "/webhooks/{endpoint_id}/rotate-secret",
    response_model=WebhookEndpointResponse,
    summary="Rotate a webhook endpoint's key",
)
async def rotate_webhook_secret(
    endpoint_id: str, tenant_id: Tenant, svc: Svc
) -> WebhookEndpointResponse:
    """A new key. The previous one keeps signing beside it (two signatures per message)
    until `previous_until`, so receivers can switch without losing a message."""
    return webhook_endpoint(await svc.engine.rotate_webhook_secret(tenant_id, endpoint_id))


@router.delete(
    "/webhooks/{endpoint_id}",
    response_model=WebhookDeletedResponse,
    summary="Delete a webhook endpoint",
)
async def delete_webhook(endpoint_id: str, tenant_id: Tenant, svc: Svc) -> WebhookDeletedResponse:
    """Delete it; its pending deliveries are given up."""
    await svc.engine.delete_webhook(tenant_id, endpoint_id)
    return WebhookDeletedResponse(id=endpoint_id, deleted=True)


@router.get(
    "/jobs/{job_id}/webhooks",
    response_model=WebhookDeliveryListResponse,
    summary="A job's webhook deliveries",
)
async def job_webhooks(job_id: str, tenant_id: Tenant, svc: Svc) -> WebhookDeliveryListResponse:
    """Every delivery of the job's end: where, its state, each attempt (status code or
    error, duration) and when the next one is due."""
    found = await svc.engine.job_webhooks(tenant_id, job_id)
    return WebhookDeliveryListResponse(
        job_id=job_id, deliveries=[webhook_delivery(d) for d in found]
    )
