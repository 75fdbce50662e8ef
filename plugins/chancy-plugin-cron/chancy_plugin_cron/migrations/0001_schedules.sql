-- chancy-plugin-cron: one row per schedule. `job` is Job.pack() of the template;
-- `next_run` is the next time to push (NULL: disabled because it could not be computed);
-- `last_run` is the run time most recently pushed.
CREATE TABLE {cron_schedules} (
    name        text PRIMARY KEY,
    cron        text NOT NULL,
    timezone    text NOT NULL DEFAULT 'UTC',
    job         jsonb NOT NULL,
    next_run    timestamptz,
    last_run    timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX {cron_schedules_next_run_idx} ON {cron_schedules} (next_run)
    WHERE next_run IS NOT NULL;
