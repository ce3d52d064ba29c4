-- Webhooks: a job's end is POSTed to the job's own webhook_url and to its tenant's endpoints.
-- The outbox is webhook_deliveries: the trigger below writes a job's deliveries in the very
-- transaction that ends the job, whichever path ends it (a runner, a cancel, a reap), so a
-- crash never loses one; the server's sender tries each until it is delivered or given up,
-- and logs every attempt in webhook_attempts.
ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
ALTER TABLE jobs ADD COLUMN webhook_format TEXT;    -- NULL: Standard Webhooks; 'judge0'

CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    url                 TEXT,                       -- NULL: the key of the jobs' own URLs
    events              TEXT,                       -- JSON array of event types; NULL: all
    secret              TEXT NOT NULL,
    previous_secret     TEXT,
    previous_until      TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    disabled_at         TEXT,
    disabled_reason     TEXT
);

CREATE INDEX IF NOT EXISTS webhook_endpoints_by_tenant
    ON webhook_endpoints (tenant_id, created_at, id);
-- One key per tenant for the deliveries to its jobs' own URLs.
CREATE UNIQUE INDEX IF NOT EXISTS webhook_job_url_key ON webhook_endpoints (tenant_id)
    WHERE url IS NULL;

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id                  TEXT PRIMARY KEY,           -- the webhook-id of every attempt
    tenant_id           TEXT NOT NULL,
    job_id              TEXT NOT NULL,
    endpoint_id         TEXT,                       -- NULL: the job's own webhook_url
    url                 TEXT NOT NULL,
    format              TEXT NOT NULL,
    event_type          TEXT NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     TEXT,
    lease_owner         TEXT,
    lease_expires_at    TEXT,
    body                TEXT,                       -- fixed at the first attempt
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    delivered_at        TEXT,
    last_status_code    INTEGER,
    last_error          TEXT
);

-- The sender's queue: only pending deliveries, by when they are due.
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_job ON webhook_deliveries (job_id, created_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id)
    WHERE state = 'pending';

CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id         TEXT NOT NULL,
    attempt             INTEGER NOT NULL,
    started_at          TEXT NOT NULL,
    duration_ms         REAL NOT NULL,
    status_code         INTEGER,
    error_message       TEXT,
    PRIMARY KEY (delivery_id, attempt)
) WITHOUT ROWID;

CREATE TRIGGER IF NOT EXISTS jobs_webhooks AFTER UPDATE OF status ON jobs
WHEN NEW.status IN ('COMPLETED', 'FAILED', 'CANCELED')
    AND OLD.status NOT IN ('COMPLETED', 'FAILED', 'CANCELED')
BEGIN
    INSERT INTO webhook_deliveries
        (id, tenant_id, job_id, endpoint_id, url, format, event_type, state,
         next_attempt_at, created_at, updated_at)
    SELECT 'msg_' || lower(hex(randomblob(16))), NEW.tenant_id, NEW.id, NULL, NEW.webhook_url,
           COALESCE(NEW.webhook_format, 'standard'), 'job.' || lower(NEW.status), 'pending',
           NEW.updated_at, NEW.updated_at, NEW.updated_at
    WHERE NEW.webhook_url IS NOT NULL;
    INSERT INTO webhook_deliveries
        (id, tenant_id, job_id, endpoint_id, url, format, event_type, state,
         next_attempt_at, created_at, updated_at)
    SELECT 'msg_' || lower(hex(randomblob(16))), NEW.tenant_id, NEW.id, e.id, e.url,
           'standard', 'job.' || lower(NEW.status), 'pending',
           NEW.updated_at, NEW.updated_at, NEW.updated_at
    FROM webhook_endpoints AS e
    WHERE e.tenant_id = NEW.tenant_id AND e.url IS NOT NULL AND e.disabled_at IS NULL
        AND (e.events IS NULL OR EXISTS (
            SELECT 1 FROM json_each(e.events) WHERE json_each.value = 'job.' || lower(NEW.status)
        ));
END;
