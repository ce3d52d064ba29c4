-- Tenants: an operator's weight and quotas per tenant (a tenant without a row, or a NULL
-- column, takes the server-wide default; a quota of 0 is "no limit"; the weight's default is 1).
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id           TEXT PRIMARY KEY,
    weight              REAL CHECK (weight IS NULL OR weight > 0),
    max_running         INTEGER,
    max_pending         INTEGER,
    submit_rate         REAL,                       -- jobs per second
    max_timeout         INTEGER,
    max_running_by_type TEXT,                       -- JSON {job_type: most running}
    code_limits         TEXT,                       -- JSON {limit: most a code job may ask}
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);

-- Fair share (see store/_fair.py): a free slot goes to the tenant with the fewest running jobs
-- per unit of weight; at a tie, to the one with the lowest pass. Each start moves the
-- tenant's pass on by 1/weight from the clock, the pass of the last start (a tenant new to
-- the queue starts at the clock: no credit for having been idle). So with one slot, two
-- tenants with backlogs take turns by weight, and a newcomer is next.
CREATE TABLE IF NOT EXISTS tenant_turns (
    tenant_id           TEXT PRIMARY KEY,
    pass                REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fair_clock (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    clock               REAL NOT NULL
);
INSERT OR IGNORE INTO fair_clock (id, clock) VALUES (1, 0);

CREATE TRIGGER IF NOT EXISTS jobs_fair_turn AFTER UPDATE OF status ON jobs
WHEN OLD.status = 'PENDING' AND NEW.status = 'RUNNING'
BEGIN
    UPDATE fair_clock SET clock = max(clock, coalesce(
        (SELECT pass FROM tenant_turns WHERE tenant_id = NEW.tenant_id), clock));
    INSERT INTO tenant_turns (tenant_id, pass)
    VALUES (NEW.tenant_id, coalesce((SELECT clock FROM fair_clock), 0)
        + 1.0 / coalesce((SELECT weight FROM tenants WHERE tenant_id = NEW.tenant_id), 1.0))
    ON CONFLICT (tenant_id) DO UPDATE SET pass = excluded.pass;
END;

-- The claim walks the tenants with pending jobs (a skip scan of this index: one probe per
-- tenant, however long a tenant's backlog) and takes each tenant's best job of a type with a
-- free slot (one probe per tenant and type, in the tenant's own priority order).
CREATE INDEX IF NOT EXISTS jobs_pending_by_tenant
    ON jobs (tenant_id, job_type, priority DESC, created_at, id) WHERE status = 'PENDING';
-- Each tenant's running jobs, counted for its share and its max_running quota.
CREATE INDEX IF NOT EXISTS jobs_running_by_tenant ON jobs (tenant_id) WHERE status = 'RUNNING';
-- The claim no longer walks one queue per job type.
DROP INDEX IF EXISTS jobs_pending_by_type;
