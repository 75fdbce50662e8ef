-- The queue cycle (not comparable with the processing columns: it includes the insert):
-- :batch jobs, three autocommitted statements: insert, claim, complete.
-- pgbench counts one run of this script as one transaction; :client_id stands for the worker.
INSERT INTO jobs (queue, func) SELECT 'bench', 'noop' FROM generate_series(1, :batch);
UPDATE jobs
SET state = 'running', taken_by = :client_id, attempts = attempts + 1, started_at = now()
WHERE id IN (
    SELECT id FROM jobs
    WHERE queue = 'bench' AND state = 'pending' AND scheduled_at <= now()
    ORDER BY priority DESC, id
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
)
RETURNING id, func, kwargs;
UPDATE jobs SET state = 'succeeded', completed_at = now()
WHERE state = 'running' AND taken_by = :client_id;
