"""All of the core's SQL, in one place.

Statements are written with ``{name}`` placeholders for every table, index and
channel; :class:`Schema` renders them once per table prefix, composing each
name with :class:`psycopg.sql.Identifier` (so ``{jobs}`` becomes
``"chancy_jobs"``). Values are always passed as parameters. Literal braces are
doubled (``'{{}}'`` is the JSON object ``'{}'``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import Any, LiteralString

from psycopg import sql

from chancy_core.errors import ConfigurationError, InvalidJobError
from chancy_core.job import FUNC_NAME, Limit, QueuedJob
from chancy_core.queue import Queue

__all__ = ["Schema", "job_from_row", "queue_from_row"]

_PLACEHOLDER = re.compile(r"(?<!\{)\{([a-z_][a-z0-9_]*)\}(?!\})")
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,29}\Z")  # \Z: $ would allow a trailing newline


class Schema:
    """The names and rendered statements of one table prefix."""

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not _PREFIX.match(prefix):
            raise ConfigurationError(
                f"invalid table prefix {prefix!r}: use 1-30 lowercase letters, digits and"
                " underscores, starting with a letter or underscore (e.g. 'chancy_')"
            )
        self.prefix = prefix
        self.channel = f"{prefix}events"
        """The notification channel every event of this prefix is sent on."""

    def name(self, name: str) -> str:
        """The full (prefixed) name of a table, index or channel."""
        return self.prefix + name

    def render(self, template: LiteralString) -> bytes:
        """Render a template, prefixing and quoting every ``{name}``."""
        return _render(self.prefix, template)

    def compose(self, template: LiteralString) -> sql.Composed:
        """Compose a template as :class:`psycopg.sql.Composed` (for statements run rarely)."""
        names = set(_PLACEHOLDER.findall(template))
        return sql.SQL(template).format(**{n: sql.Identifier(self.prefix + n) for n in names})


@cache
def _render(prefix: str, template: LiteralString) -> bytes:
    names = set(_PLACEHOLDER.findall(template))
    composed = sql.SQL(template).format(**{n: sql.Identifier(prefix + n) for n in names})
    return composed.as_bytes(None)


JOB_COLUMNS: LiteralString = (
    "id, queue, func, kwargs, meta, priority, max_attempts, attempts, state, scheduled_at,"
    " started_at, completed_at, limits, unique_key, errors"
)
# The position of each of JOB_COLUMNS in a row: rows stay tuples (fast), read by these names.
(
    J_ID,
    J_QUEUE,
    J_FUNC,
    J_KWARGS,
    J_META,
    J_PRIORITY,
    J_MAX_ATTEMPTS,
    J_ATTEMPTS,
    J_STATE,
    J_SCHEDULED_AT,
    J_STARTED_AT,
    J_COMPLETED_AT,
    J_LIMITS,
    J_UNIQUE_KEY,
    J_ERRORS,
) = range(15)
# What reading a job adds to JOB_COLUMNS (the claim does not need them: the worker starts a
# job without its last result or progress).
JOB_READ_COLUMNS: LiteralString = JOB_COLUMNS + ", result, result_error, progress"
J_RESULT, J_RESULT_ERROR, J_PROGRESS = range(15, 18)

_STATES = {state.value: state for state in QueuedJob.State}
#: Function names already found valid (a worker runs few distinct ones; bounded anyway).
_VALID_FUNCS: set[str] = set()


def job_from_row(row: Sequence[Any]) -> QueuedJob:
    """Build a :class:`QueuedJob` from a row of ``JOB_COLUMNS`` or ``JOB_READ_COLUMNS``
    (the result and progress are ``None`` without them).

    Only the few checks a row written by hand can fail are made; the schema constrains
    the rest (a claimed job is not validated again)."""
    func = row[J_FUNC]
    meta = row[J_META]
    kwargs = row[J_KWARGS]
    if func not in _VALID_FUNCS:
        if not isinstance(func, str) or not FUNC_NAME.match(func):
            raise InvalidJobError(f"invalid func {func!r}: not an importable name")
        if len(_VALID_FUNCS) < 10_000:
            _VALID_FUNCS.add(func)
    if not isinstance(meta, dict):
        raise InvalidJobError(f"meta must be a dict, not {type(meta).__name__}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise InvalidJobError(f"kwargs must be a dict, not {type(kwargs).__name__}")
    limits = row[J_LIMITS]
    full = len(row) > J_PROGRESS
    return QueuedJob.from_trusted(
        id=str(row[J_ID]),
        queue=row[J_QUEUE],
        func=func,
        kwargs=kwargs,
        meta=meta,
        priority=row[J_PRIORITY],
        max_attempts=row[J_MAX_ATTEMPTS],
        attempts=row[J_ATTEMPTS],
        state=_STATES[row[J_STATE]],
        scheduled_at=row[J_SCHEDULED_AT],
        started_at=row[J_STARTED_AT],
        completed_at=row[J_COMPLETED_AT],
        limits=[Limit.deserialize(limit) for limit in limits] if limits else [],
        unique_key=row[J_UNIQUE_KEY],
        errors=row[J_ERRORS],
        result=row[J_RESULT] if full else None,
        result_error=row[J_RESULT_ERROR] if full else None,
        progress=row[J_PROGRESS] if full else None,
    )


# --- pushing -------------------------------------------------------------------------------

INSERT_JOBS: LiteralString = """
WITH ins AS (
    INSERT INTO {jobs} (id, queue, func, kwargs, meta, priority, max_attempts, scheduled_at,
                        limits, unique_key)
    SELECT id, queue, func, kwargs, meta, priority, max_attempts, scheduled_at, limits,
           unique_key
    FROM unnest(
        %(ids)b::uuid[], %(queues)b::text[], %(funcs)b::text[], %(kwargs)b::jsonb[],
        %(metas)b::jsonb[], %(priorities)b::int[], %(max_attempts)b::int[],
        %(scheduled_at)b::timestamptz[], %(limits)b::jsonb[], %(unique_keys)b::text[])
        WITH ORDINALITY AS u (id, queue, func, kwargs, meta, priority, max_attempts,
                              scheduled_at, limits, unique_key, n)
    -- In key order: concurrent pushes of the same unique keys then wait for each other
    -- instead of deadlocking (each waiting for a key the other inserted first). Among
    -- jobs of one key, the first pushed is inserted (and kept).
    ORDER BY u.unique_key, u.n
    ON CONFLICT (unique_key)
        WHERE unique_key IS NOT NULL AND state IN ('pending', 'running', 'retrying')
        DO NOTHING
    RETURNING id, queue, unique_key
), notified AS (
    SELECT count(pg_notify(%(channel)s, '{{"e":"pushed","q":' || to_json(queue)::text || '}}'))
    FROM (SELECT DISTINCT queue FROM ins) AS queues
)
-- Only rows with a unique key can conflict, so only their ids come back. `notified` must
-- be read whatever `ins` returns: joined to an empty side it would never run (no NOTIFY).
SELECT ins.id FROM ins WHERE ins.unique_key IS NOT NULL
UNION ALL
SELECT NULL FROM notified WHERE notified.count < 0
"""

# One job without a unique key (every plain push()): scalar parameters, no arrays to
# encode or unnest, nothing to conflict on. Returns one row (the NOTIFY's).
INSERT_JOB: LiteralString = """
WITH ins AS (
    INSERT INTO {jobs} (id, queue, func, kwargs, meta, priority, max_attempts, scheduled_at,
                        limits)
    VALUES (%(id)s, %(queue)s, %(func)s, %(kwargs)s::jsonb, %(meta)s::jsonb, %(priority)s,
            %(max_attempts)s, %(scheduled_at)s, %(limits)s::jsonb)
    RETURNING queue
)
SELECT pg_notify(%(channel)s, '{{"e":"pushed","q":' || to_json(queue)::text || '}}') FROM ins
"""

# Many jobs without unique keys (push_many of COPY_MIN_JOBS or more): streamed with binary
# COPY in one transaction, then one "pushed" event per queue (COPY cannot NOTIFY itself).
COPY_JOBS: LiteralString = """
COPY {jobs} (id, queue, func, kwargs, meta, priority, max_attempts, scheduled_at, limits)
FROM STDIN (FORMAT BINARY)
"""
# The jsonb columns are sent as bytea: rows carry jsonb's binary format (ops._jsonb).
COPY_JOBS_TYPES = ("uuid", "text", "text", "bytea", "bytea", "int4", "int4", "timestamptz", "bytea")

NOTIFY_PUSHED: LiteralString = """
SELECT count(pg_notify(%(channel)s, '{{"e":"pushed","q":' || to_json(queue)::text || '}}'))
FROM unnest(%(queues)s::text[]) AS queue
"""

SELECT_UNIQUE: LiteralString = """
SELECT unique_key, id FROM {jobs}
WHERE unique_key = ANY(%(keys)s::text[]) AND state IN ('pending', 'running', 'retrying')
"""

# --- reading -------------------------------------------------------------------------------

# How many jobs each queue has in each of the given states. COUNT_WAITING_JOBS is for
# pending/retrying only: its literal IN lets the planner use the small fetch index.
COUNT_JOBS: LiteralString = """
SELECT queue, state, count(*) FROM {jobs} WHERE state = ANY(%(states)s::text[])
GROUP BY queue, state ORDER BY queue, state
"""

COUNT_WAITING_JOBS: LiteralString = """
SELECT queue, state, count(*) FROM {jobs}
WHERE state IN ('pending', 'retrying') AND state = ANY(%(states)s::text[])
GROUP BY queue, state ORDER BY queue, state
"""

SELECT_JOBS: LiteralString = (
    "SELECT " + JOB_READ_COLUMNS + " FROM {jobs} WHERE id = ANY(%(ids)s::uuid[])"
)

CANCEL_JOBS: LiteralString = """
WITH waiting AS (
    UPDATE {jobs}
    SET state = 'failed', completed_at = now(),
        errors = errors || jsonb_build_array(jsonb_build_object(
            'attempt', attempts, 'traceback', 'cancelled before it ran'))
    WHERE id = ANY(%(ids)s::uuid[]) AND state IN ('pending', 'retrying')
    RETURNING id
), running AS (
    UPDATE {jobs} SET cancelled_at = now()
    WHERE id = ANY(%(ids)s::uuid[]) AND state = 'running' AND cancelled_at IS NULL
    RETURNING id
), notified AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('e', 'cancel', 'ids', ids)::text))
    FROM (SELECT array_agg(id) AS ids FROM running HAVING count(*) > 0) AS r
), finished AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('e', 'done', 'ids', ids)::text))
    FROM (SELECT array_agg(id) AS ids FROM waiting HAVING count(*) > 0) AS w
)
SELECT (SELECT count(*) FROM waiting), (SELECT count(*) FROM running), notified.count,
       finished.count
