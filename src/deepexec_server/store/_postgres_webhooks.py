"""The PostgreSQL store's webhook endpoints and deliveries (``PostgresStore`` inherits
``PostgresWebhooks``). The deliveries themselves are written by the ``jobs_webhooks`` trigger
(``sql/postgres_0006_webhooks.sql``) when a job ends; this is the sender's side of the outbox."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from ..domain import AttemptOutcome, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from ._codec import (
    ENDPOINT_COLUMNS,
    attempt_from_fields,
    delivery_from_fields,
    endpoint_from_fields,
    endpoint_to_fields,
)
from ._postgres_sql import param

Conn = AsyncConnection[DictRow]

_INSERT_ENDPOINT = (
    f"INSERT INTO webhook_endpoints ({', '.join(ENDPOINT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(ENDPOINT_COLUMNS))})"
)
_INSERT_IF_NONE = _INSERT_ENDPOINT + " ON CONFLICT DO NOTHING"
_SAVE_ENDPOINT = (
    "UPDATE webhook_endpoints SET "
    + ", ".join(f"{c} = %s" for c in ENDPOINT_COLUMNS if c not in ("id", "tenant_id"))
    + " WHERE id = %s AND tenant_id = %s"
)
_GIVE_UP = (
    "UPDATE webhook_deliveries SET state = 'failed', next_attempt_at = NULL, last_error = %s, "
    "updated_at = %s, lease_owner = NULL, lease_expires_at = NULL "
    "WHERE endpoint_id = %s AND state = 'pending'"
)
_DISABLE = (
    "UPDATE webhook_endpoints SET disabled_at = %s, disabled_reason = %s, updated_at = %s "
    "WHERE id = %s AND disabled_at IS NULL"
)
_CLAIM = (
    "UPDATE webhook_deliveries SET lease_owner = %s, lease_expires_at = %s "
    "WHERE id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' "
    "AND next_attempt_at <= %s AND (lease_expires_at IS NULL OR lease_expires_at <= %s) "
    "ORDER BY next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING *"
)
_FINISH = (
    "UPDATE webhook_deliveries SET state = %s, attempts = %s, next_attempt_at = %s, "
    "body = COALESCE(body, %s), last_status_code = %s, last_error = %s, "
    "delivered_at = COALESCE(delivered_at, %s), updated_at = %s, "
    "lease_owner = NULL, lease_expires_at = NULL "
    "WHERE id = %s AND lease_owner = %s AND state = 'pending'"
)
_LOG_ATTEMPT = (
    "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, status_code, "
    "error_message) VALUES (%s, %s, %s, %s, %s, %s)"
)


def _endpoint_values(endpoint: WebhookEndpoint) -> list[Any]:
    return [param(v) for v in endpoint_to_fields(endpoint).values()]


class PostgresWebhooks:
    """See ``Store``'s webhook methods."""

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        raise NotImplementedError  # ``PostgresStore._connection``

    async def create_endpoint(self, endpoint: WebhookEndpoint) -> None:
        async with self._connection() as conn:
            await conn.execute(_INSERT_ENDPOINT, _endpoint_values(endpoint))

    async def save_endpoint(self, endpoint: WebhookEndpoint) -> WebhookEndpoint | None:
        values = [
            param(v)
            for k, v in endpoint_to_fields(endpoint).items()
            if k not in ("id", "tenant_id")
        ]
        async with self._connection() as conn:
            cur = await conn.execute(_SAVE_ENDPOINT, [*values, endpoint.id, endpoint.tenant_id])
            return endpoint if cur.rowcount else None

    async def get_endpoint(self, endpoint_id: str, tenant_id: str) -> WebhookEndpoint | None:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM webhook_endpoints WHERE id = %s AND tenant_id = %s",
                [endpoint_id, tenant_id],
            )
            row = await cur.fetchone()
        return None if row is None else endpoint_from_fields(row)

    async def list_endpoints(self, tenant_id: str) -> list[WebhookEndpoint]:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM webhook_endpoints WHERE tenant_id = %s AND url IS NOT NULL "
                "ORDER BY created_at, id",
                [tenant_id],
            )
            return [endpoint_from_fields(r) for r in await cur.fetchall()]

    async def delete_endpoint(self, endpoint_id: str, tenant_id: str, now: datetime) -> bool:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM webhook_endpoints WHERE id = %s AND tenant_id = %s "
                "AND url IS NOT NULL",
                [endpoint_id, tenant_id],
            )
            if not cur.rowcount:
                return False
            await conn.execute(_GIVE_UP, ["the endpoint was deleted", now, endpoint_id])
            return True

    async def job_url_key(self, fresh: WebhookEndpoint) -> WebhookEndpoint:
        async with self._connection() as conn:
            await conn.execute(
                _INSERT_ENDPOINT + " ON CONFLICT DO NOTHING", _endpoint_values(fresh)
            )
            cur = await conn.execute(
                "SELECT * FROM webhook_endpoints WHERE tenant_id = %s AND url IS NULL",
                [fresh.tenant_id],
            )
            row = await cur.fetchone()
        if row is None:
            raise RuntimeError(f"the webhook key of tenant {fresh.tenant_id!r} vanished")
        return endpoint_from_fields(row)

    async def disable_endpoint(self, endpoint_id: str, reason: str, now: datetime) -> None:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(_DISABLE, [now, reason, now, endpoint_id])
            if cur.rowcount:
                await conn.execute(
                    _GIVE_UP, [f"the endpoint was disabled: {reason}", now, endpoint_id]
                )

    async def claim_deliveries(
        self, owner: str, lease_expires_at: datetime, now: datetime, limit: int
    ) -> list[WebhookDelivery]:
        async with self._connection() as conn:
            cur = await conn.execute(_CLAIM, [owner, lease_expires_at, now, now, limit])
            found = [delivery_from_fields(r) for r in await cur.fetchall()]
        return sorted(found, key=lambda d: (d.next_attempt_at or now, d.id))

    async def finish_attempt(
        self, delivery: WebhookDelivery, owner: str, outcome: AttemptOutcome, now: datetime
    ) -> bool:
        attempt = outcome.attempt
        delivered = now if outcome.state == "delivered" else None
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                _FINISH,
                [
                    outcome.state,
                    attempt.attempt,
                    outcome.next_attempt_at,
                    outcome.body,
                    attempt.status_code,
                    attempt.error,
                    delivered,
                    now,
                    delivery.id,
                    owner,
                ],
            )
            if not cur.rowcount:
                return False
            await conn.execute(
                _LOG_ATTEMPT,
                [
                    delivery.id,
                    attempt.attempt,
                    attempt.started_at,
                    attempt.duration_ms,
                    attempt.status_code,
                    attempt.error,
                ],
            )
            if outcome.disable_endpoint and delivery.endpoint_id:
                reason = outcome.disable_endpoint
                cur = await conn.execute(_DISABLE, [now, reason, now, delivery.endpoint_id])
                if cur.rowcount:
                    await conn.execute(
                        _GIVE_UP,
                        [f"the endpoint was disabled: {reason}", now, delivery.endpoint_id],
                    )
            return True

    async def next_delivery_at(self) -> datetime | None:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT MIN(GREATEST(next_attempt_at, lease_expires_at)) AS at "
                "FROM webhook_deliveries "
                "WHERE state = 'pending'"
            )
            row = await cur.fetchone()
        return None if row is None else row["at"]

    async def job_deliveries(self, job_id: str, tenant_id: str) -> list[WebhookDelivery]:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT * FROM webhook_deliveries WHERE job_id = %s AND tenant_id = %s "
                "ORDER BY created_at, id",
                [job_id, tenant_id],
            )
            rows = await cur.fetchall()
            cur = await conn.execute(
                "SELECT * FROM webhook_attempts WHERE delivery_id = ANY(%s) "
                "ORDER BY delivery_id, attempt",
                [[r["id"] for r in rows]],
            )
            attempts = await cur.fetchall()
        logs: defaultdict[str, list[WebhookAttempt]] = defaultdict(list)
        for a in attempts:
            logs[a["delivery_id"]].append(attempt_from_fields(a))
        return [delivery_from_fields(r, logs[r["id"]]) for r in rows]
