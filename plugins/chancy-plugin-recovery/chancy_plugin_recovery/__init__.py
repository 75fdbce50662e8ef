"""chancy-plugin-recovery: jobs left ``running`` by dead workers, and hung jobs, go back
to ``pending``; a job rescued too often fails instead of looping forever.

A leader-only task runs :meth:`Recovery.rescue` every ``interval`` seconds. A
``running`` job is rescued when

* its worker's row in the workers table is gone, or its heartbeat
  (``last_seen``) is older than ``worker_timeout`` seconds; or
* it has a ``Limit(TIME)`` and has run longer than that limit plus ``grace``
  seconds, even on a live worker (the worker should have stopped it itself).

Each rescue adds one to ``Job.meta["recovery"]["rescues"]`` and an entry to the
job's errors saying why. A job rescued more than ``max_rescues`` times (the
plugin's option, or ``Job.meta["recovery"]["max_rescues"]`` set with
:meth:`Recovery.limit`) fails instead, with an error saying so.

**It never races a live worker.** Everything happens in one statement: it
selects the stale rows ``FOR UPDATE SKIP LOCKED`` and updates only those still
``running`` under the same ``taken_by`` and attempt number. A worker that is
writing the job's outcome at that moment holds the row lock, so the row is
skipped (and finishes normally); a worker that writes later is fenced out by
the core's completion, which requires the row to still be ``running`` under
that worker and the claim token of the claim that ran it (every claim sets a
fresh one), so even a worker that was wrongly declared dead and re-claims the
same job cannot write an outcome for the attempt it lost. The attempt counter
is *not* decremented (unlike a graceful shutdown's release): a rescued attempt
counts towards ``max_attempts``.

A job running in a ``process`` queue's child keeps running if only its worker
was killed and the child survived; give such jobs a time limit.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, LiteralString, TypeVar

import anyio

from chancy_core import Job, hookimpl
from chancy_core.errors import (
    TRANSIENT_ERRORS,
    ConfigurationError,
    InvalidJobError,
)
from chancy_core.events import DONE, PUSHED
from chancy_core.hookspecs import RegisterTask

if TYPE_CHECKING:
    from chancy_core import Chancy
    from chancy_core import WorkerHandle as Worker

__all__ = ["KEY", "Recovery", "Rescue"]

log = logging.getLogger(__name__)

KEY = "recovery"
"""The key of ``Job.meta`` this plugin owns."""

J = TypeVar("J", bound=Job)
T = TypeVar("T")

#: Errors that mean the database is away for now: logged, and tried again next round.
_TRANSIENT = TRANSIENT_ERRORS

#: A statement generator run by ``app.execute`` (see docs/writing-plugins.md).
Operation = Generator[tuple[bytes, dict[str, Any]], list[tuple[Any, ...]], T]

# One statement, fenced: select the stale running rows (locking them, skipping rows a
# worker is writing right now), then update only those still running under the same
# worker and attempt. Junk in limits or meta never breaks the statement for other rows.
RESCUE: LiteralString = """
WITH candidates AS MATERIALIZED (  -- run once: its LIMIT bounds the batch
    SELECT j.id, j.attempts, j.taken_by, w.last_seen, t.seconds AS time_limit,
           CASE WHEN w.worker_id IS NULL THEN 'gone'
                WHEN w.last_seen < now() - make_interval(secs => %(worker_timeout)s)
                    THEN 'silent'
                ELSE 'hung' END AS reason,
           CASE WHEN jsonb_typeof(j.meta -> 'recovery' -> 'rescues') = 'number'
                THEN (j.meta -> 'recovery' ->> 'rescues')::numeric::int ELSE 0 END + 1
               AS rescues,
           CASE WHEN jsonb_typeof(j.meta -> 'recovery' -> 'max_rescues') = 'number'
                THEN (j.meta -> 'recovery' ->> 'max_rescues')::numeric::int
                ELSE %(max_rescues)s END AS max_rescues
    FROM {jobs} AS j
    LEFT JOIN {workers} AS w ON w.worker_id = j.taken_by
    LEFT JOIN LATERAL (
        SELECT min((l ->> 'v')::float8) AS seconds
        FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(j.limits) = 'array' THEN j.limits ELSE '[]' END) AS l
        WHERE l ->> 't' = 'time' AND jsonb_typeof(l -> 'v') = 'number'
    ) AS t ON true
    WHERE j.state = 'running'
      AND (w.worker_id IS NULL
           OR w.last_seen < now() - make_interval(secs => %(worker_timeout)s)
           OR j.started_at < now() - make_interval(secs => t.seconds + %(grace)s))
    ORDER BY j.id
    LIMIT %(batch_size)s
    FOR UPDATE OF j SKIP LOCKED
), rescued AS (
    UPDATE {jobs} AS j
    SET state = CASE WHEN c.rescues > c.max_rescues THEN 'failed' ELSE 'pending' END,
        completed_at = CASE WHEN c.rescues > c.max_rescues THEN now() END,
        taken_by = NULL,
        cancelled_at = NULL,
        meta = j.meta || jsonb_build_object('recovery',
            CASE WHEN jsonb_typeof(j.meta -> 'recovery') = 'object'
                 THEN j.meta -> 'recovery' ELSE '{{}}'::jsonb END
            || jsonb_build_object('rescues', c.rescues, 'last_reason', c.reason,
                                  'last_worker', c.taken_by, 'last_rescued_at', now())),
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempts,
            'traceback', 'rescued by the recovery plugin: '
                || CASE c.reason
                    WHEN 'gone' THEN 'worker ' || coalesce(c.taken_by, '(none)')
                        || ', which was running attempt ' || j.attempts || ', is gone'
                    WHEN 'silent' THEN 'worker ' || c.taken_by || ', which was running attempt '
                        || j.attempts || ', stopped sending heartbeats (last seen '
                        || c.last_seen || ', more than ' || %(worker_timeout)s
                        || ' s before ' || now() || ')'
                    ELSE 'attempt ' || j.attempts || ' ran past its time limit of '
                        || c.time_limit || ' s plus ' || %(grace)s || ' s of grace on worker '
                        || c.taken_by END
                || CASE WHEN c.rescues > c.max_rescues
                    THEN '. It was rescued ' || c.rescues || ' times, more than max_rescues ('
                        || c.max_rescues || '), so it failed instead of running again'
                    ELSE '. It runs again (rescue ' || c.rescues || ' of at most '
                        || c.max_rescues || ')' END))
    FROM candidates AS c
    WHERE j.id = c.id AND j.state = 'running' AND j.taken_by IS NOT DISTINCT FROM c.taken_by
      AND j.attempts = c.attempts
    RETURNING j.id, j.queue, j.state, c.reason, c.taken_by, c.rescues, j.func, j.attempts
), pushed AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('e', %(pushed)s::text, 'q', queue)::text))
    FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'pending') AS queues
), finished AS (
    SELECT count(pg_notify(%(channel)s, json_build_object('e', %(done)s::text, 'ids', ids)::text))
    FROM (SELECT array_agg(id) AS ids FROM rescued WHERE state = 'failed'
          HAVING count(*) > 0) AS failed
)
SELECT id, state, reason, taken_by, rescues, func, attempts FROM rescued
UNION ALL  -- read the notifications even when nothing was rescued, so that they run
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM pushed, finished
WHERE pushed.count + finished.count < 0
"""

# Forget workers silent for long that run nothing (a worker that comes back re-registers).
FORGET_WORKERS: LiteralString = """
DELETE FROM {workers} AS w
WHERE w.last_seen < now() - make_interval(secs => %(after)s)
  AND NOT EXISTS (
      SELECT 1 FROM {jobs} AS j WHERE j.state = 'running' AND j.taken_by = w.worker_id)
