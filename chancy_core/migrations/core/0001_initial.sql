-- The core tables: jobs, queues, workers and queue rate-limit windows.
CREATE TABLE {jobs} (
    id            uuid PRIMARY KEY,
    queue         text NOT NULL,
    func          text NOT NULL,
    kwargs        jsonb,
    meta          jsonb NOT NULL DEFAULT '{{}}',
    priority      integer NOT NULL DEFAULT 0,
    max_attempts  integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    attempts      integer NOT NULL DEFAULT 0,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'retrying')),
    scheduled_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    completed_at  timestamptz,
    limits        jsonb NOT NULL DEFAULT '[]',
    unique_key    text,
    errors        jsonb NOT NULL DEFAULT '[]',
    taken_by      text,
    cancelled_at  timestamptz
);

-- The fetch index: only runnable rows, in the claim's ORDER BY, so it stays small and the
-- claim stays index-driven however many finished rows pile up.
CREATE INDEX {jobs_fetch_idx} ON {jobs} (queue, priority DESC, id)
    WHERE state IN ('pending', 'retrying');

-- At most one unfinished job per unique_key.
CREATE UNIQUE INDEX {jobs_unique_idx} ON {jobs} (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('pending', 'running', 'retrying');

-- The running jobs of each worker (cancellation, shutdown, recovery).
CREATE INDEX {jobs_running_idx} ON {jobs} (taken_by) WHERE state = 'running';

CREATE TABLE {queues} (
    name               text PRIMARY KEY,
    concurrency        integer NOT NULL,
    executor           text NOT NULL,
    executor_options   jsonb NOT NULL DEFAULT '{{}}',
    polling_interval   double precision NOT NULL,
    rate_limit         integer,
    rate_limit_window  integer,
    tags               text[] NOT NULL,
    state              text NOT NULL CHECK (state IN ('active', 'paused')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE {queue_rates} (
    queue         text PRIMARY KEY,
    window_start  timestamptz NOT NULL,
    used          integer NOT NULL
);

CREATE TABLE {workers} (
    worker_id   text PRIMARY KEY,
    hostname    text NOT NULL,
    pid         integer NOT NULL,
    tags        text[] NOT NULL,
    queues      text[] NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
