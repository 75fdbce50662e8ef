"""Every statement of the cron plugin; ``{name}`` placeholders get the app's table prefix."""

from __future__ import annotations

from typing import LiteralString

# The database's clock, and the run most recently pushed for a schedule (if it exists).
NOW_AND_LAST_RUN: LiteralString = """
SELECT now(), (SELECT last_run FROM {cron_schedules} WHERE name = %(name)s)
"""

UPSERT_SCHEDULE: LiteralString = """
INSERT INTO {cron_schedules} (name, cron, timezone, job, next_run)
VALUES (%(name)s, %(cron)s, %(timezone)s, %(job)s, %(next_run)s)
ON CONFLICT (name) DO UPDATE SET
    cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, job = EXCLUDED.job,
    next_run = EXCLUDED.next_run, updated_at = now()
RETURNING name, cron, timezone, job, next_run, last_run
"""

DELETE_SCHEDULE: LiteralString = "DELETE FROM {cron_schedules} WHERE name = %(name)s RETURNING name"

SELECT_SCHEDULES: LiteralString = """
SELECT name, cron, timezone, job, next_run, last_run FROM {cron_schedules} ORDER BY name
"""

SELECT_SCHEDULE: LiteralString = """
SELECT name, cron, timezone, job, next_run, last_run FROM {cron_schedules} WHERE name = %(name)s
"""

# The schedules due now, locked: a concurrent scheduler skips them, and once this
# transaction commits their next_run is in the future, so each run is pushed once.
SELECT_DUE: LiteralString = """
SELECT name, cron, timezone, job, next_run, now() FROM {cron_schedules}
WHERE next_run <= now()
ORDER BY next_run
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

ADVANCE: LiteralString = """
UPDATE {cron_schedules} AS s
SET next_run = u.next_run, last_run = coalesce(u.last_run, s.last_run), updated_at = now()
FROM unnest(%(names)s::text[], %(next_runs)s::timestamptz[], %(last_runs)s::timestamptz[])
    AS u(name, next_run, last_run)
WHERE s.name = u.name
"""

SECONDS_TO_NEXT: LiteralString = """
SELECT extract(epoch FROM min(next_run) - now())::float8 FROM {cron_schedules}
WHERE next_run IS NOT NULL
"""
