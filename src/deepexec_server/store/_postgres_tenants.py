"""The PostgreSQL store's tenants: the operator's weights and quotas, and what each tenant has
queued and running (``PostgresStore`` inherits ``PostgresTenants``)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from ..domain import Tenant, TenantUsage
from ._codec import TENANT_COLUMNS, TENANT_UPSERT, TENANT_USAGE, tenant_from_fields, usage_from_rows
from ._postgres_sql import jsonb, param

Conn = AsyncConnection[DictRow]

_SAVE = (
    f"INSERT INTO tenants ({', '.join(TENANT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(TENANT_COLUMNS))}) "
    f"{TENANT_UPSERT} RETURNING *"
)


class PostgresTenants:
    """See ``Store``'s tenant methods."""

    def _connection(self) -> contextlib.AbstractAsyncContextManager[Conn]:
        raise NotImplementedError  # ``PostgresStore._connection``

    async def _fetch(self, query: str, params: list[Any]) -> list[DictRow]:
        async with self._connection() as conn:
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        rows = await self._fetch("SELECT * FROM tenants WHERE tenant_id = %s", [tenant_id])
        return tenant_from_fields(rows[0]) if rows else None

    async def list_tenants(self) -> list[Tenant]:
        return [
            tenant_from_fields(r)
            for r in await self._fetch("SELECT * FROM tenants ORDER BY tenant_id", [])
        ]

    async def save_tenant(self, tenant: Tenant) -> Tenant:
        values = [
            jsonb(v) if isinstance(v, Mapping) else param(v)
            for v in dataclasses.asdict(tenant).values()
        ]
        return tenant_from_fields((await self._fetch(_SAVE, values))[0])

    async def delete_tenant(self, tenant_id: str) -> bool:
        rows = await self._fetch(
            "DELETE FROM tenants WHERE tenant_id = %s RETURNING tenant_id", [tenant_id]
        )
        return bool(rows)

    async def count_pending(self, tenant_id: str | None = None) -> int:
        if tenant_id is None:
            rows = await self._fetch("SELECT count(*) AS n FROM jobs WHERE status = 'PENDING'", [])
        else:
            rows = await self._fetch(
                "SELECT count(*) AS n FROM jobs WHERE status = 'PENDING' AND tenant_id = %s",
                [tenant_id],
            )
        return int(rows[0]["n"])

    async def tenant_usage(self) -> dict[str, TenantUsage]:
        rows = await self._fetch(TENANT_USAGE, [])
        return usage_from_rows((r["tenant_id"], r["status"], r["n"]) for r in rows)
