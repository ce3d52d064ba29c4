-- Batches: many jobs submitted in one request (POST /v1/jobs/batch), stored in one
-- transaction. A batch lists its jobs by position, the order of the request; a job may belong
-- to several batches (an item whose idempotency key names a job submitted before).

CREATE TABLE IF NOT EXISTS batches (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    size            INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    idempotency_key TEXT,
    fingerprint     TEXT
);

-- One batch per tenant and idempotency key.
CREATE UNIQUE INDEX IF NOT EXISTS batches_idempotency ON batches (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS batch_jobs (
    batch_id TEXT NOT NULL REFERENCES batches (id),
    position INTEGER NOT NULL,
    job_id   TEXT NOT NULL,
    PRIMARY KEY (batch_id, position)
) WITHOUT ROWID;
