"""Every statement of the metrics plugin; ``{name}`` placeholders get the app's table prefix."""

from __future__ import annotations

from typing import LiteralString

# Add one flush of per-minute counts to the history. Rows arrive sorted by key, so two
# workers flushing at once lock them in the same order (no deadlock).
UPSERT_MINUTES: LiteralString = """
INSERT INTO {metrics_minutes} AS m (bucket, queue, func, outcome, jobs, run_seconds_sum,
    run_seconds_max, wait_seconds_sum, wait_seconds_max)
SELECT * FROM unnest(%(buckets)s::timestamptz[], %(queues)s::text[], %(funcs)s::text[],
    %(outcomes)s::text[], %(jobs)s::bigint[], %(run_sums)s::float8[], %(run_maxes)s::float8[],
    %(wait_sums)s::float8[], %(wait_maxes)s::float8[])
ON CONFLICT (bucket, queue, func, outcome) DO UPDATE SET
    jobs = m.jobs + EXCLUDED.jobs,
    run_seconds_sum = m.run_seconds_sum + EXCLUDED.run_seconds_sum,
    run_seconds_max = greatest(m.run_seconds_max, EXCLUDED.run_seconds_max),
    wait_seconds_sum = m.wait_seconds_sum + EXCLUDED.wait_seconds_sum,
    wait_seconds_max = greatest(m.wait_seconds_max, EXCLUDED.wait_seconds_max)
"""

PRUNE_MINUTES: LiteralString = """
DELETE FROM {metrics_minutes} WHERE bucket < now() - make_interval(secs => %(seconds)s)
"""

SELECT_MINUTES: LiteralString = """
SELECT bucket, queue, func, outcome, jobs, run_seconds_sum, run_seconds_max, wait_seconds_sum,
       wait_seconds_max
FROM {metrics_minutes}
WHERE bucket >= %(since)s
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(func)s::text IS NULL OR func = %(func)s)
ORDER BY bucket, queue, func, outcome
"""

# What the database gauges show, in one round trip. The waiting rows are read through the
# fetch index (its literal IN); running rows through the running index's predicate. The
# oldest *due* waiting job sets the age (a job scheduled for tomorrow is not late); the
# workers' rows give their count, the least recent heartbeat, and the heartbeat of each
# worker of this process (``worker_ids``: its id in the queue column). Reads
# the core's tables directly until the core has a public call for it.
SELECT_GAUGES: LiteralString = """
SELECT queue, state, count(*),
       extract(epoch FROM now() - min(scheduled_at) FILTER (WHERE scheduled_at <= now()))
FROM {jobs} WHERE state IN ('pending', 'retrying') GROUP BY queue, state
UNION ALL
SELECT queue, state, count(*), NULL FROM {jobs} WHERE state = 'running' GROUP BY queue, state
UNION ALL
SELECT NULL, 'workers', count(*), extract(epoch FROM now() - min(last_seen)) FROM {workers}
UNION ALL
SELECT worker_id, 'heartbeat', 1, extract(epoch FROM now() - last_seen)
FROM {workers} WHERE worker_id = ANY(%(worker_ids)s::text[])
"""
