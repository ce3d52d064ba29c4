-- The queue per job type: claim_next asks for the best PENDING job of the types with a free
-- slot. jobs_queue leads with status, so asking for a type with free slots (text_generation)
-- walked every pending job of the busy ones (a 10,000-job code backlog) on each submit.
CREATE INDEX IF NOT EXISTS jobs_pending_by_type ON jobs (job_type, priority DESC, created_at, id)
    WHERE status = 'PENDING';
