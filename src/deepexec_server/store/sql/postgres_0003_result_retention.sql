-- Result retention: a finished job's result may be purged (after DEEPEXEC_RESULT_RETENTION, or
-- oldest first once its tenant keeps more than DEEPEXEC_TENANT_RESULT_BYTES); the row stays.
-- result_bytes is the stored result's size, written by finish_job and zeroed by a purge: the
-- partial index holds only jobs with a result to purge, and covers both purge queries.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS result_purged_at timestamptz;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS result_bytes bigint NOT NULL DEFAULT 0;
UPDATE jobs SET result_bytes = octet_length(result::text) WHERE result IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_stored_results ON jobs (tenant_id, finished_at, id, result_bytes)
    WHERE result_bytes > 0;
