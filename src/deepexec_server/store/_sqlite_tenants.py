"""The SQLite store's tenants: the operator's weights and quotas, and what each tenant has
queued and running (``SQLiteStore`` inherits ``SQLiteTenants``)."""

from __future__ import annotations

import dataclasses

from ..domain import Tenant, TenantUsage
from ._codec import TENANT_COLUMNS, TENANT_UPSERT, TENANT_USAGE, tenant_from_fields, usage_from_rows
from ._sqlite_db import SQLiteDatabase, from_db, marks, to_db

_SAVE = (
    f"INSERT INTO tenants ({', '.join(TENANT_COLUMNS)}) VALUES ({marks(len(TENANT_COLUMNS))}) "
    f"{TENANT_UPSERT} RETURNING *"
)
_SAVE_OLD = _SAVE.removesuffix(" RETURNING *")


class SQLiteTenants(SQLiteDatabase):
    """See ``Store``'s tenant methods."""

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = await self._read_one("SELECT * FROM tenants WHERE tenant_id = ?", [tenant_id])
        return None if row is None else tenant_from_fields(from_db(row))

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._run(
            lambda conn: conn.execute("SELECT * FROM tenants ORDER BY tenant_id").fetchall()
        )
        return [tenant_from_fields(from_db(r)) for r in rows]

    async def save_tenant(self, tenant: Tenant) -> Tenant:
        values = list(to_db(dataclasses.asdict(tenant)).values())
        if self._returning:
            row = await self._run(lambda conn: conn.execute(_SAVE, values).fetchone())
            return tenant_from_fields(from_db(row))
        await self._run(lambda conn: conn.execute(_SAVE_OLD, values))
        saved = await self.get_tenant(tenant.tenant_id)
        assert saved is not None
        return saved

    async def delete_tenant(self, tenant_id: str) -> bool:
        return bool(
            await self._run(
                lambda conn: (
                    conn.execute("DELETE FROM tenants WHERE tenant_id = ?", [tenant_id]).rowcount
                )
            )
        )

    async def count_pending(self, tenant_id: str | None = None) -> int:
        if tenant_id is None:
            row = await self._read_one("SELECT count(*) FROM jobs WHERE status = 'PENDING'", [])
        else:
            row = await self._read_one(
                "SELECT count(*) FROM jobs WHERE status = 'PENDING' AND tenant_id = ?",
                [tenant_id],
            )
        return int(row[0]) if row is not None else 0

    async def tenant_usage(self) -> dict[str, TenantUsage]:
        rows = await self._run(lambda conn: conn.execute(TENANT_USAGE).fetchall())
        return usage_from_rows((r["tenant_id"], r["status"], r["n"]) for r in rows)
