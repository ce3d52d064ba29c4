-- DeepExec schema, version 1 (SQLite). Applied once, inside one transaction; the version is
-- recorded in PRAGMA user_version. Timestamps are fixed-width UTC text with microseconds
-- (text order = time order); JSON values are TEXT.

CREATE TABLE IF NOT EXISTS jobs (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL,
    name                TEXT NOT NULL,
    job_type            TEXT NOT NULL,
    data                TEXT NOT NULL,              -- JSON object
    timeout             INTEGER NOT NULL,
    priority            INTEGER NOT NULL,
    tags                TEXT NOT NULL DEFAULT '[]',  -- JSON array of strings
    status              TEXT NOT NULL
        CHECK (status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELED')),
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    started_at          TEXT,
    finished_at         TEXT,
    progress            INTEGER,
    progress_message    TEXT,
    result              TEXT,                       -- JSON object
    error               TEXT,                       -- JSON {"type", "message"}
    cancel_requested_at TEXT,
    cancel_reason       TEXT,
    lease_owner         TEXT,
    lease_expires_at    TEXT,
    idempotency_key     TEXT,
    fingerprint         TEXT
);

-- The queue: claim_next walks PENDING jobs in priority order.
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, created_at, id);

-- Listing: one tenant's jobs, newest first, paged by (created_at, id).
CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant_id, created_at DESC, id DESC);

-- One job per tenant and idempotency key.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,               -- SHA-256 of the secret
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE INDEX IF NOT EXISTS api_keys_by_tenant ON api_keys (tenant_id, created_at, id);