FROM notified, finished
"""

# --- queues --------------------------------------------------------------------------------

# The state is the effective one: a queue paused until a time that has passed reads as
# active (pause_queue(resume_at=...)), so workers resume it with no write and no change of
# their own; resume_queue or the next declaration clears resume_at.
QUEUE_COLUMNS: LiteralString = (
    "name, concurrency, executor, executor_options, polling_interval, rate_limit,"
    " rate_limit_window, tags,"
    " CASE WHEN state = 'paused' AND resume_at <= now() THEN 'active' ELSE state END"
)

UPSERT_QUEUE: LiteralString = """
WITH upserted AS (
    INSERT INTO {queues} (name, concurrency, executor, executor_options, polling_interval,
                          rate_limit, rate_limit_window, tags, state)
    VALUES (%(name)s, %(concurrency)s, %(executor)s, %(executor_options)s, %(polling_interval)s,
            %(rate_limit)s, %(rate_limit_window)s, %(tags)s, %(state)s)
    ON CONFLICT (name) DO UPDATE SET
        concurrency = EXCLUDED.concurrency, executor = EXCLUDED.executor,
        executor_options = EXCLUDED.executor_options,
        polling_interval = EXCLUDED.polling_interval, rate_limit = EXCLUDED.rate_limit,
        rate_limit_window = EXCLUDED.rate_limit_window, tags = EXCLUDED.tags,
        state = EXCLUDED.state, resume_at = NULL, updated_at = now()
    RETURNING name
)
SELECT pg_notify(%(channel)s, json_build_object('e', 'queue', 'q', name)::text) FROM upserted
"""

(Q_NAME, Q_CONCURRENCY, Q_EXECUTOR, Q_OPTIONS, Q_INTERVAL, Q_RATE, Q_WINDOW, Q_TAGS, Q_STATE) = (
    range(9)
)


def queue_from_row(row: Sequence[Any]) -> Queue:
    """Build a :class:`Queue` from a row of ``QUEUE_COLUMNS``."""
    return Queue(
        row[Q_NAME],
        concurrency=row[Q_CONCURRENCY],
        executor=row[Q_EXECUTOR],
        executor_options=row[Q_OPTIONS],
        polling_interval=row[Q_INTERVAL],
        rate_limit=row[Q_RATE],
        rate_limit_window=row[Q_WINDOW],
        tags=frozenset(row[Q_TAGS]),
        state=Queue.State(row[Q_STATE]),
    )


SELECT_QUEUES: LiteralString = "SELECT " + QUEUE_COLUMNS + " FROM {queues} ORDER BY name"

SELECT_QUEUE: LiteralString = "SELECT " + QUEUE_COLUMNS + " FROM {queues} WHERE name = %(name)s"

DELETE_QUEUE: LiteralString = """
WITH deleted AS (DELETE FROM {queues} WHERE name = %(name)s RETURNING name)
SELECT pg_notify(%(channel)s, json_build_object('e', 'queue', 'q', name)::text) FROM deleted
"""

# --- workers -------------------------------------------------------------------------------

UPSERT_WORKER: LiteralString = """
INSERT INTO {workers} (worker_id, hostname, pid, tags, queues, last_seen)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(tags)s, %(queues)s, now())
ON CONFLICT (worker_id) DO UPDATE SET
    hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, tags = EXCLUDED.tags,
    queues = EXCLUDED.queues, last_seen = now()
