-- Operating the queue: browsing jobs and pausing a queue until a given time.

-- list_jobs pages newest first (id DESC: ids are time-ordered UUIDs) within each
-- (queue, state); see chancy_core.admin. Also drives queue_stats' counts and the bulk
-- actions' filters. Built in the migration's transaction: on a large existing table this
-- blocks writes to it while it builds.
CREATE INDEX {jobs_browse_idx} ON {jobs} (queue, state, id);

-- A paused queue with resume_at in the past counts as active wherever queues are read
-- (QUEUE_COLUMNS computes the effective state), so it resumes without anyone acting.
ALTER TABLE {queues} ADD COLUMN resume_at timestamptz;
