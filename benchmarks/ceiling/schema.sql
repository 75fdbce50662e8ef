-- The minimal queue table the raw-SQL ceiling runs on: the columns a job needs, and the
-- partial index matching the claim's ORDER BY so the claim stays index-driven whatever
-- the planner's statistics say.
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    func text NOT NULL,
    kwargs jsonb NOT NULL DEFAULT '{}',
    priority integer NOT NULL DEFAULT 0,
    state text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    taken_by integer,
    scheduled_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    completed_at timestamptz
);

CREATE INDEX jobs_fetch ON jobs (queue, priority DESC, id) WHERE state = 'pending';
CREATE INDEX jobs_running ON jobs (taken_by) WHERE state = 'running';
