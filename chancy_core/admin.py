"""Operating the queue: browse jobs, queues and workers, and act on them.

Each operation is a sans-IO generator, an :data:`~chancy_core.ops.Operation` like those
of :mod:`chancy_core.ops`: it yields ``(statement, params)`` and receives the rows, so
:class:`~chancy_core.app.Chancy` runs it on an async or a sync connection (``list_jobs``
and ``sync_list_jobs`` run one operation, see :mod:`chancy_core.app.twins`).

Rules worth knowing:

* **Paging.** :func:`list_jobs_op` returns jobs newest first (by id: ids are
  time-ordered UUIDs) with a keyset cursor (the id of the last job of the
  page). With a queue or state filter, each ``(queue, state)`` pair is read
  along the ``(queue, state, id)`` index, at most ``limit + 1`` rows each, and
  the pairs are merged; without either, the primary key is read backwards.
  Either way a page costs about the same at 1,000,000 rows as at 100. The
  ``func`` and ``since``/``until`` filters (``since <= created_at < until``)
  are applied to the rows read along the index: a filter that matches few
  jobs reads more of it, so combine them with a queue or a state.
* **Acting on one job** raises :class:`~chancy_core.errors.JobNotFoundError`
  when it does not exist and :class:`~chancy_core.errors.JobStateError` when
  it is in a state the action does not apply to; it never does nothing
  silently. Bulk actions act on the jobs of the filter that they apply to and
  return how many they changed.
* **Pausing until a time.** ``pause_queue(name, resume_at=t)`` stores ``t``;
  wherever queues are read (workers, ``get_queue``, ``queue_stats``), a paused
  queue whose ``resume_at`` has passed reads as active, so it resumes at ``t``
  with no worker change and no one acting (each worker notices within its
  queue refresh, about a second). ``resume_queue`` and the next ``declare``
  clear ``resume_at``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, LiteralString, ParamSpec, TypeVar

from psycopg import sql
from psycopg.types.json import Jsonb

from chancy_core import sql as q
from chancy_core.errors import (
    ConfigurationError,
    InvalidJobError,
    JobNotFoundError,
    JobStateError,
    QueueNotFoundError,
)
from chancy_core.job import Job, QueuedJob, Reference, check_queue_name, registered_jobs
from chancy_core.ops import Operation, Rows, Statement, Step
from chancy_core.queue import Queue

__all__ = [
    "QUEUE_CHANGES",
    "JobPage",
    "QueueStats",
    "StateFilter",
    "WorkerInfo",
]

P = ParamSpec("P")
T = TypeVar("T")

StateFilter = QueuedJob.State | str | Sequence[QueuedJob.State | str] | None
"""A state, a state's name, or several of them (``None``: every state)."""

ALL_STATES = tuple(s.value for s in QueuedJob.State)
WAITING = ("pending", "retrying")

QUEUE_CHANGES = frozenset(
    {
        "concurrency",
        "executor",
        "executor_options",
        "polling_interval",
        "rate_limit",
        "rate_limit_window",
        "tags",
    }
)
"""The settings :meth:`~chancy_core.app.Chancy.update_queue` can change."""


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of :meth:`~chancy_core.app.Chancy.list_jobs`."""

    jobs: list[QueuedJob]
    """The jobs, newest first."""
    next_cursor: str | None
    """Pass as ``cursor=`` for the next page; ``None`` on the last page."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    """How one queue stands: job counts and its oldest waiting job."""

    name: str
    """The queue's name."""
    counts: dict[str, int]
    """Jobs per state, every state present (0 when none)."""
    oldest_pending_at: datetime | None
    """When the longest-waiting runnable job became due (pending or retrying, due now)."""
    oldest_pending_age: float | None
    """Seconds that job has waited, on the database's clock."""
    queue: Queue | None
    """The declaration (with its effective state), or ``None`` if jobs name an undeclared
    queue: no worker serves them until it is declared."""
    resume_at: datetime | None = None
    """When a queue paused with ``resume_at`` resumes by itself."""


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker as its heartbeat row shows it."""

    worker_id: str
    """Its id (``--worker-id``, or a random one)."""
    hostname: str
    """The host it runs on."""
    pid: int
    """Its process id on that host."""
    queues: list[str]
    """The queues it serves."""
    tags: list[str]
    """Its tags (which queues it may serve)."""
    started_at: datetime
    """When it registered."""
    last_seen: datetime
    """Its last heartbeat."""
    heartbeat_age: float
    """Seconds since that heartbeat, on the database's clock."""
    alive: bool
    """Whether the heartbeat is younger than the ``timeout`` of the listing."""
    running: list[str] = field(default_factory=list)
    """The ids of the jobs it runs now."""


