"""Every statement of the workflow plugin; ``{name}`` placeholders get the app's table prefix.

``{jobs}`` is the core's jobs table: steps read their job's ``state`` and ``result`` from
it in the same statement as their own rows.
"""

from __future__ import annotations

from typing import LiteralString

# --- submitting -------------------------------------------------------------------------------

INSERT_WORKFLOW: LiteralString = """
INSERT INTO {workflows} (id, name, on_failure, steps_total)
VALUES (%(id)s, %(name)s, %(on_failure)s, %(total)s)
"""

INSERT_STEPS: LiteralString = """
INSERT INTO {workflow_steps} (workflow_id, name, job, depends_on, children, waiting, state)
SELECT %(id)s, u.name, u.job,
       ARRAY(SELECT jsonb_array_elements_text(u.depends_on)),
       ARRAY(SELECT jsonb_array_elements_text(u.children)), u.waiting, 'waiting'
FROM unnest(%(names)s::text[], %(jobs)s::jsonb[], %(depends_on)s::jsonb[],
            %(children)s::jsonb[], %(waiting)s::int[])
    AS u(name, job, depends_on, children, waiting)
"""

SET_JOB_IDS: LiteralString = """
UPDATE {workflow_steps} AS s SET job_id = u.job_id, state = 'queued', updated_at = now()
FROM unnest(%(workflows)s::uuid[], %(names)s::text[], %(job_ids)s::uuid[])
    AS u(w, name, job_id)
WHERE s.workflow_id = u.w AND s.name = u.name
"""

# --- advancing --------------------------------------------------------------------------------

WORKFLOWS_OF_JOBS: LiteralString = """
SELECT DISTINCT workflow_id FROM {workflow_steps} WHERE job_id = ANY(%(job_ids)s::uuid[])
"""

# In id order: two transactions locking the same workflows never deadlock.
LOCK_RUNNING: LiteralString = """
SELECT id, on_failure FROM {workflows}
WHERE id = ANY(%(ids)s::uuid[]) AND state = 'running'
ORDER BY id
FOR UPDATE
"""

# The queued steps (of the locked workflows) whose job has ended, or vanished (pruned).
# A job that is retrying has not ended: its step waits.
FINISH_STEPS: LiteralString = """
UPDATE {workflow_steps} AS s
SET state = CASE WHEN e.job_state = 'succeeded' THEN 'succeeded' ELSE 'failed' END,
    updated_at = now()
FROM (
    SELECT o.workflow_id, o.name, j.state AS job_state
    FROM {workflow_steps} AS o LEFT JOIN {jobs} AS j ON j.id = o.job_id
    WHERE o.workflow_id = ANY(%(workflows)s::uuid[]) AND o.job_id = ANY(%(job_ids)s::uuid[])
      AND o.state = 'queued' AND (j.id IS NULL OR j.state IN ('succeeded', 'failed'))
) AS e
WHERE s.workflow_id = e.workflow_id AND s.name = e.name AND s.state = 'queued'
RETURNING s.workflow_id, s.name, s.state, s.children
"""

# Policy "continue": every step downstream of the failed ones is skipped.
SKIP_DESCENDANTS: LiteralString = """
WITH RECURSIVE below(name) AS (
    SELECT unnest(children) FROM {workflow_steps}
    WHERE workflow_id = %(id)s AND name = ANY(%(failed)s::text[])
    UNION
    SELECT unnest(s.children) FROM {workflow_steps} AS s JOIN below AS b
        ON s.workflow_id = %(id)s AND s.name = b.name
)
UPDATE {workflow_steps} SET state = 'skipped', updated_at = now()
WHERE workflow_id = %(id)s AND name IN (SELECT name FROM below) AND state = 'waiting'
RETURNING name
"""

# Policy "fail" and cancel_workflow: every step not final yet is cancelled; the jobs of
# the queued ones are returned, to be cancelled once this transaction commits: the
# running ones last, so that the slot one frees cannot start a job about to be cancelled.
CANCEL_STEPS: LiteralString = """
WITH cancelled AS (
    UPDATE {workflow_steps} SET state = 'cancelled', updated_at = now()
    WHERE workflow_id = %(id)s AND state IN ('waiting', 'queued')
    RETURNING job_id
)
SELECT count(*),
       coalesce(array_agg(c.job_id ORDER BY j.state = 'running')
                FILTER (WHERE c.job_id IS NOT NULL), '{{}}')
FROM cancelled AS c LEFT JOIN {jobs} AS j ON j.id = c.job_id
"""

