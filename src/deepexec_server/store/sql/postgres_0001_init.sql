-- DeepExec schema, version 1 (PostgreSQL). Applied once, inside one transaction holding an
-- advisory lock; the version is recorded in the schema_version table. Ids compare bytewise
-- (COLLATE "C") so list order and page cursors agree with SQLite.

CREATE TABLE IF NOT EXISTS jobs (
    id                  text COLLATE "C" PRIMARY KEY,
    tenant_id           text NOT NULL,
    name                text NOT NULL,
    job_type            text NOT NULL,
    data                jsonb NOT NULL,
    timeout             bigint NOT NULL,
    priority            bigint NOT NULL,
    tags                text[] NOT NULL DEFAULT '{}',
    status              text NOT NULL
        CHECK (status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELED')),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    started_at          timestamptz,
    finished_at         timestamptz,
    progress            integer,
    progress_message    text,
    result              jsonb,
    error               jsonb,
    cancel_requested_at timestamptz,
    cancel_reason       text,
    lease_owner         text,
    lease_expires_at    timestamptz,
    idempotency_key     text,
    fingerprint         text
);

-- The queue: claim_next walks PENDING jobs in priority order.
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, created_at, id);

-- Listing: one tenant's jobs, newest first, paged by (created_at, id).
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant_id, created_at DESC, id DESC);

-- One job per tenant and idempotency key (the arbiter of INSERT ... ON CONFLICT).
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    key_hash    text NOT NULL UNIQUE,               -- SHA-256 of the secret
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant_id, created_at, id);