"""

# Taking a worker id at start: insert the row if the id is free; otherwise read who holds it
# and, if that worker is dead, take the row over only if it did not change meanwhile.
INSERT_NEW_WORKER: LiteralString = """
INSERT INTO {workers} (worker_id, hostname, pid, tags, queues, last_seen)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(tags)s, %(queues)s, now())
ON CONFLICT (worker_id) DO NOTHING
RETURNING worker_id
"""

SELECT_WORKER: LiteralString = """
SELECT hostname, pid, last_seen, extract(epoch FROM now() - last_seen)::float8
FROM {workers} WHERE worker_id = %(worker_id)s
"""

REPLACE_WORKER: LiteralString = """
UPDATE {workers}
SET hostname = %(hostname)s, pid = %(pid)s, tags = %(tags)s, queues = %(queues)s,
    started_at = now(), last_seen = now()
WHERE worker_id = %(worker_id)s AND last_seen = %(last_seen)s
RETURNING worker_id
"""

DELETE_WORKER: LiteralString = "DELETE FROM {workers} WHERE worker_id = %(worker_id)s"

# Every job the database says this worker runs (the heartbeat's check): whether someone
# asked to cancel it, and whether it was claimed more than %(age)s seconds ago (a job the
# worker does not know of after that is an orphan of a claim whose answer was lost).
SELECT_OWN_RUNNING: LiteralString = """
SELECT id, cancelled_at IS NOT NULL, started_at < now() - make_interval(secs => %(age)s),
       claim_token
