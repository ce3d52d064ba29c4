-- Webhooks: a job's end is POSTed to the job's own webhook_url and to its tenant's endpoints.
-- The outbox is webhook_deliveries: the trigger below writes a job's deliveries in the very
-- transaction that ends the job, whichever path ends it (a runner, a cancel, a reap), so a
-- crash never loses one; the server's sender tries each until it is delivered or given up,
-- and logs every attempt in webhook_attempts.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS webhook_url text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS webhook_format text;   -- NULL: Standard Webhooks

CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id                  text COLLATE "C" PRIMARY KEY,
    tenant_id           text NOT NULL,
    url                 text,                       -- NULL: the key of the jobs' own URLs
    events              text[],                     -- event types; NULL: all
    secret              text NOT NULL,
    previous_secret     text,
    previous_until      timestamptz,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    disabled_at         timestamptz,
    disabled_reason     text
);

CREATE INDEX IF NOT EXISTS webhook_endpoints_by_tenant
    ON webhook_endpoints (tenant_id, created_at, id);
CREATE UNIQUE INDEX IF NOT EXISTS webhook_job_url_key ON webhook_endpoints (tenant_id)
    WHERE url IS NULL;

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id                  text COLLATE "C" PRIMARY KEY,
    tenant_id           text NOT NULL,
    job_id              text NOT NULL,
    endpoint_id         text,
    url                 text NOT NULL,
    format              text NOT NULL,
    event_type          text NOT NULL,
    state               text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     timestamptz,
    lease_owner         text,
    lease_expires_at    timestamptz,
    body                text,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    delivered_at        timestamptz,
    last_status_code    integer,
    last_error          text
);

CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_job ON webhook_deliveries (job_id, created_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id)
    WHERE state = 'pending';

CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id         text NOT NULL,
    attempt             integer NOT NULL,
    started_at          timestamptz NOT NULL,
    duration_ms         double precision NOT NULL,
    status_code         integer,
    error_message       text,
    PRIMARY KEY (delivery_id, attempt)
);

CREATE OR REPLACE FUNCTION jobs_webhooks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event text := 'job.' || lower(NEW.status);
BEGIN
    INSERT INTO webhook_deliveries
        (id, tenant_id, job_id, endpoint_id, url, format, event_type, state,
         next_attempt_at, created_at, updated_at)
    SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), NEW.tenant_id, NEW.id, NULL,
           NEW.webhook_url, COALESCE(NEW.webhook_format, 'standard'), event, 'pending',
           NEW.updated_at, NEW.updated_at, NEW.updated_at
    WHERE NEW.webhook_url IS NOT NULL
    UNION ALL
    SELECT 'msg_' || replace(gen_random_uuid()::text, '-', ''), NEW.tenant_id, NEW.id, e.id,
           e.url, 'standard', event, 'pending', NEW.updated_at, NEW.updated_at, NEW.updated_at
    FROM webhook_endpoints AS e
    WHERE e.tenant_id = NEW.tenant_id AND e.url IS NOT NULL AND e.disabled_at IS NULL
        AND (e.events IS NULL OR event = ANY (e.events));
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS jobs_webhooks ON jobs;
CREATE TRIGGER jobs_webhooks AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (NEW.status IN ('COMPLETED', 'FAILED', 'CANCELED')
          AND OLD.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED'))
    EXECUTE FUNCTION jobs_webhooks();