RETURNING w.worker_id
"""


@dataclass(frozen=True, slots=True)
class Rescue:
    """One job the recovery plugin put back (``state == "pending"``) or failed."""

    job_id: str
    state: str
    """``"pending"`` (it runs again) or ``"failed"`` (rescued more than ``max_rescues``)."""
    reason: str
    """``"gone"`` (no worker row), ``"silent"`` (stale heartbeat) or ``"hung"`` (past its
    time limit plus grace)."""
    worker_id: str | None
    rescues: int
    func: str = ""
    """The job's function."""
    attempt: int = 0
    """The attempt that was rescued."""


def _rescue_op(statement: bytes, params: dict[str, Any]) -> Operation[list[Rescue]]:
    """One batch of :data:`RESCUE`: the jobs it put back or failed."""
    rows = yield statement, params
    return [
        Rescue(
            job_id=str(job_id),
            state=state,
            reason=reason,
            worker_id=worker_id,
            rescues=rescues,
            func=func,
            attempt=attempt,
        )
        for job_id, state, reason, worker_id, rescues, func, attempt in rows
        if job_id is not None  # the row that only carries the notifications
    ]


def _forget_op(statement: bytes, params: dict[str, Any]) -> Operation[list[str]]:
    """:data:`FORGET_WORKERS`: the ids of the workers' rows it deleted."""
    rows = yield statement, params
    return [str(worker_id) for (worker_id,) in rows]


