-- Finished jobs by final state and completion time: the pruner's DELETE finds the old ones
-- of each state through it instead of reading the whole table. Partial, so the rows that
-- are still queued or running (the hot ones) do not pay for it.
CREATE INDEX {pruner_jobs_completed_idx} ON {jobs} (state, completed_at)
    WHERE state IN ('succeeded', 'failed');