FROM {jobs}
WHERE state = 'running' AND taken_by = %(worker_id)s
"""

# --- the hot path --------------------------------------------------------------------------

# The claimed ids are materialized once (a CTE with FOR UPDATE always is), so the LIMIT
# holds whatever plan the UPDATE gets. The queue's own row is read in the same snapshot: a
# claim that starts after pause_queue() (or delete_queue()) committed takes nothing, even
# before the worker has heard of the change.
QUEUE_RUNNABLE: LiteralString = """
    AND EXISTS (
        SELECT 1 FROM {queues} AS q
        WHERE q.name = %(queue)s
          AND (q.state = 'active' OR (q.state = 'paused' AND q.resume_at <= now())))
"""
CLAIM_JOBS: LiteralString = (
    """
WITH claimed AS MATERIALIZED (
    SELECT id FROM {jobs}
    WHERE queue = %(queue)s AND state IN ('pending', 'retrying') AND scheduled_at <= now()
"""
    + QUEUE_RUNNABLE
    + """
    ORDER BY priority DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {jobs} AS j
SET state = 'running', attempts = j.attempts + 1, started_at = now(), taken_by = %(worker_id)s,
    claim_token = %(token)s, progress = NULL
FROM claimed
WHERE j.id = claimed.id
RETURNING j.id::text, """
    + ", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(",")[1:])
)
# A claimed row is JOB_COLUMNS (the id as text: the worker keeps ids as strings, and a
# uuid.UUID built per job, then turned into a string, costs ~2 µs); the claim's token is not
# part of the job, the worker keeps it.

# Take up to %(wanted)s tokens of a queue's rate limit for the current fixed window, on the
# database's clock; returns how many were granted. Run in the claim's transaction: the row
# lock makes concurrent workers take turns, so the limit holds across all of them.
ENSURE_RATE_ROW: LiteralString = """
INSERT INTO {queue_rates} (queue, window_start, used) VALUES (%(queue)s, now(), 0)
ON CONFLICT (queue) DO NOTHING
"""

TAKE_RATE_TOKENS: LiteralString = """
WITH current AS (
    SELECT r.queue, w.start,
           CASE WHEN r.window_start = w.start THEN r.used ELSE 0 END AS used
    FROM {queue_rates} AS r,
         (SELECT to_timestamp(floor(extract(epoch FROM now()) / %(window)s) * %(window)s)
             AS start) AS w
    WHERE r.queue = %(queue)s
    FOR UPDATE OF r
), granted AS (
    SELECT queue, start, used, least(%(wanted)s, greatest(%(limit)s - used, 0)) AS n
    FROM current
)
UPDATE {queue_rates} AS r
SET window_start = g.start, used = g.used + g.n
FROM granted AS g
WHERE r.queue = g.queue
RETURNING g.n
"""

# Give back tokens that were granted but found no job to claim.
RETURN_RATE_TOKENS: LiteralString = """
UPDATE {queue_rates} SET used = greatest(used - %(unused)s, 0) WHERE queue = %(queue)s
"""

# Write many outcomes at once. Fenced: only a job this worker still holds in state
# 'running', under the claim (its token) that ran it, is changed. Returns the ids written:
# only those outcomes are reported to plugins.
COMPLETE_JOBS: LiteralString = """
WITH outcome AS (
    -- One JSON array of outcomes: encoding it is far cheaper than six parameter arrays.
    SELECT * FROM json_to_recordset(%(outcomes)s::json)
        AS o(id uuid, token uuid, state text, error text, scheduled_at timestamptz, meta text,
             result text, result_error text, progress text)
), done AS (
    UPDATE {jobs} AS j
    SET state = o.state,
        completed_at = CASE WHEN o.state IN ('succeeded', 'failed') THEN now() END,
        errors = CASE WHEN o.error IS NULL THEN j.errors
                      ELSE j.errors || jsonb_build_array(jsonb_build_object(
                          'attempt', j.attempts, 'traceback', o.error)) END,
        scheduled_at = coalesce(o.scheduled_at, j.scheduled_at),
        meta = coalesce(o.meta::jsonb, j.meta),
        result = o.result::jsonb,
        result_error = o.result_error,
        progress = coalesce(o.progress::jsonb, j.progress),
        taken_by = NULL,
        cancelled_at = NULL,
        claim_token = NULL
    FROM outcome AS o
    -- IS NOT DISTINCT FROM: a filter, not an index condition, so the plan looks each job
    -- up by primary key instead of scanning all of this worker's running rows.
    WHERE j.id = o.id AND j.state = 'running' AND j.taken_by IS NOT DISTINCT FROM %(worker_id)s
      AND j.claim_token IS NOT DISTINCT FROM o.token
    RETURNING j.id, j.state
), notified AS (
    -- "done" only while someone waits (holds the waiters' locks shared, events.waiter_lock):
    -- taking this worker's slot here means no one does, and a waiter that comes now waits
    -- for this commit.
    SELECT count(pg_notify(%(channel)s, json_build_object('e', 'done', 'ids', ids)::text))
    FROM (
        SELECT array_agg(id) AS ids FROM done WHERE state IN ('succeeded', 'failed')
        HAVING count(*) > 0
    ) AS finished
    WHERE NOT pg_try_advisory_xact_lock(%(waiters)s::int4, %(slot)s::int4)
)
SELECT done.id::text FROM done, notified
"""

# The latest progress of running jobs, fenced like an outcome (a late write after the
# outcome, or after the job was put back or rescued, changes nothing).
SET_PROGRESS: LiteralString = """
UPDATE {jobs} AS j SET progress = p.progress::jsonb
FROM json_to_recordset(%(progress)s::json) AS p(id uuid, token uuid, progress text)
WHERE j.id = p.id AND j.state = 'running' AND j.taken_by = %(worker_id)s
  AND j.claim_token = p.token
"""

# Put a worker's running jobs back to run again (graceful shutdown, lost jobs), each fenced
# on the claim that took it (the heartbeat reads the token of an orphan with its id).
RELEASE_JOBS: LiteralString = """
UPDATE {jobs} AS j
SET state = 'pending', attempts = greatest(j.attempts - 1, 0), taken_by = NULL,
    started_at = NULL, claim_token = NULL
FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) AS r(id, token)
WHERE j.id = r.id AND j.state = 'running' AND j.taken_by = %(worker_id)s
  AND j.claim_token IS NOT DISTINCT FROM r.token
RETURNING j.id
"""

NOTIFY: LiteralString = "SELECT pg_notify(%(channel)s, %(payload)s)"

# --- concurrency keys (chancy_core.concurrency) ----------------------------------------------

# Keyed claims of one queue take turns: each takes this transaction-scoped lock first (its
# own statement, so the claim's snapshot, taken after it, sees every earlier keyed claim
# committed). Without it two workers could each see a key's free slot and both take it.
# JIT off for the transaction: the keyed claim's estimated cost passes jit_above_cost on a
# few thousand jobs, and compiling it costs ~20 times its run (hundreds of ms per claim).
LOCK_KEYED_CLAIMS: LiteralString = (
    "SELECT pg_advisory_xact_lock(%(lock)s), set_config('jit', 'off', true)"
)


def _keyed_choice(name: LiteralString, source: LiteralString) -> LiteralString:
    """CTEs ``{name}_rated`` and ``{name}_allowed``: of the candidate jobs in ``source``
    (id, priority, k, f), the first ``limit`` in claim order that their rules allow. A
    limited key's (function's) free slots are its rule's limit minus its running jobs; its
    candidates are ranked in claim order and take them in turn; an ordered key (function)
    starts a job only if no unfinished job of it has a lower id (an index probe)."""
    return (
        name
        + """_rated AS MATERIALIZED (
    SELECT c.id, c.priority, c.k, c.f,
           kr.max_running - coalesce(ku.n, 0) AS k_free, kr.ordered AS k_ordered,
           fr.max_running - coalesce(fu.n, 0) AS f_free, fr.ordered AS f_ordered
    FROM """
        + source
        + """ AS c
    LEFT JOIN LATERAL (
        SELECT max_running, ordered FROM rules
        WHERE kind = 'key' AND c.k LIKE like_pattern
        ORDER BY length(pattern) DESC, pattern LIMIT 1
    ) AS kr ON true
    LEFT JOIN LATERAL (
        SELECT max_running, ordered FROM rules
        WHERE kind = 'func' AND c.f LIKE like_pattern
        ORDER BY length(pattern) DESC, pattern LIMIT 1
    ) AS fr ON true
    LEFT JOIN key_used AS ku ON ku.k = c.k
    LEFT JOIN func_used AS fu ON fu.f = c.f
), """
        + name
        + """_allowed AS MATERIALIZED (
    SELECT c.id, c.priority FROM (
        SELECT r.*,
               row_number() OVER (PARTITION BY r.k ORDER BY r.priority DESC, r.id) AS k_rank,
               row_number() OVER (PARTITION BY r.f ORDER BY r.priority DESC, r.id) AS f_rank,
               -- Only a key's (function's) lowest id among the candidates may be its first.
               row_number() OVER (PARTITION BY r.k ORDER BY r.id) AS k_idrank,
               row_number() OVER (PARTITION BY r.f ORDER BY r.id) AS f_idrank
        FROM """
        + name
        + """_rated AS r
    ) AS c
    WHERE CASE WHEN c.k_free IS NULL THEN true
               WHEN c.k_ordered THEN c.k_free >= 1 AND c.k_idrank = 1 AND NOT EXISTS (
                   SELECT FROM {jobs} AS e
                   WHERE e.queue = %(queue)s AND e.meta ? 'concurrency_key'
                     AND e.meta ->> 'concurrency_key' = c.k
                     AND e.state IN ('pending', 'running', 'retrying') AND e.id < c.id)
               ELSE c.k_rank <= c.k_free END
      AND CASE WHEN c.f_free IS NULL THEN true
               -- No index on functions: this one may read the jobs table (a rare rule).
               WHEN c.f_ordered THEN c.f_free >= 1 AND c.f_idrank = 1
                   AND NOT EXISTS (SELECT FROM {jobs} AS e WHERE e.queue = %(queue)s
                                   AND e.state = 'pending' AND e.id < c.id AND e.func = c.f)
                   AND NOT EXISTS (SELECT FROM {jobs} AS e WHERE e.queue = %(queue)s
                                   AND e.state = 'retrying' AND e.id < c.id AND e.func = c.f)
                   AND NOT EXISTS (SELECT FROM {jobs} AS e WHERE e.queue = %(queue)s
                                   AND e.state = 'running' AND e.id < c.id AND e.func = c.f)
               ELSE c.f_rank <= c.f_free END
    ORDER BY c.priority DESC, c.id
    LIMIT %(limit)s
)"""
    )


# The keyed claim's common part: the queue's rules, the running count of each key and
# function (from the queue's running jobs: few, at most the workers' slots), and the walk:
# the first %(window)s runnable jobs in claim order (the plain claim's index and LIMIT).
_KEYED_BASE: LiteralString = (
    """rules AS MATERIALIZED (
    SELECT kind, pattern, like_pattern, max_running, ordered
    FROM {concurrency_rules} WHERE queue = %(queue)s
), running AS MATERIALIZED (
    SELECT meta ->> 'concurrency_key' AS k, func AS f
    FROM {jobs} WHERE queue = %(queue)s AND state = 'running'
), key_used AS MATERIALIZED (
    SELECT k, count(*) AS n FROM running WHERE k IS NOT NULL GROUP BY k
), func_used AS MATERIALIZED (
    SELECT f, count(*) AS n FROM running GROUP BY f
), walk AS MATERIALIZED (
    SELECT j.id, j.priority, j.meta ->> 'concurrency_key' AS k, j.func AS f
    FROM {jobs} AS j
    WHERE j.queue = %(queue)s AND j.state IN ('pending', 'retrying') AND j.scheduled_at <= now()
"""
    + QUEUE_RUNNABLE
    + """
    ORDER BY j.priority DESC, j.id
    LIMIT %(window)s
), """
    + _keyed_choice("walk", "walk")
)

# Lock and set running the jobs of the CTE "allowed": the CTE "taken".
_KEYED_TAKE: LiteralString = (
    """, claimed AS MATERIALIZED (
    -- Locked by primary key. Keyed claims take turns, so only another kind of writer (a
    -- cancellation) can hold one of these rows: skipped, the claim takes fewer this time.
    SELECT j.id FROM {jobs} AS j
    WHERE j.id IN (SELECT id FROM allowed) AND j.state IN ('pending', 'retrying')
    FOR UPDATE OF j SKIP LOCKED
), taken AS (
    -- clock_timestamp(): the transaction began before the lock was granted; the job
    -- starts now.
    UPDATE {jobs} AS j
    SET state = 'running', attempts = j.attempts + 1, started_at = clock_timestamp(),
        taken_by = %(worker_id)s, claim_token = %(token)s, progress = NULL
    FROM claimed
    WHERE j.id = claimed.id
    RETURNING j.id::text, """
    + ", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(",")[1:])
    + """
)
"""
)

# The claim of a queue with key rules (see the migrations 0005 and 0006): CLAIM_JOBS, with
# only the jobs their rules allow now, chosen among the walk's jobs (see _keyed_choice).
# Usually enough: when they fill the claim, or the walk saw every runnable job, they are
# the jobs a read of all of them would choose. Each row ends with the number of jobs the
# walk saw (not a job column); when it took none, one row of NULLs ends with it. When the
# claim is not full and the walk saw %(window)s jobs, the claim goes on with
# CLAIM_KEYED_PER_KEY in the same transaction.
CLAIM_KEYED_JOBS: LiteralString = (
    "WITH "
    + _KEYED_BASE
    + ", allowed AS (SELECT id FROM walk_allowed)"
    + _KEYED_TAKE
    + "SELECT taken.*, w.n FROM (SELECT count(*) AS n FROM walk) AS w LEFT JOIN taken ON true"
)

# How many distinct keys the queue's runnable jobs have, counted up to %(most)s (a bounded
# skip-scan of the 0006 index): the keyed claim looks per key only when there are few, and
# else first walks further.
# The skip-scan's steps over a queue's distinct keys with runnable jobs (one probe of the
# 0006 index each): its first key, and the key after the recursive CTE "keys"' current one.
_FIRST_KEY: LiteralString = """(SELECT j.meta ->> 'concurrency_key' FROM {jobs} AS j
     WHERE j.queue = %(queue)s AND j.meta ? 'concurrency_key'
       AND j.state IN ('pending', 'retrying')
     ORDER BY 1 LIMIT 1)"""
_NEXT_KEY: LiteralString = """(SELECT j.meta ->> 'concurrency_key' FROM {jobs} AS j
            WHERE j.queue = %(queue)s AND j.meta ? 'concurrency_key'
              AND j.state IN ('pending', 'retrying')
              AND j.meta ->> 'concurrency_key' > keys.k
            ORDER BY 1 LIMIT 1)"""

COUNT_KEYED_KEYS: LiteralString = (
    """
