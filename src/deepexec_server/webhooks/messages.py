"""What a delivery sends: its body (by format), the Standard Webhooks headers that sign it,
and the keys that sign it.

- ``standard``: ``POST`` of ``{"type", "timestamp", "data"}`` (Standard Webhooks' payload):
  the event type (``job.completed``, ``job.failed``, ``job.canceled``), when the job ended
  (ISO 8601), and the job's status as ``GET /v1/jobs/{id}`` answers it.
- ``judge0``: ``PUT`` of the submission as Judge0 CE's callback sends it (its default fields,
  base64-encoded), for a job submitted through the Judge0 API with a ``callback_url``.

Every delivery carries ``webhook-id`` (the delivery's id, the same at every attempt),
``webhook-timestamp`` (this attempt's, unix seconds) and ``webhook-signature``: ``v1,`` and
the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` by each key that signs at that moment
(a rotated key keeps signing beside the new one for a while), as the Standard Webhooks
library signs and verifies them.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from math import floor
from typing import Any

from standardwebhooks.webhooks import Webhook

from ..compat import judge0_info, judge0_model
from ..domain import Job, WebhookDelivery
from ..views import job_status


def new_secret() -> str:
    """A fresh signing key: 32 random bytes, base64, with the ``whsec_`` prefix."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def method_of(delivery: WebhookDelivery) -> str:
    return "PUT" if delivery.format == "judge0" else "POST"


def render(delivery: WebhookDelivery, job: Job, described: Mapping[str, Any]) -> str:
    """The body of ``delivery`` (fixed at its first attempt). ``described``: the code
    executor's ``describe()``, for a Judge0 submission's language."""
    status = job_status(job)
    if delivery.format == "judge0":
        languages = judge0_info.language_table(described.get("languages") or [])
        submission = judge0_model.submission(
            status, job.data, languages, judge0_model.DEFAULT_FIELDS, encoded=True
        )
        return _json(submission)
    ended = job.finished_at or job.updated_at
    return _json(
        {
            "type": delivery.event_type,
            "timestamp": ended.isoformat().replace("+00:00", "Z"),
            "data": status.model_dump(mode="json"),
        }
    )


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def signed_headers(
    delivery_id: str, body: str, keys: Sequence[str], now: datetime
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt made at ``now``, signed by each of ``keys``."""
    signatures = " ".join(Webhook(key).sign(delivery_id, now, body) for key in keys)
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(floor(now.timestamp())),
        "webhook-signature": signatures,
    }
