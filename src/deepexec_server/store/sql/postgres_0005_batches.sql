-- Batches: many jobs submitted in one request (POST /v1/jobs/batch), stored in one
-- transaction. A batch lists its jobs by position, the order of the request; a job may belong
-- to several batches (an item whose idempotency key names a job submitted before).

CREATE TABLE IF NOT EXISTS batches (
    id              text COLLATE "C" PRIMARY KEY,
    tenant_id       text NOT NULL,
    size            integer NOT NULL,
    created_at      timestamptz NOT NULL,
    idempotency_key text,
    fingerprint     text
);

-- One batch per tenant and idempotency key (the arbiter of INSERT ... ON CONFLICT).
CREATE UNIQUE INDEX IF NOT EXISTS batches_idempotency ON batches (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS batch_jobs (
    batch_id text COLLATE "C" NOT NULL REFERENCES batches (id),
    position integer NOT NULL,
    job_id   text COLLATE "C" NOT NULL,
    PRIMARY KEY (batch_id, position)
);