DECREMENT_WAITING: LiteralString = """
UPDATE {workflow_steps} AS s SET waiting = s.waiting - u.n, updated_at = now()
FROM unnest(%(workflows)s::uuid[], %(names)s::text[], %(counts)s::int[]) AS u(w, name, n)
WHERE s.workflow_id = u.w AND s.name = u.name AND s.state = 'waiting'
RETURNING s.workflow_id, s.name, s.waiting, s.job, s.depends_on
"""

# The results of the given steps (the dependencies of steps about to be pushed).
STEP_RESULTS: LiteralString = """
SELECT s.name, j.result FROM {workflow_steps} AS s JOIN {jobs} AS j ON j.id = s.job_id
WHERE s.workflow_id = %(id)s AND s.name = ANY(%(names)s::text[])
"""

COUNT_FINAL: LiteralString = """
UPDATE {workflows} AS w
SET steps_done = w.steps_done + u.done, steps_failed = w.steps_failed + u.failed,
    updated_at = now(),
    state = CASE WHEN u.final_state IS NOT NULL THEN u.final_state
                 WHEN w.steps_done + u.done < w.steps_total THEN 'running'
                 WHEN w.steps_failed + u.failed = 0 THEN 'succeeded'
                 ELSE 'failed' END,
    completed_at = CASE WHEN u.final_state IS NOT NULL
                          OR w.steps_done + u.done >= w.steps_total THEN now() END
FROM unnest(%(ids)s::uuid[], %(done)s::int[], %(failed)s::int[], %(final_states)s::text[])
    AS u(id, done, failed, final_state)
WHERE w.id = u.id
RETURNING w.id, w.state
"""

NOTIFY: LiteralString = "SELECT pg_notify(%(channel)s, %(payload)s)"

# --- the sweeper ------------------------------------------------------------------------------

# Queued steps of running workflows whose job ended (or vanished) without the workflow
# being told: the worker that ran it died between its write and its hook.
STRANDED: LiteralString = """
SELECT s.job_id FROM {workflows} AS w
JOIN {workflow_steps} AS s ON s.workflow_id = w.id AND s.state = 'queued'
LEFT JOIN {jobs} AS j ON j.id = s.job_id
WHERE w.state = 'running' AND (j.id IS NULL OR j.state IN ('succeeded', 'failed'))
LIMIT %(limit)s
"""

# Jobs of cancelled steps still waiting or running (the cancelling process died before
# cancelling them).
UNCANCELLED: LiteralString = """
SELECT s.job_id FROM {workflows} AS w
JOIN {workflow_steps} AS s ON s.workflow_id = w.id AND s.state = 'cancelled'
JOIN {jobs} AS j ON j.id = s.job_id
WHERE w.state IN ('failed', 'cancelled') AND w.completed_at > now() - interval '7 days'
  AND j.state IN ('pending', 'running', 'retrying')
LIMIT %(limit)s
"""

# --- cancelling -------------------------------------------------------------------------------

LOCK_ONE: LiteralString = "SELECT state FROM {workflows} WHERE id = %(id)s FOR UPDATE"

# --- reading ----------------------------------------------------------------------------------

# Both read these columns, in this order (see _workflow_from_row).
SELECT_WORKFLOW: LiteralString = """
SELECT id, name, state, on_failure, steps_total, steps_done, steps_failed, created_at,
       updated_at, completed_at
FROM {workflows} WHERE id = %(id)s
"""

SELECT_STEPS: LiteralString = """
SELECT s.name, s.state, s.depends_on, s.job_id, j.state, j.result, s.updated_at
FROM {workflow_steps} AS s LEFT JOIN {jobs} AS j ON j.id = s.job_id
WHERE s.workflow_id = %(id)s
ORDER BY s.name
"""

LIST_WORKFLOWS: LiteralString = """
SELECT id, name, state, on_failure, steps_total, steps_done, steps_failed, created_at,
       updated_at, completed_at
FROM {workflows}
WHERE (%(state)s::text IS NULL OR state = %(state)s)
  AND (%(after)s::uuid IS NULL
       OR (created_at, id) < (SELECT created_at, id FROM {workflows} WHERE id = %(after)s))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s
"""
