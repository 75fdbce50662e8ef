-- The processing ceiling: claim :batch of the pre-queued jobs, then mark them done, two
-- autocommitted statements as a worker's claim and completion are. No insert: the queue was
-- filled beforehand (fill.sql), as in the harness's processing phase. :client_id stands for
-- the worker.
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
