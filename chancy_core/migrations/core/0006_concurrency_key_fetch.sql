-- The keyed claim's per-key look-up (chancy_core.concurrency): each key's runnable jobs in
-- claim order (priority, then id), so the claim finds a key's next jobs, and the queue's
-- distinct keys, with one index probe each instead of reading all pending jobs. Only jobs
-- with a key are in it: queues without keys pay nothing.
--
-- Built in the migration's transaction (CREATE INDEX, not CONCURRENTLY): while it builds,
-- writes to the jobs table wait (pushes, claims, outcomes). It reads the whole table, so on
-- a large one run the migration when a pause of that length is acceptable, or create the
-- index beforehand with CREATE INDEX CONCURRENTLY under this name and definition (the
-- migration then finds it and does nothing).
CREATE INDEX IF NOT EXISTS {jobs_key_fetch_idx}
    ON {jobs} (queue, (meta ->> 'concurrency_key'), priority DESC, id)
    WHERE meta ? 'concurrency_key' AND state IN ('pending', 'retrying');