# --- helpers ---------------------------------------------------------------------------------


def eager(make: Callable[P, Operation[T]]) -> Callable[P, Operation[T]]:
    """Run an operation's checks when it is built, not when it first runs: a bad argument
    then fails before a connection is taken (and with an app that is not open yet)."""

    @functools.wraps(make)
    def build(*args: P.args, **kwargs: P.kwargs) -> Operation[T]:
        op = make(*args, **kwargs)
        try:
            first = next(op)  # everything up to the first statement: the checks
        except StopIteration as stop:
            return _finished(stop.value)
        return _resumed(op, first)

    return build


def _finished(value: T) -> Operation[T]:
    return value
    yield  # a generator that runs nothing


def _resumed(op: Operation[T], first: Step) -> Operation[T]:
    rows = yield first
    while True:
        try:
            step = op.send(rows)
        except StopIteration as stop:
            result: T = stop.value
            return result
        rows = yield step


_job_from_row = q.job_from_row
_queue_from_row = q.queue_from_row


def job_id(ref: Reference | str) -> uuid.UUID:
    """The UUID of a job reference, or a clear :class:`JobNotFoundError`."""
    identifier = ref.identifier if isinstance(ref, Reference) else ref
    try:
        return uuid.UUID(identifier)
    except (TypeError, ValueError, AttributeError):
        raise JobNotFoundError(
            f"{identifier!r} is not a job reference: use the Reference that push() returned"
        ) from None


