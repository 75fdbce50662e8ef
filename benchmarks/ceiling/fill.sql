-- Queue :n jobs (each with its own kwargs) before the processing ceiling runs, then ANALYZE,
-- as the harness does before a processing run.
INSERT INTO jobs (queue, func, kwargs)
SELECT 'bench', 'noop', jsonb_build_object('i', i) FROM generate_series(1, :n) AS i;
ANALYZE jobs;
