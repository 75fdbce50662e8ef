-- Concurrency and order per key (chancy_core.concurrency).

-- Key rules: in a queue, the jobs whose key matches ``like_pattern`` (a LIKE pattern made
-- from the rule's glob) run at most ``max_running`` at once across all workers, and with
-- ``ordered`` one at a time in id (push) order. ``kind`` says what the key is: 'key' the
-- job's meta.concurrency_key, 'func' its function name (per-function limits).
CREATE TABLE {concurrency_rules} (
    queue         text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('key', 'func')),
    pattern       text NOT NULL,
    like_pattern  text NOT NULL,
    max_running   integer NOT NULL CHECK (max_running >= 1),
    ordered       boolean NOT NULL DEFAULT false CHECK (NOT ordered OR max_running = 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, kind, pattern)
);

-- The unfinished jobs of each key of a queue, in id order: the keyed claim counts a key's
-- running jobs and finds an ordered key's first job with it. Only rows with a key are in
-- it, so queues without keys pay nothing. Built in the migration's transaction: on a large
-- existing table this blocks writes to it while it builds.
CREATE INDEX {jobs_key_idx} ON {jobs} (queue, (meta ->> 'concurrency_key'), id)
    WHERE meta ? 'concurrency_key' AND state IN ('pending', 'running', 'retrying');
