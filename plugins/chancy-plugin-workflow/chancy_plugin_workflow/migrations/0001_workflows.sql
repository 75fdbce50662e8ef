-- chancy-plugin-workflow: one row per workflow, one per step.
-- Every change to a workflow's steps happens in a transaction that holds its row's lock
-- (SELECT ... FOR UPDATE), so two workers finishing two parents of one step at once
-- push that step exactly once.
CREATE TABLE {workflows} (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    state         text NOT NULL DEFAULT 'running'
                  CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    on_failure    text NOT NULL CHECK (on_failure IN ('fail', 'continue')),
    steps_total   integer NOT NULL,
    steps_done    integer NOT NULL DEFAULT 0,   -- steps in a final state
    steps_failed  integer NOT NULL DEFAULT 0,   -- failed, skipped or cancelled
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);

CREATE INDEX {workflows_created_idx} ON {workflows} (created_at DESC, id DESC);
CREATE INDEX {workflows_running_idx} ON {workflows} (id) WHERE state = 'running';

-- `job` is Job.pack() of the step's job as submitted; `job_id` the job pushed for it.
-- `waiting` counts the dependencies that have not succeeded yet: the step is pushed
-- when it reaches 0. State: waiting -> queued -> succeeded | failed, or skipped (a
-- dependency failed, policy "continue") or cancelled.
CREATE TABLE {workflow_steps} (
    workflow_id  uuid NOT NULL REFERENCES {workflows} (id) ON DELETE CASCADE,
    name         text NOT NULL,
    job          jsonb NOT NULL,
    depends_on   text[] NOT NULL,
    children     text[] NOT NULL,
    waiting      integer NOT NULL,
    state        text NOT NULL
                 CHECK (state IN ('waiting', 'queued', 'succeeded', 'failed', 'skipped',
                                  'cancelled')),
    job_id       uuid,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, name)
);

CREATE UNIQUE INDEX {workflow_steps_job_idx} ON {workflow_steps} (job_id)
    WHERE job_id IS NOT NULL;
CREATE INDEX {workflow_steps_queued_idx} ON {workflow_steps} (workflow_id)
    WHERE state = 'queued';