def states_of(state: StateFilter) -> list[str] | None:
    """The state names of a filter, checked (``None``: no state filter)."""
    if state is None:
        return None
    items = [state] if isinstance(state, str | QueuedJob.State) else list(state)
    names: list[str] = []
    for item in items:
        name = item.value if isinstance(item, QueuedJob.State) else item
        if name not in ALL_STATES:
            raise ConfigurationError(
                f"unknown job state {item!r}: use one of {', '.join(ALL_STATES)}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigurationError("state= is an empty list: give at least one state, or None")
    return names


def _aware(value: datetime | None, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise ConfigurationError(
            f"{what} must be timezone-aware (e.g. datetime.now(UTC)), not a naive datetime"
        )
    return value


@dataclass(frozen=True, slots=True)
class JobFilter:
    """The filter of ``list_jobs`` and the bulk actions."""

    queue: str | None = None
    states: list[str] | None = None
    func: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def of(
        cls,
        *,
        queue: str | None = None,
        state: StateFilter = None,
        func: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> JobFilter:
        """Check and build a filter."""
        if queue is not None:
            check_queue_name(queue, ConfigurationError)
        if func is not None and (not isinstance(func, str) or not func):
            raise ConfigurationError(f"func must be a function's full name, not {func!r}")
        return cls(queue, states_of(state), func, _aware(since, "since"), _aware(until, "until"))

    @property
    def empty(self) -> bool:
        """Whether it filters nothing."""
        return (self.queue, self.states, self.func, self.since, self.until) == (None,) * 5

    def where(
        self, alias: str, *, with_queue_state: bool = True
    ) -> tuple[sql.Composable, dict[str, Any]]:
        """``AND``-ed conditions on ``alias`` (leading ``TRUE``), and their parameters."""
        col = sql.Identifier(alias)
        parts: list[sql.Composable] = [sql.SQL("TRUE")]
        params: dict[str, Any] = {}
        if with_queue_state and self.queue is not None:
            parts.append(sql.SQL("{}.queue = %(f_queue)s").format(col))
            params["f_queue"] = self.queue
        if with_queue_state and self.states is not None:
            parts.append(sql.SQL("{}.state = ANY(%(f_states)s::text[])").format(col))
            params["f_states"] = self.states
        if self.func is not None:
            parts.append(sql.SQL("{}.func = %(f_func)s").format(col))
            params["f_func"] = self.func
        if self.since is not None:
            parts.append(sql.SQL("{}.created_at >= %(f_since)s").format(col))
            params["f_since"] = self.since
        if self.until is not None:
            parts.append(sql.SQL("{}.created_at < %(f_until)s").format(col))
            params["f_until"] = self.until
        return sql.SQL(" AND ").join(parts), params


def _render(schema: q.Schema, template: LiteralString, **parts: sql.Composable) -> bytes:
    names = {n: sql.Identifier(schema.name(n)) for n in ("jobs", "queues", "workers")}
    return sql.SQL(template).format(**names, **parts).as_bytes(None)


_COLUMNS = sql.SQL(", ").join(
    sql.SQL("j.") + sql.Identifier(c.strip()) for c in q.JOB_COLUMNS.split(",")
)


# --- reading ---------------------------------------------------------------------------------


@eager
def get_jobs_op(
    schema: q.Schema, refs: Sequence[Reference | str]
) -> Operation[list[QueuedJob | None]]:
    """Jobs by reference, in the order of ``refs`` (``None`` where one does not exist)."""
    ids = [job_id(ref) for ref in refs]
    rows = yield schema.render(q.SELECT_JOBS), {"ids": ids}
    by_id = {row[0]: _job_from_row(row) for row in rows}
    return [by_id.get(i) for i in ids]


@eager
def get_job_op(schema: q.Schema, ref: Reference | str) -> Operation[QueuedJob | None]:
    """One job by reference, or ``None`` if it does not exist."""
    found = yield from get_jobs_op(schema, [ref])
    return found[0]


def count_jobs_op(
    schema: q.Schema, states: Iterable[QueuedJob.State | str]
) -> Operation[dict[tuple[str, QueuedJob.State], int]]:
    """How many jobs each queue has in each of ``states``, keyed ``(queue, state)``.
    Pending and retrying counts read the small fetch index; other states their rows."""
    wanted = sorted({QueuedJob.State(s).value for s in states})  # checked at once
    statement = q.COUNT_WAITING_JOBS if set(wanted) <= set(WAITING) else q.COUNT_JOBS
    return _counted(schema.render(statement), wanted)


def _counted(
    statement: bytes, wanted: list[str]
) -> Operation[dict[tuple[str, QueuedJob.State], int]]:
    rows = yield statement, {"states": wanted}
    return {(queue, QueuedJob.State(state)): int(n) for queue, state, n in rows}


def list_jobs_statement(
    schema: q.Schema, flt: JobFilter, *, limit: int, cursor: str | None
) -> Statement:
    """The statement of one page (``limit`` rows), for :func:`list_jobs_op` and EXPLAIN."""
    params: dict[str, Any] = {"limit": limit}
    conds, fparams = flt.where("j", with_queue_state=False)
    params |= fparams
    if cursor is not None:
        try:
            params["cursor"] = uuid.UUID(cursor)
        except (TypeError, ValueError, AttributeError):
            raise ConfigurationError(
                f"invalid cursor {cursor!r}: pass the next_cursor of the previous page"
            ) from None
        conds = sql.SQL("{} AND j.id < %(cursor)s").format(conds)
    if flt.queue is None and flt.states is None:
        return (
            _render(
                schema,
                "SELECT {cols} FROM {jobs} AS j WHERE {conds} ORDER BY j.id DESC LIMIT %(limit)s",
                cols=_COLUMNS,
                conds=conds,
            ),
            params,
        )
    # One index range per (queue, state): each reads at most `limit` rows along
    # (queue, state, id) backwards; the merge keeps the newest `limit`. The queues come
    # from a loose index scan (one probe per distinct queue) when none is given.
    params["states"] = flt.states if flt.states is not None else list(ALL_STATES)
    if flt.queue is not None:
        params["queue"] = flt.queue
        queues = "qs(q) AS (SELECT %(queue)s::text)"
    else:
        queues = (
            "qs(q) AS ((SELECT queue FROM {jobs} ORDER BY queue LIMIT 1) UNION ALL"
            " SELECT (SELECT queue FROM {jobs} WHERE queue > qs.q ORDER BY queue LIMIT 1)"
            " FROM qs WHERE qs.q IS NOT NULL)"
        )
    template: LiteralString = (
        "WITH RECURSIVE "
        + queues
        + " SELECT {cols} FROM qs CROSS JOIN unnest(%(states)s::text[]) AS s(state)"
        " CROSS JOIN LATERAL (SELECT * FROM {jobs} AS j"
        " WHERE j.queue = qs.q AND j.state = s.state AND {conds}"
        " ORDER BY j.id DESC LIMIT %(limit)s) AS j"
        " WHERE qs.q IS NOT NULL ORDER BY j.id DESC LIMIT %(limit)s"
    )
    return _render(schema, template, cols=_COLUMNS, conds=conds), params


@eager
def list_jobs_op(
    schema: q.Schema, flt: JobFilter, *, limit: int = 50, cursor: str | None = None
) -> Operation:
    """One page of jobs, newest first (see the module's notes)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise ConfigurationError(f"limit must be an integer from 1 to 10000, not {limit!r}")
    rows = yield list_jobs_statement(schema, flt, limit=limit + 1, cursor=cursor)
    jobs = [_job_from_row(row) for row in rows[:limit]]
    return JobPage(jobs, jobs[-1].id if len(rows) > limit else None)


QUEUE_STATS: LiteralString = (
    """
WITH counts AS (
    SELECT queue, state, count(*) AS n FROM {jobs} GROUP BY queue, state
), oldest AS (
    SELECT queue, min(scheduled_at) AS at FROM {jobs}
    WHERE state IN ('pending', 'retrying') AND scheduled_at <= now() GROUP BY queue
), names AS (
    SELECT queue AS name FROM counts UNION SELECT name FROM {queues}
)
SELECT names.name,
       coalesce((SELECT jsonb_object_agg(state, n) FROM counts WHERE counts.queue = names.name),
                '{{}}'),
       oldest.at, extract(epoch FROM now() - oldest.at), qu.*
FROM names
LEFT JOIN oldest ON oldest.queue = names.name
LEFT JOIN LATERAL (SELECT """
    + q.QUEUE_COLUMNS
    + """, resume_at FROM {queues} WHERE name = names.name) AS qu ON TRUE
ORDER BY names.name
"""
)


@eager
def queue_stats_op(schema: q.Schema) -> Operation:
    """Every declared queue and every queue that has jobs, with counts per state."""
    rows = yield _render(schema, QUEUE_STATS), {}
    stats = []
    for name, counts, oldest_at, age, *queue_row, resume_at in rows:
        declared = queue_row[0] is not None
        stats.append(
            QueueStats(
                name=name,
                counts={s: int(counts.get(s, 0)) for s in ALL_STATES},
                oldest_pending_at=oldest_at,
                oldest_pending_age=float(age) if age is not None else None,
                queue=_queue_from_row(queue_row) if declared else None,
                resume_at=resume_at if declared else None,
            )
        )
    return stats


LIST_WORKERS: LiteralString = """
SELECT w.worker_id, w.hostname, w.pid, w.queues, w.tags, w.started_at, w.last_seen,
       extract(epoch FROM now() - w.last_seen),
       ARRAY(SELECT j.id::text FROM {jobs} AS j
             WHERE j.state = 'running' AND j.taken_by = w.worker_id ORDER BY j.id)
FROM {workers} AS w
ORDER BY w.worker_id
"""


@eager
def job_record_op(schema: q.Schema, ref: Reference | str) -> Operation:
    """What the jobs table keeps beside a :class:`QueuedJob`: ``created_at``, ``taken_by``
    (the worker running it) and ``cancelled_at`` (a cancellation asked of a running job);
    ``None`` if the job does not exist."""
    rows = yield (
        _render(schema, "SELECT created_at, taken_by, cancelled_at FROM {jobs} WHERE id = %(id)s"),
        {"id": job_id(ref)},
    )
    if not rows:
        return None
    created_at, taken_by, cancelled_at = rows[0]
    return {"created_at": created_at, "taken_by": taken_by, "cancelled_at": cancelled_at}


@eager
def list_workers_op(schema: q.Schema, *, timeout: float = 60.0) -> Operation:
    """Every registered worker; ``alive`` when its heartbeat is younger than ``timeout``."""
    rows = yield _render(schema, LIST_WORKERS), {}
    return [
        WorkerInfo(
            worker_id=wid,
            hostname=host,
            pid=pid,
            queues=list(queues),
            tags=list(tags),
            started_at=started,
            last_seen=seen,
            heartbeat_age=float(age),
            alive=float(age) < timeout,
            running=list(running),
        )
        for wid, host, pid, queues, tags, started, seen, age, running in rows
    ]


# --- acting on one job -------------------------------------------------------------------------


@eager
def cancel_job_op(schema: q.Schema, ref: Reference | str) -> Operation[bool]:
    """Cancel a job (see :meth:`~chancy_core.app.Chancy.cancel_job`); whether anything
    was cancelled."""
    params = {"ids": [job_id(ref)], "channel": schema.channel}
    rows = yield schema.render(q.CANCEL_JOBS), params
    return _cancelled(rows) > 0


_LOCK_JOB: LiteralString = "SELECT state, unique_key FROM {jobs} WHERE id = %(id)s FOR UPDATE"

_UNIQUE_HOLDER: LiteralString = """
SELECT id FROM {jobs}
WHERE unique_key = %(key)s AND state IN ('pending', 'running', 'retrying') AND id <> %(id)s
"""

_NOTIFY_PUSHED: LiteralString = """
SELECT count(pg_notify(%(channel)s, '{{"e":"pushed","q":' || to_json(q)::text || '}}'))
FROM unnest(%(queues)s::text[]) AS q
"""

_NOTIFY_DONE: LiteralString = (
    "SELECT pg_notify(%(channel)s, json_build_object('e', 'done', 'ids', %(ids)s::text[])::text)"
)


def _lock(
    schema: q.Schema, ref: Reference | str, allowed: Sequence[str], action: str
) -> Operation[tuple[uuid.UUID, str, str | None]]:
    ident = job_id(ref)
    rows = yield _render(schema, _LOCK_JOB), {"id": ident}
    if not rows:
        raise JobNotFoundError(f"job {ident} does not exist (pruned, deleted or never pushed)")
    state, unique_key = rows[0]
    if state not in allowed:
        raise JobStateError(
            f"cannot {action} job {ident}: it is {state}, and only a job that is"
            f" {' or '.join(allowed)} can be"
            + (" (cancel it first, or wait for it to finish)" if state == "running" else "")
        )
    return ident, state, unique_key


def _update_one(
    schema: q.Schema, ident: uuid.UUID, set_clause: LiteralString, params: dict[str, Any]
) -> Operation[QueuedJob]:
    template: LiteralString = (
        "UPDATE {jobs} AS j SET " + set_clause + " WHERE j.id = %(id)s RETURNING {cols}"
    )
    rows = yield _render(schema, template, cols=_COLUMNS), {**params, "id": ident}
    job = _job_from_row(rows[0])
    yield _render(schema, _NOTIFY_PUSHED), {"channel": schema.channel, "queues": [job.queue]}
    return job


_RETRY_SET: LiteralString = (
    "state = 'pending', scheduled_at = now(), started_at = NULL, completed_at = NULL,"
    " taken_by = NULL, cancelled_at = NULL,"
    " max_attempts = greatest(j.max_attempts, j.attempts + 1)"
)


@eager
def retry_job_op(schema: q.Schema, ref: Reference | str) -> Operation:
    """A failed or succeeded job runs again: a new attempt, its errors kept. Run in a
    transaction."""
    ident, _, unique_key = yield from _lock(schema, ref, ("failed", "succeeded"), "retry")
    if unique_key is not None:
        holder = yield _render(schema, _UNIQUE_HOLDER), {"key": unique_key, "id": ident}
        if holder:
            raise JobStateError(
                f"cannot retry job {ident}: its unique_key {unique_key!r} is held by job"
                f" {holder[0][0]}, which has not finished"
            )
    job: QueuedJob = yield from _update_one(schema, ident, _RETRY_SET, {})
    return job


@eager
def requeue_job_op(
    schema: q.Schema, ref: Reference | str, *, queue: str | None = None
) -> Operation:
    """A waiting job runs now (optionally on another queue). Run in a transaction."""
    if queue is not None:
        check_queue_name(queue, ConfigurationError)
    ident, _, _ = yield from _lock(schema, ref, WAITING, "requeue")
    job: QueuedJob = yield from _update_one(
        schema,
        ident,
        "state = 'pending', scheduled_at = now(), queue = coalesce(%(queue)s, j.queue)",
        {"queue": queue},
    )
    return job


@eager
def set_job_priority_op(schema: q.Schema, ref: Reference | str, priority: int) -> Operation:
    """Change a waiting job's priority (higher runs first). Run in a transaction."""
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not -(2**31) <= priority < 2**31
    ):
        raise ConfigurationError(f"priority must be a 32-bit integer, not {priority!r}")
    ident, _, _ = yield from _lock(schema, ref, WAITING, "reprioritise")
    job: QueuedJob = yield from _update_one(
        schema, ident, "priority = %(priority)s", {"priority": priority}
    )
    return job


@eager
def reschedule_job_op(schema: q.Schema, ref: Reference | str, at: datetime) -> Operation:
    """Change when a waiting job may start. Run in a transaction."""
    when = _aware(at, "at")
    ident, _, _ = yield from _lock(schema, ref, WAITING, "reschedule")
    job: QueuedJob = yield from _update_one(schema, ident, "scheduled_at = %(at)s", {"at": when})
    return job


@eager
def delete_job_op(schema: q.Schema, ref: Reference | str) -> Operation:
    """Delete a job that is not running. Run in a transaction."""
    ident, _, _ = yield from _lock(
        schema, ref, ("pending", "retrying", "succeeded", "failed"), "delete"
    )
    yield _render(schema, "DELETE FROM {jobs} WHERE id = %(id)s"), {"id": ident}
    yield _render(schema, _NOTIFY_DONE), {"channel": schema.channel, "ids": [str(ident)]}
    return True


# --- acting on many jobs -----------------------------------------------------------------------

_BULK_RETRY: LiteralString = """
WITH picked AS (
    SELECT j.id, j.unique_key FROM {jobs} AS j
    WHERE {conds} AND j.state = ANY(%(retryable)s::text[])
    FOR UPDATE
), keyed AS (
    -- One job per unique key, and none whose key an unfinished job holds.
    SELECT DISTINCT ON (p.unique_key) p.id FROM picked AS p
    WHERE p.unique_key IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM {jobs} AS o
        WHERE o.unique_key = p.unique_key AND o.state IN ('pending', 'running', 'retrying'))
    ORDER BY p.unique_key, p.id DESC
), changed AS (
    UPDATE {jobs} AS j SET {set}
    FROM picked AS p
    WHERE j.id = p.id AND (p.unique_key IS NULL OR p.id IN (SELECT id FROM keyed))
    RETURNING j.queue
), notified AS (
    SELECT count(pg_notify(%(channel)s, '{{"e":"pushed","q":' || to_json(queue)::text || '}}'))
    FROM (SELECT DISTINCT queue FROM changed) AS qs
)
SELECT (SELECT count(*) FROM changed), notified.count FROM notified
"""


@eager
def retry_jobs_op(schema: q.Schema, flt: JobFilter) -> Operation:
    """Retry every failed job of the filter (succeeded ones too if ``state`` names them).
    Jobs whose unique key an unfinished job holds are left as they are."""
    retryable = [s for s in (flt.states or ["failed"]) if s in ("failed", "succeeded")]
    if not retryable:
        raise ConfigurationError(
            "retry_jobs() retries failed or succeeded jobs: the state filter names neither"
        )
    conds, params = flt.where("j", with_queue_state=True)
    statement = _render(schema, _BULK_RETRY, conds=conds, set=sql.SQL(_RETRY_SET))
    rows = yield statement, {**params, "retryable": retryable, "channel": schema.channel}
    return int(rows[0][0])


@eager
def cancel_jobs_op(schema: q.Schema, flt: JobFilter) -> Operation:
    """Cancel every unfinished job of the filter (as ``cancel_job`` does each)."""
    conds, params = flt.where("j")
    rows = yield (
        _render(
            schema,
            "SELECT j.id FROM {jobs} AS j WHERE {conds}"
            " AND j.state IN ('pending', 'running', 'retrying')",
            conds=conds,
        ),
        params,
    )
    ids = [r[0] for r in rows]
    cancelled = 0
    for start in range(0, len(ids), 100):  # 100 ids per notification (8000-byte payloads)
        done = yield (
            schema.render(q.CANCEL_JOBS),
            {"ids": ids[start : start + 100], "channel": schema.channel},
        )
        cancelled += _cancelled(done)
    return cancelled


def _cancelled(rows: Rows) -> int:
    """How many jobs :data:`~chancy_core.sql.CANCEL_JOBS` cancelled: the waiting ones it
    failed plus the running ones it asked to stop."""
    if not rows:
        return 0
    waiting, running, _notified, _finished = rows[0]
    return int(waiting) + int(running)


_BULK_DELETE: LiteralString = """
WITH deleted AS (
    DELETE FROM {jobs} AS j WHERE {conds} AND j.state <> 'running' RETURNING j.id
), notified AS (
    -- 100 ids per notification: a payload must stay under 8000 bytes.
    SELECT count(pg_notify(%(channel)s, json_build_object('e', 'done', 'ids', ids)::text))
    FROM (
        SELECT array_agg(id) AS ids
        FROM (SELECT id, (row_number() OVER ()) / 100 AS chunk FROM deleted) AS numbered
        GROUP BY chunk
    ) AS d
)
SELECT (SELECT count(*) FROM deleted), notified.count FROM notified
"""


@eager
def delete_jobs_op(schema: q.Schema, flt: JobFilter) -> Operation:
    """Delete every job of the filter that is not running; needs a filter."""
    if flt.empty:
        raise ConfigurationError(
            "delete_jobs() needs a filter (queue=, state=, func=, since= or until=); to delete"
            " every finished job, pass state=['succeeded', 'failed']"
        )
    conds, params = flt.where("j")
    rows = yield _render(schema, _BULK_DELETE, conds=conds), {**params, "channel": schema.channel}
    return int(rows[0][0])


# --- queues --------------------------------------------------------------------------------------


def declare_queue_op(schema: q.Schema, queue: Queue) -> Operation[Queue]:
    """Create ``queue``, or update it if it exists (running workers pick up the change)."""
    if not isinstance(queue, Queue):  # checked at once
        raise ConfigurationError(f"declare() takes a Queue, not {type(queue).__name__}")
    return _declared(schema, queue)


def _declared(schema: q.Schema, queue: Queue) -> Operation[Queue]:
    params = {**_settings(queue), "name": queue.name, "state": queue.state.value}
    yield schema.render(q.UPSERT_QUEUE), {**params, "channel": schema.channel}
    return queue


def _settings(queue: Queue) -> dict[str, Any]:
    """The statement parameters of a queue's settings (those ``update_queue`` changes)."""
    return {
        "concurrency": queue.concurrency,
        "executor": queue.executor,
        "executor_options": Jsonb(queue.executor_options),
        "polling_interval": float(queue.polling_interval),
        "rate_limit": queue.rate_limit,
        "rate_limit_window": queue.rate_limit_window,
        "tags": sorted(queue.tags),
    }


@eager
def get_queue_op(schema: q.Schema, name: str) -> Operation[Queue | None]:
    """The declared queue named ``name``, or ``None``."""
    check_queue_name(name, ConfigurationError)
    rows = yield schema.render(q.SELECT_QUEUE), {"name": name}
    return _queue_from_row(rows[0]) if rows else None


_SET_QUEUE_STATE: LiteralString = """
WITH changed AS (
    UPDATE {queues} SET state = %(state)s, resume_at = %(resume_at)s, updated_at = now()
    WHERE name = %(name)s
    RETURNING name
)
SELECT pg_notify(%(channel)s, json_build_object('e', 'queue', 'q', name)::text) FROM changed
"""


@eager
def set_queue_state_op(
    schema: q.Schema, name: str, state: Queue.State, resume_at: datetime | None = None
) -> Operation:
    """Pause (until ``resume_at``, if given) or resume a queue; whether it exists."""
    check_queue_name(name, ConfigurationError)
    when = _aware(resume_at, "resume_at")
    if when is not None and when <= datetime.now(UTC):
        raise ConfigurationError(f"resume_at {when.isoformat()} has passed: give a future time")
    rows = yield (
        _render(schema, _SET_QUEUE_STATE),
        {"name": name, "state": state.value, "resume_at": when, "channel": schema.channel},
    )
    return bool(rows)


@eager
def delete_queue_op(
    schema: q.Schema, name: str, *, purge_jobs: bool = False, keep_jobs: bool = False
) -> Operation:
    """Delete a queue's declaration. While it has unfinished jobs it refuses, unless
    ``purge_jobs`` (its waiting jobs are deleted and its running ones cancelled) or
    ``keep_jobs`` (they wait until the queue is declared again). Run in a transaction."""
    check_queue_name(name, ConfigurationError)
    if purge_jobs and keep_jobs:
        raise ConfigurationError("give purge_jobs=True or keep_jobs=True, not both")
    exists = yield (
        _render(schema, "SELECT 1 FROM {queues} WHERE name = %(name)s FOR UPDATE"),
        {"name": name},
    )
    if not exists:
        return False
    rows = yield (
        _render(
            schema,
            "SELECT state, count(*) FROM {jobs} WHERE queue = %(name)s"
            " AND state IN ('pending', 'running', 'retrying') GROUP BY state",
        ),
        {"name": name},
    )
    left = {state: int(n) for state, n in rows}
    if left and not (purge_jobs or keep_jobs):
        counts = ", ".join(f"{n} {state}" for state, n in sorted(left.items()))
        raise JobStateError(
            f"queue {name!r} still has {counts} job(s), which no worker would run once it is"
            " deleted: pass purge_jobs=True (CLI: --purge) to delete and cancel them, or"
            " keep_jobs=True (CLI: --keep-jobs) to leave them waiting for a new declaration"
        )
    if purge_jobs and left:
        yield from cancel_jobs_op(schema, JobFilter(queue=name, states=["running"]))
        yield from delete_jobs_op(schema, JobFilter(queue=name, states=list(WAITING)))
    yield schema.render(q.DELETE_QUEUE), {"name": name, "channel": schema.channel}
    return True


_UPDATE_QUEUE: LiteralString = """
WITH changed AS (
    UPDATE {queues} SET concurrency = %(concurrency)s, executor = %(executor)s,
        executor_options = %(executor_options)s, polling_interval = %(polling_interval)s,
        rate_limit = %(rate_limit)s, rate_limit_window = %(rate_limit_window)s,
        tags = %(tags)s, updated_at = now()
    WHERE name = %(name)s
    RETURNING name
)
SELECT pg_notify(%(channel)s, json_build_object('e', 'queue', 'q', name)::text) FROM changed
"""


@eager
def update_queue_op(schema: q.Schema, name: str, changes: dict[str, Any]) -> Operation:
    """Change only the given settings of a declared queue. Run in a transaction."""
    check_queue_name(name, ConfigurationError)
    unknown = sorted(set(changes) - QUEUE_CHANGES)
    if unknown:
        raise ConfigurationError(
            f"update_queue() cannot change {', '.join(unknown)}: it changes"
            f" {', '.join(sorted(QUEUE_CHANGES))} (pause_queue/resume_queue change the state)"
        )
    rows = yield schema.render(q.SELECT_QUEUE) + b" FOR UPDATE", {"name": name}
    if not rows:
        raise QueueNotFoundError(
            f"queue {name!r} is not declared: declare it first (`chancy queue declare {name}`)"
        )
    queue = dataclasses.replace(_queue_from_row(rows[0]), **changes)  # validates
    params = {**_settings(queue), "name": name, "channel": schema.channel}
    yield _render(schema, _UPDATE_QUEUE), params
    return queue


@eager
def queue_exists_op(schema: q.Schema, names: Sequence[str]) -> Operation:
    """Which of ``names`` are declared queues."""
    rows = yield (
        _render(schema, "SELECT name FROM {queues} WHERE name = ANY(%(names)s::text[])"),
        {"names": list(names)},
    )
    return {r[0] for r in rows}


# --- guard rails on push -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Params:
    """What a function accepts, for a fast check of each job's kwargs."""

    names: frozenset[str]
    required: frozenset[str]
    any_keyword: bool
    signature: str


_params_cache: dict[Any, _Params | None] = {}


def _params_of(func: Any) -> _Params | None:
    try:
        return _params_cache[func]
    except (KeyError, TypeError):
        pass
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        found = None
    else:
        kinds = inspect.Parameter
        usable = [
            p
            for p in signature.parameters.values()
            if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
            and p.name != "job_context"
        ]
        found = _Params(
            names=frozenset(p.name for p in usable),
            required=frozenset(p.name for p in usable if p.default is kinds.empty),
            any_keyword=any(p.kind is kinds.VAR_KEYWORD for p in signature.parameters.values()),
            signature=str(signature),
        )
    with contextlib.suppress(TypeError):  # an unhashable callable: not cached
        _params_cache[func] = found
    return found


def known_function(name: str) -> Any:
    """The function a job names, if it is registered with ``@job`` or its module is already
    imported (push never imports a module: that could run code); else ``None``."""
    found = registered_jobs.get(name)
    if found is not None:
        return found
    module, _, attribute = name.rpartition(".")
    loaded = sys.modules.get(module)
    return getattr(loaded, attribute, None) if loaded is not None else None


def check_signatures(jobs: Sequence[Job]) -> None:
    """Raise :class:`InvalidJobError` for a job whose kwargs its (known) function cannot
    take, naming the missing or unexpected argument."""
    seen: dict[str, _Params | None] = {}
    for job in jobs:
        try:
            params = seen[job.func]
        except KeyError:
            func = known_function(job.func)
            params = seen[job.func] = _params_of(func) if callable(func) else None
        if params is None:
            continue
        given = set(job.kwargs or ())
        missing = sorted(params.required - given)
        unexpected = [] if params.any_keyword else sorted(given - params.names)
        if missing or unexpected:
            problems = []
            if missing:
                problems.append(f"missing {', '.join(map(repr, missing))}")
            if unexpected:
                problems.append(f"unexpected {', '.join(map(repr, unexpected))}")
            raise InvalidJobError(
                f"kwargs of job {job.func} do not fit its signature {job.func.rpartition('.')[2]}"
                f"{params.signature}: {' and '.join(problems)}"
            )
