"""Job functions for the per-key concurrency tests: each records when it ran."""

from __future__ import annotations

import time

import psycopg

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS key_runs (
    tag      text PRIMARY KEY,
    key      text NOT NULL,
    attempt  integer NOT NULL DEFAULT 1,
    started  timestamptz NOT NULL,
    finished timestamptz
)
"""

# The most jobs of one key that ran at the same instant, per key.
MAX_OVERLAP = """
SELECT key, max(running)::int FROM (
    SELECT key, sum(delta) OVER (PARTITION BY key ORDER BY at, delta, tag) AS running
    FROM (SELECT key, tag, started AS at, 1 AS delta FROM key_runs
          UNION ALL
          SELECT key, tag, finished, -1 FROM key_runs) AS events
) AS counted
GROUP BY key ORDER BY key
"""


def record(dsn: str, tag: str, key: str, seconds: float, fail_first: bool = False) -> None:
    """Record the start (database clock), sleep, record the finish; with ``fail_first``,
    the first attempt raises after recording its run."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        attempt = conn.execute(
            "INSERT INTO key_runs (tag, key, started) VALUES (%s, %s, clock_timestamp())"
            " ON CONFLICT (tag) DO UPDATE SET attempt = key_runs.attempt + 1,"
            " started = clock_timestamp(), finished = NULL RETURNING attempt",
            (tag, key),
        ).fetchone()
        time.sleep(seconds)
        conn.execute("UPDATE key_runs SET finished = clock_timestamp() WHERE tag = %s", (tag,))
    if fail_first and attempt is not None and attempt[0] == 1:
        raise RuntimeError(f"{tag}: first attempt fails")
