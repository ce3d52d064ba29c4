"""The SQLite store's webhook endpoints and deliveries (``SQLiteStore`` inherits
``SQLiteWebhooks``). The deliveries themselves are written by the ``jobs_webhooks`` trigger
(``sql/sqlite_0005_webhooks.sql``) when a job ends; this is the sender's side of the outbox."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from datetime import datetime

from ..domain import AttemptOutcome, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from ._codec import (
    ENDPOINT_COLUMNS,
    attempt_from_fields,
    delivery_from_fields,
    endpoint_from_fields,
    endpoint_to_fields,
    ts_to_text,
)
from ._sqlite_db import SQLiteDatabase, fetch_one, from_db, marks, to_db

_INSERT_ENDPOINT = (
    f"INSERT INTO webhook_endpoints ({', '.join(ENDPOINT_COLUMNS)}) "
    f"VALUES ({marks(len(ENDPOINT_COLUMNS))})"
)
_SAVE_ENDPOINT = (
    "UPDATE webhook_endpoints SET "
    + ", ".join(f"{c} = ?" for c in ENDPOINT_COLUMNS if c not in ("id", "tenant_id"))
    + " WHERE id = ? AND tenant_id = ?"
)
_GIVE_UP = (
    "UPDATE webhook_deliveries SET state = 'failed', next_attempt_at = NULL, last_error = ?, "
    "updated_at = ?, lease_owner = NULL, lease_expires_at = NULL "
    "WHERE endpoint_id = ? AND state = 'pending'"
)
_CLAIM_WHERE = (
    "id IN (SELECT id FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at <= ? "
    "AND (lease_expires_at IS NULL OR lease_expires_at <= ?) "
    "ORDER BY next_attempt_at, id LIMIT ?)"
)


def _endpoint_values(endpoint: WebhookEndpoint) -> list[object]:
    return list(to_db(endpoint_to_fields(endpoint)).values())


def _transaction(conn: sqlite3.Connection, statements: list[tuple[str, list[object]]]) -> int:
    """Run ``statements`` in one write transaction; the rows the first one changed."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        changed = conn.execute(*statements[0]).rowcount
        if changed:
            for statement in statements[1:]:
                conn.execute(*statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return changed


class SQLiteWebhooks(SQLiteDatabase):
    """See ``Store``'s webhook methods."""

    async def create_endpoint(self, endpoint: WebhookEndpoint) -> None:
        values = _endpoint_values(endpoint)
        await self._run(lambda conn: conn.execute(_INSERT_ENDPOINT, values))

    async def save_endpoint(self, endpoint: WebhookEndpoint) -> WebhookEndpoint | None:
        fields = to_db(endpoint_to_fields(endpoint))
        values = [v for k, v in fields.items() if k not in ("id", "tenant_id")]
        params = [*values, endpoint.id, endpoint.tenant_id]
        changed = await self._run(lambda conn: conn.execute(_SAVE_ENDPOINT, params).rowcount)
        return endpoint if changed else None

    async def get_endpoint(self, endpoint_id: str, tenant_id: str) -> WebhookEndpoint | None:
        row = await self._read_one(
            "SELECT * FROM webhook_endpoints WHERE id = ? AND tenant_id = ?",
            [endpoint_id, tenant_id],
        )
        return None if row is None else endpoint_from_fields(from_db(row))

    async def list_endpoints(self, tenant_id: str) -> list[WebhookEndpoint]:
        rows = await self._run(
            lambda conn: conn.execute(
                "SELECT * FROM webhook_endpoints WHERE tenant_id = ? AND url IS NOT NULL "
                "ORDER BY created_at, id",
                [tenant_id],
            ).fetchall()
        )
        return [endpoint_from_fields(from_db(r)) for r in rows]

    async def delete_endpoint(self, endpoint_id: str, tenant_id: str, now: datetime) -> bool:
        at = ts_to_text(now)
        statements: list[tuple[str, list[object]]] = [
            (
                "DELETE FROM webhook_endpoints WHERE id = ? AND tenant_id = ? AND url IS NOT NULL",
                [endpoint_id, tenant_id],
            ),
            (_GIVE_UP, ["the endpoint was deleted", at, endpoint_id]),
        ]
        return bool(await self._run(lambda conn: _transaction(conn, statements)))

    async def job_url_key(self, fresh: WebhookEndpoint) -> WebhookEndpoint:
        values = _endpoint_values(fresh)

        def op(conn: sqlite3.Connection) -> sqlite3.Row | None:
            conn.execute(_INSERT_ENDPOINT + " ON CONFLICT DO NOTHING", values)
            return fetch_one(
                conn,
                "SELECT * FROM webhook_endpoints WHERE tenant_id = ? AND url IS NULL",
                [fresh.tenant_id],
            )

        row = await self._run(op)
        if row is None:
            raise RuntimeError(f"the webhook key of tenant {fresh.tenant_id!r} vanished")
        return endpoint_from_fields(from_db(row))

    async def disable_endpoint(self, endpoint_id: str, reason: str, now: datetime) -> None:
        at = ts_to_text(now)
        statements: list[tuple[str, list[object]]] = [
            (
                "UPDATE webhook_endpoints SET disabled_at = ?, disabled_reason = ?, "
                "updated_at = ? WHERE id = ? AND disabled_at IS NULL",
                [at, reason, at, endpoint_id],
            ),
            (_GIVE_UP, [f"the endpoint was disabled: {reason}", at, endpoint_id]),
        ]
        await self._run(lambda conn: _transaction(conn, statements))

    async def claim_deliveries(
        self, owner: str, lease_expires_at: datetime, now: datetime, limit: int
    ) -> list[WebhookDelivery]:
        at, until = ts_to_text(now), ts_to_text(lease_expires_at)
        rows = await self._run(
            lambda conn: self._update(
                conn,
                "webhook_deliveries",
                "lease_owner = ?, lease_expires_at = ?",
                [owner, until],
                _CLAIM_WHERE,
                [at, at, limit],
            )
        )
        found = [delivery_from_fields(from_db(r)) for r in rows]
        return sorted(found, key=lambda d: (d.next_attempt_at or now, d.id))

    async def finish_attempt(
        self, delivery: WebhookDelivery, owner: str, outcome: AttemptOutcome, now: datetime
    ) -> bool:
        at = ts_to_text(now)
        attempt = outcome.attempt
        delivered = at if outcome.state == "delivered" else None
        nxt = None if outcome.next_attempt_at is None else ts_to_text(outcome.next_attempt_at)
        statements: list[tuple[str, list[object]]] = [
            (
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt_at = ?, "
                "body = COALESCE(body, ?), last_status_code = ?, last_error = ?, "
                "delivered_at = COALESCE(delivered_at, ?), updated_at = ?, "
                "lease_owner = NULL, lease_expires_at = NULL "
                "WHERE id = ? AND lease_owner = ? AND state = 'pending'",
                [
                    outcome.state,
                    attempt.attempt,
                    nxt,
                    outcome.body,
                    attempt.status_code,
                    attempt.error,
                    delivered,
                    at,
                    delivery.id,
                    owner,
                ],
            ),
            (
                "INSERT INTO webhook_attempts (delivery_id, attempt, started_at, duration_ms, "
                "status_code, error_message) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    delivery.id,
                    attempt.attempt,
                    ts_to_text(attempt.started_at),
                    attempt.duration_ms,
                    attempt.status_code,
                    attempt.error,
                ],
            ),
        ]
        if outcome.disable_endpoint and delivery.endpoint_id:
            reason = outcome.disable_endpoint
            statements += [
                (
                    "UPDATE webhook_endpoints SET disabled_at = ?, disabled_reason = ?, "
                    "updated_at = ? WHERE id = ? AND disabled_at IS NULL",
                    [at, reason, at, delivery.endpoint_id],
                ),
                (_GIVE_UP, [f"the endpoint was disabled: {reason}", at, delivery.endpoint_id]),
            ]
        return bool(await self._run(lambda conn: _transaction(conn, statements)))

    async def next_delivery_at(self) -> datetime | None:
        row = await self._read_one(
            "SELECT MIN(max(next_attempt_at, COALESCE(lease_expires_at, next_attempt_at))) "
            "FROM webhook_deliveries WHERE state = 'pending'",
            [],
        )
        if row is None or row[0] is None:
            return None
        return datetime.fromisoformat(row[0])

    async def job_deliveries(self, job_id: str, tenant_id: str) -> list[WebhookDelivery]:
        def op(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
            rows = conn.execute(
                "SELECT * FROM webhook_deliveries WHERE job_id = ? AND tenant_id = ? "
                "ORDER BY created_at, id",
                [job_id, tenant_id],
            ).fetchall()
            ids = [r["id"] for r in rows]
            attempts = conn.execute(
                f"SELECT * FROM webhook_attempts WHERE delivery_id IN ({marks(len(ids))}) "
                "ORDER BY delivery_id, attempt",
                ids,
            ).fetchall()
            return rows, attempts

        rows, attempts = await self._run(op)
        logs: defaultdict[str, list[WebhookAttempt]] = defaultdict(list)
        for a in attempts:
            logs[a["delivery_id"]].append(attempt_from_fields(from_db(a)))
        return [delivery_from_fields(from_db(r), logs[r["id"]]) for r in rows]
