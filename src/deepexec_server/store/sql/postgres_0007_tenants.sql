-- Tenants: an operator's weight and quotas per tenant (a tenant without a row, or a NULL
-- column, takes the server-wide default; a quota of 0 is "no limit"; the weight's default is 1).
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id           text PRIMARY KEY,
    weight              double precision CHECK (weight IS NULL OR weight > 0),
    max_running         integer,
    max_pending         integer,
    submit_rate         double precision,           -- jobs per second
    max_timeout         integer,
    max_running_by_type jsonb,                      -- {job_type: most running}
    code_limits         jsonb,                      -- {limit: most a code job may ask}
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);

-- Fair share (see store/_fair.py): a free slot goes to the tenant with the fewest running jobs
-- per unit of weight; at a tie, to the one with the lowest pass. Each start moves the
-- tenant's pass on by 1/weight from the clock, the pass of the last start (a tenant new to
-- the queue starts at the clock: no credit for having been idle). So with one slot, two
-- tenants with backlogs take turns by weight, and a newcomer is next. Claims take turns
-- under an advisory lock, so the clock's row is never contended.
CREATE TABLE IF NOT EXISTS tenant_turns (
    tenant_id           text PRIMARY KEY,
    pass                double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS fair_clock (
    id                  integer PRIMARY KEY CHECK (id = 1),
    clock               double precision NOT NULL
);
INSERT INTO fair_clock (id, clock) VALUES (1, 0) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION jobs_fair_turn() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    turn double precision;
BEGIN
    UPDATE fair_clock SET clock = GREATEST(clock, COALESCE(
        (SELECT pass FROM tenant_turns WHERE tenant_id = NEW.tenant_id), clock))
    RETURNING clock INTO turn;
    INSERT INTO tenant_turns (tenant_id, pass)
    VALUES (NEW.tenant_id, COALESCE(turn, 0)
        + 1.0 / COALESCE((SELECT weight FROM tenants WHERE tenant_id = NEW.tenant_id), 1.0))
    ON CONFLICT (tenant_id) DO UPDATE SET pass = excluded.pass;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS jobs_fair_turn ON jobs;
CREATE TRIGGER jobs_fair_turn AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status = 'PENDING' AND NEW.status = 'RUNNING')
    EXECUTE FUNCTION jobs_fair_turn();

-- The claim walks the tenants with pending jobs (a skip scan of this index: one probe per
-- tenant, however long a tenant's backlog) and takes each tenant's best job of a type with a
-- free slot (one probe per tenant and type, in the tenant's own priority order).
CREATE INDEX IF NOT EXISTS jobs_pending_by_tenant
    ON jobs (tenant_id, job_type, priority DESC, created_at, id) WHERE status = 'PENDING';
-- Each tenant's running jobs, counted for its share and its max_running quota.
CREATE INDEX IF NOT EXISTS jobs_running_by_tenant ON jobs (tenant_id) WHERE status = 'RUNNING';
-- The claim no longer walks one queue per job type.
DROP INDEX IF EXISTS jobs_pending_by_type;