WITH RECURSIVE keys (k, n) AS (
    SELECT """
    + _FIRST_KEY
    + """, 1
    UNION ALL
    SELECT """
    + _NEXT_KEY
    + """, keys.n + 1
    FROM keys WHERE keys.k IS NOT NULL AND keys.n < %(most)s
)
SELECT count(k) FROM keys
"""
)

# The keyed claim's second statement, when the walk's jobs mostly belong to keys that
# cannot start more now (a few keys with many jobs each, full keys, an ordered key waiting
# for a retry): per key. A skip-scan over the queue's distinct keys (one probe of the 0006
# index each), and each free key's first jobs (one probe each), with the walk's jobs that
# no key rule limits; of those, the first in claim order the rules allow. It sees the
# first statement's jobs running. Jobs no key rule limits further back than the walk wait
# until it moves.
CLAIM_KEYED_PER_KEY: LiteralString = (
    "WITH RECURSIVE "
    + _KEYED_BASE
    + """, keys (k) AS (
    SELECT """
    + _FIRST_KEY
    + """
    UNION ALL
    SELECT """
    + _NEXT_KEY
    + """
    FROM keys WHERE keys.k IS NOT NULL
), heads AS MATERIALIZED (
    -- Each limited key's candidates: an ordered key's first unfinished job (if it can run
    -- now), another key's first free-slots jobs in claim order.
    SELECT h.id, h.priority, keys.k, h.f
    FROM keys
    CROSS JOIN LATERAL (
        SELECT max_running, ordered FROM rules
        WHERE kind = 'key' AND keys.k LIKE like_pattern
        ORDER BY length(pattern) DESC, pattern LIMIT 1
    ) AS kr
    LEFT JOIN key_used AS ku ON ku.k = keys.k
    CROSS JOIN LATERAL (
        (SELECT j.id, j.priority, j.func AS f, j.state, j.scheduled_at FROM {jobs} AS j
         WHERE kr.ordered AND coalesce(ku.n, 0) = 0
           AND j.queue = %(queue)s AND j.meta ? 'concurrency_key'
           AND j.meta ->> 'concurrency_key' = keys.k
           AND j.state IN ('pending', 'running', 'retrying')
         ORDER BY j.id LIMIT 1)
        UNION ALL
        (SELECT j.id, j.priority, j.func AS f, j.state, j.scheduled_at FROM {jobs} AS j
         WHERE NOT kr.ordered AND kr.max_running > coalesce(ku.n, 0)
           AND j.queue = %(queue)s AND j.meta ? 'concurrency_key'
           AND j.meta ->> 'concurrency_key' = keys.k
           AND j.state IN ('pending', 'retrying') AND j.scheduled_at <= now()
         ORDER BY j.priority DESC, j.id
         LIMIT least(kr.max_running - coalesce(ku.n, 0), %(limit)s))
    ) AS h
    WHERE keys.k IS NOT NULL AND h.state IN ('pending', 'retrying') AND h.scheduled_at <= now()
"""
    + QUEUE_RUNNABLE
    + """
), candidates AS MATERIALIZED (
    SELECT id, priority, k, f FROM walk_rated WHERE k_free IS NULL
    UNION ALL
    -- The first heads in claim order only (a key's heads fit its free slots: all of them
    -- may start unless a function rule holds them back).
    (SELECT id, priority, k, f FROM heads ORDER BY priority DESC, id LIMIT %(window)s)
), """
    + _keyed_choice("more", "candidates")
    + ", allowed AS (SELECT id FROM more_allowed)"
    + _KEYED_TAKE
    + "SELECT * FROM taken"
)

# The queues that have key rules: their claims take CLAIM_KEYED_JOBS, the others the plain
# CLAIM_JOBS (so queues without keys pay nothing for them).
SELECT_KEYED_QUEUES: LiteralString = "SELECT DISTINCT queue FROM {concurrency_rules}"

CONCURRENCY_RULE_COLUMNS: LiteralString = "queue, kind, pattern, max_running, ordered"

UPSERT_CONCURRENCY_RULE: LiteralString = """
WITH upserted AS (
    INSERT INTO {concurrency_rules} (queue, kind, pattern, like_pattern, max_running, ordered)
    VALUES (%(queue)s, %(kind)s, %(pattern)s, %(like_pattern)s, %(max_running)s, %(ordered)s)
    ON CONFLICT (queue, kind, pattern) DO UPDATE SET
        like_pattern = EXCLUDED.like_pattern, max_running = EXCLUDED.max_running,
        ordered = EXCLUDED.ordered
    RETURNING queue
)
SELECT pg_notify(%(channel)s, json_build_object('e', 'queue', 'q', queue)::text) FROM upserted
"""

DELETE_CONCURRENCY_RULE: LiteralString = """
WITH deleted AS (
    DELETE FROM {concurrency_rules}
    WHERE queue = %(queue)s AND kind = %(kind)s AND pattern = %(pattern)s
    RETURNING queue
)
SELECT pg_notify(%(channel)s, json_build_object('e', 'queue', 'q', queue)::text) FROM deleted
"""

SELECT_CONCURRENCY_RULES: LiteralString = (
    "SELECT " + CONCURRENCY_RULE_COLUMNS + " FROM {concurrency_rules}"
    " WHERE %(queue)s::text IS NULL OR queue = %(queue)s ORDER BY queue, kind, pattern"
)
