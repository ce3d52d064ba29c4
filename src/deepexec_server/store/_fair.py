"""Fair share between tenants: the one query both stores ask which pending job a free slot
goes to (``Store.claim_next``), in SQL both SQLite and PostgreSQL run.

Within a tenant, its own ``priority`` orders its jobs (higher first, then oldest). Between
tenants, the slot goes to the tenant furthest below its share: its running jobs divided by its
weight (default 1). At equal share it goes to the tenant whose turn it is: the one with the
lowest pass, which each start moves on by 1/weight from the clock (the pass of the last start;
``tenant_turns`` and ``fair_clock``, kept by the ``jobs_fair_turn`` trigger). With one slot
free at a time, when every share is 0, tenants with backlogs so take turns by weight, and a
tenant new to the queue is next. A tenant at its ``max_running`` (0: none) is passed over,
and so is a job type of it at the tenant's ``max_running_by_type`` for that type.

Its cost does not grow with a backlog: the tenants with pending jobs are walked by a skip scan
of ``jobs_pending_by_tenant`` (one index probe per tenant), each tenant's best job of a free
type is one more probe per type, and its running jobs are counted in
``jobs_running_by_tenant`` (a count bounded by the slots). 10,000 jobs queued by one tenant
cost a claim for another as much as an empty queue does, give or take a level of the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..domain import SharePolicy

#: Per dialect: its placeholder, the tenants' walk's index hint, and a tenant's cap on one
#: job type's running jobs read from ``tenants.max_running_by_type`` (JSON; NULL: none).
_DIALECTS = {
    "sqlite": (
        "?",
        "jobs INDEXED BY jobs_pending_by_tenant",
        "json_extract(t.max_running_by_type, '$.\"' || heads.job_type || '\"')",
    ),
    "postgres": ("%s", "jobs", "(t.max_running_by_type ->> heads.job_type)::integer"),
}


def choice_sql(dialect: str, n_types: int) -> str:
    """The SELECT of the id of the job a slot of one of ``n_types`` job types goes to (no row:
    nothing claimable), in ``dialect`` (``sqlite`` or ``postgres``). Parameters:
    ``choice_params``.

    On SQLite the tenants' walk names its index (``INDEXED BY``): without statistics its
    planner prefers ``jobs_queue`` for ``status = 'PENDING'`` and reads every pending job at
    each step (10 ms with a 10,000-job backlog, not 0.3 ms); PostgreSQL's planner, which keeps
    statistics, finds the index itself."""
    mark, pending, type_cap = _DIALECTS[dialect]
    kinds = ", ".join([f"({mark})"] * n_types)
    return f"""
WITH RECURSIVE queued(tenant_id) AS (
    SELECT (SELECT tenant_id FROM {pending} WHERE status = 'PENDING' ORDER BY tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT tenant_id FROM {pending}
            WHERE status = 'PENDING' AND tenant_id > queued.tenant_id
            ORDER BY tenant_id LIMIT 1)
    FROM queued WHERE queued.tenant_id IS NOT NULL
),
kinds(job_type) AS (VALUES {kinds}),
heads AS (
    SELECT queued.tenant_id AS tenant_id, kinds.job_type AS job_type, (
        SELECT j.id FROM jobs AS j
        WHERE j.status = 'PENDING' AND j.tenant_id = queued.tenant_id
            AND j.job_type = kinds.job_type AND j.cancel_requested_at IS NULL
        ORDER BY j.priority DESC, j.created_at, j.id LIMIT 1
    ) AS id
    FROM queued CROSS JOIN kinds
    WHERE queued.tenant_id IS NOT NULL
),
picks AS (
    SELECT heads.tenant_id AS tenant_id, heads.id AS id,
        (SELECT j.priority FROM jobs AS j WHERE j.id = heads.id) AS priority,
        (SELECT j.created_at FROM jobs AS j WHERE j.id = heads.id) AS created_at,
        (SELECT count(*) FROM jobs AS r
         WHERE r.status = 'RUNNING' AND r.tenant_id = heads.tenant_id
            AND r.job_type = heads.job_type) AS type_running,
        (SELECT {type_cap} FROM tenants AS t WHERE t.tenant_id = heads.tenant_id) AS type_cap
    FROM heads
    WHERE heads.id IS NOT NULL
),
loads AS (
    SELECT w.tenant_id AS tenant_id,
        (SELECT count(*) FROM jobs AS r
         WHERE r.status = 'RUNNING' AND r.tenant_id = w.tenant_id) AS running,
        coalesce(t.weight, 1.0) AS weight,
        coalesce(t.max_running, {mark}) AS max_running,
        (SELECT pass FROM tenant_turns AS p WHERE p.tenant_id = w.tenant_id) AS pass,
        (SELECT clock FROM fair_clock) AS clock
    FROM (SELECT DISTINCT tenant_id FROM picks) AS w
    LEFT JOIN tenants AS t ON t.tenant_id = w.tenant_id
),
ranked AS (
    SELECT picks.id AS id, picks.tenant_id AS tenant_id, picks.priority AS priority,
        picks.created_at AS created_at, loads.running / loads.weight AS share,
        CASE WHEN loads.pass > loads.clock THEN loads.pass ELSE loads.clock END AS turn,
        min(picks.created_at) OVER (PARTITION BY picks.tenant_id) AS waiting_since
    FROM picks
    JOIN loads ON loads.tenant_id = picks.tenant_id
    WHERE (loads.max_running <= 0 OR loads.running < loads.max_running)
        AND (picks.type_cap IS NULL OR picks.type_cap <= 0
             OR picks.type_running < picks.type_cap)
)
SELECT id FROM ranked
ORDER BY share, turn, waiting_since, tenant_id, priority DESC, created_at, id
LIMIT 1
"""


def choice_params(types: Sequence[str], policy: SharePolicy) -> list[Any]:
    """``choice_sql``'s parameters, in its order."""
    return [*types, int(policy.max_running)]