def _positive(value: object, what: str, *, allow_zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (value >= 0 if allow_zero else value > 0)
    ):
        raise ConfigurationError(
            f"Recovery({what}=...) must be a number {'>= 0' if allow_zero else '> 0'},"
            f" not {value!r}"
        )
    return float(value)


def _count(value: object, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"{what} must be an integer >= {low}, not {value!r}")
    return value


class Recovery:
    """Puts back jobs of dead workers and hung jobs (see the module docs).

    :param interval: seconds between two rounds.
    :param worker_timeout: a worker whose heartbeat is older than this many seconds is
        dead. Keep it several times the workers' ``heartbeat_interval``.
    :param grace: seconds a job may run past its ``Limit(TIME)`` before it is rescued.
    :param max_rescues: rescues allowed per job; one more fails it.
    :param batch_size: jobs rescued per statement.
    :param forget_workers_after: delete rows of workers silent for this many seconds
        that run no job; ``None`` keeps them.
    """

    name = KEY
    recovers_dead_workers = True
    """Tells the worker this plugin puts back dead workers' jobs (no start-up warning)."""

    def __init__(
        self,
        *,
        interval: float = 10.0,
        worker_timeout: float = 60.0,
        grace: float = 30.0,
        max_rescues: int = 3,
        batch_size: int = 500,
        forget_workers_after: float | None = 3600.0,
    ) -> None:
        self.interval = _positive(interval, "interval")
        self.worker_timeout = _positive(worker_timeout, "worker_timeout")
        self.grace = _positive(grace, "grace", allow_zero=True)
        self.max_rescues = _count(max_rescues, "Recovery(max_rescues=...)", 0)
        self.batch_size = _count(batch_size, "Recovery(batch_size=...)", 1)
        self.forget_workers_after = (
            None
            if forget_workers_after is None
            else _positive(forget_workers_after, "forget_workers_after")
        )

    @staticmethod
    def limit(job: J, *, max_rescues: int) -> J:
        """Return a copy of ``job`` that may be rescued ``max_rescues`` times (overriding
        the plugin's option)."""
        _count(max_rescues, "max_rescues", 0)
        mine = job.meta.get(KEY)
        mine = dict(mine) if isinstance(mine, dict) else {}
        if "rescues" in mine:
            raise InvalidJobError("Recovery.limit() takes a job that was never rescued")
        return job.with_meta({**job.meta, KEY: {**mine, "max_rescues": max_rescues}})

    # --- the work ------------------------------------------------------------------------

    async def rescue(self, app: Chancy) -> list[Rescue]:
        """Run one round: rescue every stale job (a statement per ``batch_size``)."""
        params: dict[str, Any] = {
            "worker_timeout": self.worker_timeout,
            "grace": self.grace,
            "max_rescues": self.max_rescues,
            "batch_size": self.batch_size,
            "channel": app.schema.channel,
            "pushed": PUSHED,  # the notification protocol's event kinds
            "done": DONE,
        }
        statement = app.schema.render(RESCUE)
        done: list[Rescue] = []
        while True:
            batch = await app.execute(_rescue_op(statement, params))
            for rescue in batch:
                log.warning(
                    "job %s (%s) attempt %d was rescued from worker %s (%s): %s",
                    rescue.job_id,
                    rescue.func,
                    rescue.attempt,
                    rescue.worker_id,
                    rescue.reason,
                    "it failed, rescued more than max_rescues times"
                    if rescue.state == "failed"
                    else f"it runs again (rescue {rescue.rescues})",
                    extra={
                        "job_id": rescue.job_id,
                        "worker_id": rescue.worker_id,
                        "reason": rescue.reason,
                        "rescues": rescue.rescues,
                        "func": rescue.func,
                        "attempt": rescue.attempt,
                    },
                )
            done += batch
            if len(batch) < self.batch_size:
                return done

    async def forget_workers(self, app: Chancy) -> list[str]:
        """Delete the rows of workers silent for ``forget_workers_after`` that run nothing."""
        if self.forget_workers_after is None:
            return []
        op = _forget_op(app.schema.render(FORGET_WORKERS), {"after": self.forget_workers_after})
        return await app.execute(op)

    async def run(self, worker: Worker) -> None:
        """The leader-only task: a round every ``interval`` seconds, until cancelled."""
        while True:
            try:
                await self.rescue(worker.chancy)
                await self.forget_workers(worker.chancy)
            except _TRANSIENT as exc:
                log.warning("recovery round failed (%s); trying again in %.1fs", exc, self.interval)
            await anyio.sleep(self.interval)

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def chancy_worker_tasks(self, register: RegisterTask) -> None:
        """The leader-only rescue task."""
        register("recovery", self.run, leader_only=True)
