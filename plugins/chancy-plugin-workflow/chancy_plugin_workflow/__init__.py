"""Workflows for chancy-core: a DAG of jobs, advanced by the workers, kept in PostgreSQL.

A :class:`Workflow` names steps, each a :class:`~chancy_core.Job`, and the steps each
depends on. :func:`submit_workflow` validates it (duplicate names, unknown steps,
cycles, size) and writes it in **one transaction**: the workflow's row, a row per step,
and the jobs of the steps that depend on nothing (pushed with
:meth:`Chancy.push_many_ex` on the same connection). Nothing is written when it is
invalid, and a rollback of the caller's transaction leaves nothing behind.

**How it advances, without polling.** A step's job carries ``meta["workflow"]``. When
the core has written its outcome, ``chancy_job_completed`` hands the job to a small
per-worker batcher, which in one transaction per batch locks the workflows' rows
(``FOR UPDATE``, in id order), marks the steps whose job ended (conditionally: only a
``queued`` step whose job is ``succeeded`` or ``failed``), counts down the steps that
depend on them, and pushes those whose dependencies have all succeeded. Two workers
finishing two parents of one step at once are serialized by the workflow's row lock:
the step is pushed exactly once. A retrying job has not ended: its step waits.

**A worker killed in the middle loses nothing.** If a worker dies between its write
and its hook, a leader-only sweeper (every ``sweep_interval`` seconds) finds the
queued steps whose job ended without the workflow being told and runs the same
transaction for them. A job of a killed worker is given back by the recovery plugin
(``chancy-plugin-recovery``); the core's fenced completion guarantees that one job
never runs twice at once, and each step has exactly one job (``unique_key``
``workflow:<id>:<step>``), pushed once.

**Failure policy**, per workflow: ``on_failure="fail"`` (the default) cancels every
step not finished yet (their jobs with :meth:`Chancy.cancel_job`) and fails the
workflow; ``on_failure="continue"`` skips the steps downstream of the failed one and
runs the others; the workflow then ends ``failed``.

**Results.** When a step is pushed, the results of the steps it depends on (the
values their functions returned, read from the core's jobs table) are put in its
job's ``meta["workflow"]["results"]``; the function reads them with
:func:`get_step_results` (``job_context``).

Job.meta key owned: ``"workflow"``: ``{"id": workflow id, "step": name, "results":
{dependency: result}}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, LiteralString

import anyio
import psycopg
from psycopg import sql

from chancy_core import Chancy, ChancyError, Job, QueuedJob, Reference, hookimpl
from chancy_core.connection import PGBOUNCER_POLL_INTERVAL, cut_after
from chancy_core.errors import (
    TRANSIENT_ERRORS,
    DatabaseUnavailableError,
    InvalidJobError,
    SchemaMissingError,
)
from chancy_core.events import ListenerStalled, parse_ping, ping_payload
from chancy_core.migrations import MigrationSet, load_migrations
from chancy_plugin_workflow import queries as q

if TYPE_CHECKING:
    from chancy_core import Outcome
    from chancy_core.hookspecs import RegisterTask
    from chancy_core.hookspecs import WorkerHandle as Worker

__all__ = [
    "MAX_STEPS",
    "META_KEY",
    "PING_INTERVAL",
    "StepContext",
    "StepInfo",
    "StepState",
    "Workflow",
    "WorkflowError",
    "WorkflowInfo",
    "WorkflowNotFoundError",
    "WorkflowState",
    "Workflows",
    "cancel_workflow",
    "get_step_results",
    "get_workflow",
    "list_workflows",
    "step_context",
    "submit_workflow",
    "sync_cancel_workflow",
    "sync_get_workflow",
    "sync_list_workflows",
    "sync_submit_workflow",
    "sync_wait_for_workflow",
    "wait_for_workflow",
]

log = logging.getLogger(__name__)

META_KEY = "workflow"
"""The key of ``Job.meta`` this plugin owns."""

MAX_STEPS = 20_000
"""The default limit on a workflow's size (``submit_workflow(..., max_steps=)`` raises it)."""

_STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")
_POLICIES = ("fail", "continue")
_RETRIES = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)

Rows = list[tuple[Any, ...]]


class WorkflowError(ChancyError, ValueError):
    """The workflow is invalid: fix what the message names before submitting it."""


class WorkflowNotFoundError(ChancyError, LookupError):
    """No workflow has that id (it may have been deleted, or never submitted)."""


class WorkflowState(enum.StrEnum):
    """Where a workflow is. Every state but ``running`` is final."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepState(enum.StrEnum):
    """Where a step is: ``waiting`` for its dependencies, ``queued`` (its job was pushed:
    pending, running or retrying), or final."""

    WAITING = "waiting"
    QUEUED = "queued"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


# --- building and validating ----------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    name: str
    job: Job
    depends_on: tuple[str, ...]


class Workflow:
    """A DAG of jobs to submit with :func:`submit_workflow`::

        flow = Workflow("nightly", on_failure="continue")
        flow.add("fetch", fetch.job)
        flow.add("parse", Job.from_func(parse), depends_on=["fetch"])
        workflow_id = await submit_workflow(chancy, flow)

    :param name: a label shown by :func:`get_workflow` and :func:`list_workflows`.
    :param on_failure: ``"fail"``: a failed step cancels every step not finished yet and
        fails the workflow; ``"continue"``: only the steps that depend on it (directly or
        not) are skipped, the others run, and the workflow ends ``failed``.
    """

    def __init__(self, name: str = "workflow", *, on_failure: str = "fail") -> None:
        if not isinstance(name, str) or not 1 <= len(name) <= 200:
            raise WorkflowError(f"invalid workflow name {name!r}: use 1-200 characters")
        if on_failure not in _POLICIES:
            raise WorkflowError(f"invalid on_failure {on_failure!r}: use 'fail' or 'continue'")
        self.name = name
        self.on_failure = on_failure
        self._steps: dict[str, _Step] = {}

    def add(self, name: str, job: object, *, depends_on: Iterable[str] = ()) -> str:
        """Add a step that runs ``job`` (a :class:`Job`, or a function decorated with
        ``@job``) once every step in ``depends_on`` has succeeded; returns ``name``."""
        if not isinstance(name, str) or not _STEP_NAME.match(name):
            raise WorkflowError(
                f"invalid step name {name!r}: use 1-100 letters, digits, '_', '.', ':' or '-',"
                " starting with a letter or digit"
            )
        if name in self._steps:
            raise WorkflowError(f"duplicate step name {name!r}: each step needs its own name")
        found = job if isinstance(job, Job) else getattr(job, "job", None)
        if not isinstance(found, Job):
            raise WorkflowError(
                f"step {name!r}: cannot run {job!r}: give a Job, or a function decorated with @job"
            )
        if found.unique_key is not None:
            raise WorkflowError(
                f"step {name!r}: its job has a unique_key; remove it (each step's job gets the"
                f" key 'workflow:<id>:{name}')"
            )
        if isinstance(depends_on, str):
            raise WorkflowError(
                f"step {name!r}: depends_on must be a list of step names, not the string"
                f" {depends_on!r}"
            )
        deps = tuple(dict.fromkeys(depends_on))
        for dep in deps:
            if not isinstance(dep, str):
                raise WorkflowError(f"step {name!r}: depends_on holds {dep!r}, not a step name")
        self._steps[name] = _Step(name, Job.unpack(found.pack()), deps)
        return name

    @property
    def steps(self) -> dict[str, tuple[str, ...]]:
        """Each step's name and the steps it depends on, in the order they were added."""
        return {s.name: s.depends_on for s in self._steps.values()}

    def __len__(self) -> int:
        return len(self._steps)

    def validate(self, *, max_steps: int = MAX_STEPS) -> None:
        """Raise :class:`WorkflowError` if the workflow cannot be submitted: no steps, more
        than ``max_steps``, a dependency on an unknown step, or a cycle."""
        _plan(self, max_steps)


@dataclass
class _Plan:
    names: list[str]
    jobs: list[str]  # Job.pack() as JSON
    depends_on: list[str]  # JSON lists
    children: list[str]
    waiting: list[int]
    roots: list[_Step]


def _plan(workflow: Workflow, max_steps: int) -> _Plan:
    if not isinstance(workflow, Workflow):
        raise WorkflowError(f"submit a Workflow, not {type(workflow).__name__}")
    steps = workflow._steps
    if not steps:
        raise WorkflowError("the workflow has no steps: add some with Workflow.add()")
    if len(steps) > max_steps:
        raise WorkflowError(
            f"the workflow has {len(steps)} steps, more than the limit of {max_steps}: split"
            " it, or pass a larger max_steps"
        )
    children: dict[str, list[str]] = {name: [] for name in steps}
    for step in steps.values():
        for dep in step.depends_on:
            if dep not in steps:
                raise WorkflowError(
                    f"step {step.name!r} depends on {dep!r}, which is not a step of this"
                    " workflow: add it first, or fix the name"
                )
            children[dep].append(step.name)
    _check_acyclic(steps, children)
    packed: list[str] = []
    for step in steps.values():
        try:
            packed.append(json.dumps(step.job.pack(), allow_nan=False, separators=(",", ":")))
        except (TypeError, ValueError) as exc:
            raise WorkflowError(
                f"step {step.name!r}: its job's kwargs or meta are not JSON-serializable ({exc})"
            ) from None
    return _Plan(
        names=list(steps),
        jobs=packed,
        depends_on=[json.dumps(list(s.depends_on)) for s in steps.values()],
        children=[json.dumps(children[name]) for name in steps],
        waiting=[len(s.depends_on) for s in steps.values()],
        roots=[s for s in steps.values() if not s.depends_on],
    )


def _check_acyclic(steps: dict[str, _Step], children: dict[str, list[str]]) -> None:
    """Kahn's algorithm; on a cycle, name one."""
    waiting = {name: len(step.depends_on) for name, step in steps.items()}
    ready = [name for name, n in waiting.items() if n == 0]
    seen = 0
    while ready:
        name = ready.pop()
        seen += 1
        for child in children[name]:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if seen == len(steps):
        return
    # Walk back along unfinished dependencies from a step in the cycle until one repeats.
    node = next(name for name, n in waiting.items() if n > 0)
    path: list[str] = []
    index: dict[str, int] = {}
    while node not in index:
        index[node] = len(path)
        path.append(node)
        node = next(d for d in steps[node].depends_on if waiting[d] > 0)
    cycle = [*path[index[node] :], node]
    cycle.reverse()
    raise WorkflowError(
        f"the workflow has a cycle: {' -> '.join(cycle)} (each step runs after the one"
        " before it); remove one of these dependencies"
    )


# --- the jobs of steps ----------------------------------------------------------------------


def _step_job(template: Job, workflow_id: str, name: str, results: dict[str, Any]) -> Job:
    return dataclasses.replace(
        template,
        unique_key=f"workflow:{workflow_id}:{name}",
        meta={**template.meta, META_KEY: {"id": workflow_id, "step": name, "results": results}},
    )


@dataclass(frozen=True)
class StepContext:
    """What a step's job knows of its workflow (see :func:`step_context`)."""

    workflow_id: str
    """The workflow's id."""
    step: str
    """The step's name."""
    results: dict[str, Any]
    """What each step it depends on returned, by step name."""


def step_context(job_context: Job) -> StepContext | None:
    """The workflow step a job runs, or ``None`` if it is not a workflow's step.

    Call it with the job's ``job_context`` (declare a ``job_context`` parameter)."""
    info = job_context.meta.get(META_KEY) if isinstance(job_context, Job) else None
    if not isinstance(info, dict) or "id" not in info or "step" not in info:
        return None
    results = info.get("results")
    return StepContext(str(info["id"]), str(info["step"]), dict(results or {}))


def get_step_results(job_context: Job) -> dict[str, Any]:
    """What the steps this step depends on returned, by step name::

    async def report(job_context: QueuedJob) -> None:
        counts = get_step_results(job_context)  # {"count_a": 3, "count_b": 5}
    """
    found = step_context(job_context)
    if found is None:
        raise WorkflowError(
            "this job is not a workflow step: get_step_results() needs the job_context of a"
            " job pushed by a workflow"
        )
    return found.results


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StepInfo:
    """One step of a workflow, as :func:`get_workflow` reads it."""

    name: str
    state: StepState
    depends_on: tuple[str, ...]
    job: Reference | None
    """The step's job (``None`` until it is pushed); read it with ``chancy.get_job``."""
    job_state: QueuedJob.State | None
    """The job's state (``None``: not pushed yet, or the job was pruned)."""
    result: Any
    """What the job's function returned (``None`` until it succeeded)."""
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict."""
        return {
            "name": self.name,
            "state": self.state.value,
            "depends_on": list(self.depends_on),
            "job": self.job.identifier if self.job else None,
            "job_state": self.job_state.value if self.job_state else None,
            "result": self.result,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, kw_only=True)
class WorkflowInfo:
    """A workflow as a whole: its state and, from :func:`get_workflow`, its steps."""

    id: str
    name: str
    state: WorkflowState
    on_failure: str
    steps_total: int
    steps_done: int
    """Steps in a final state."""
    steps_failed: int
    """Steps failed, skipped or cancelled."""
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    steps: dict[str, StepInfo] = field(default_factory=dict)
    """Each step by name (empty in :func:`list_workflows`'s answers)."""

    @property
    def done(self) -> bool:
        """Whether the workflow is in a final state."""
        return self.state is not WorkflowState.RUNNING

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict (what ``chancy workflow show --json`` prints)."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "on_failure": self.on_failure,
            "steps_total": self.steps_total,
            "steps_done": self.steps_done,
            "steps_failed": self.steps_failed,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "completed_at": self.completed_at.isoformat() if self.completed_at else None,
            "steps": {name: step.to_json() for name, step in self.steps.items()},
        }

    def results(self) -> dict[str, Any]:
        """What each succeeded step returned, by step name."""
        return {
            name: step.result
            for name, step in self.steps.items()
            if step.state is StepState.SUCCEEDED
        }


_JOB_STATES = {s.value: s for s in QueuedJob.State}

Operation = Generator[tuple[bytes, dict[str, Any]], Rows, Any]


def _workflow_from_row(
    row: Sequence[Any], steps: dict[str, StepInfo] | None = None
) -> WorkflowInfo:
    wid, name, state, policy, total, done, failed, created, updated, completed = row
    return WorkflowInfo(
        id=str(wid),
        name=name,
        state=WorkflowState(state),
        on_failure=policy,
        steps_total=total,
        steps_done=done,
        steps_failed=failed,
        created_at=created,
        updated_at=updated,
        completed_at=completed,
        steps=steps or {},
    )


def _workflow_id(workflow_id: object) -> uuid.UUID:
    try:
        return uuid.UUID(str(workflow_id))
    except ValueError:
        raise WorkflowNotFoundError(
            f"{workflow_id!r} is not a workflow id: pass what submit_workflow() returned"
        ) from None


def _get_op(app: Chancy, workflow_id: object) -> Operation:
    wid = _workflow_id(workflow_id)
    rows = yield app.schema.render(q.SELECT_WORKFLOW), {"id": wid}
    if not rows:
        raise WorkflowNotFoundError(f"workflow {wid} does not exist")
    steps = {}
    for name, state, deps, job_id, job_state, result, updated in (
        yield (
            app.schema.render(q.SELECT_STEPS),
            {"id": wid},
        )
    ):
        steps[name] = StepInfo(
            name=name,
            state=StepState(state),
            depends_on=tuple(deps),
            job=Reference(str(job_id)) if job_id is not None else None,
            job_state=_JOB_STATES[job_state] if job_state is not None else None,
            result=result,
            updated_at=updated,
        )
    return _workflow_from_row(rows[0], steps)


def _list_op(app: Chancy, state: str | None, limit: int, after: str | None) -> Operation:
    if state is not None and state not in WorkflowState.__members__.values():
        raise WorkflowError(
            f"invalid state {state!r}: use one of {', '.join(s.value for s in WorkflowState)}"
        )
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise WorkflowError(f"invalid limit {limit!r}: use 1 to 1000")
    params = {
        "state": None if state is None else str(state),
        "limit": limit,
        "after": None if after is None else _workflow_id(after),
    }
    rows = yield app.schema.render(q.LIST_WORKFLOWS), params
    return [_workflow_from_row(row) for row in rows]


async def get_workflow(app: Chancy, workflow_id: str) -> WorkflowInfo:
    """The workflow, with each step's state, job and result.

    Raises :class:`WorkflowNotFoundError` if it does not exist."""
    try:
        info: WorkflowInfo = await app.execute(_get_op(app, workflow_id))
    except SchemaMissingError:
        raise _missing() from None
    return info


def sync_get_workflow(app: Chancy, workflow_id: str) -> WorkflowInfo:
    """Sync twin of :func:`get_workflow`."""
    try:
        info: WorkflowInfo = app.sync_execute(_get_op(app, workflow_id))
    except SchemaMissingError:
        raise _missing() from None
    return info


async def list_workflows(
    app: Chancy, *, state: str | None = None, limit: int = 50, after: str | None = None
) -> list[WorkflowInfo]:
    """Workflows, newest first, without their steps (for dashboards).

    :param state: only workflows in this state.
    :param limit: at most this many (1 to 1000).
    :param after: the id of the last workflow of the previous page: the next page starts
        after it.
    """
    found: list[WorkflowInfo] = await app.execute(_list_op(app, state, limit, after))
    return found


def sync_list_workflows(
    app: Chancy, *, state: str | None = None, limit: int = 50, after: str | None = None
) -> list[WorkflowInfo]:
    """Sync twin of :func:`list_workflows`."""
    found: list[WorkflowInfo] = app.sync_execute(_list_op(app, state, limit, after))
    return found


def _channel(app: Chancy) -> str:
    return app.schema.name("workflows")


def _notify_params(app: Chancy, workflow_id: object, state: str) -> dict[str, Any]:
    return {
        "channel": _channel(app),
        "payload": json.dumps({"id": str(workflow_id), "state": state}),
    }


def _waited_too_long(wid: str, timeout: float | None, info: WorkflowInfo | None) -> TimeoutError:
    progress = f" ({info.steps_done} of {info.steps_total} steps done)" if info else ""
    return TimeoutError(f"workflow {wid} did not finish within {timeout}s{progress}")


_AWAY = (psycopg.OperationalError, DatabaseUnavailableError, ListenerStalled)

PING_INTERVAL = 5.0
"""How often (seconds) a waiter proves its LISTEN connection alive, by default (the
worker's default ``heartbeat_interval``, as the worker's listener)."""


def _ping_op(app: Chancy, payload: str) -> Operation:
    yield app.schema.render(q.NOTIFY), {"channel": _channel(app), "payload": payload}


class _Waiting:
    """The state of one wait (:func:`wait_for_workflow` or its sync twin; they differ only
    in how they do I/O): the deadline, when to read again, and the LISTEN connection's
    proof of life.

    Like the worker's listener (``chancy_core.worker.listener``), the waiter sends a ping
    (:func:`~chancy_core.events.ping_payload`, a NOTIFY on the workflows'
    channel through the app's pool) every ``ping_interval`` seconds and expects it back
    on its own connection within ``2 * ping_interval + call_timeout`` seconds; when it
    does not come (a half-open connection, or one whose LISTEN was lost), the waiter
    drops the connection and reconnects. A ping that cannot be sent proves nothing and
    is not held against the connection. Each read is bounded by ``call_timeout``."""

    def __init__(
        self,
        app: Chancy,
        workflow_id: str,
        timeout: float | None,
        interval: float,
        ping_interval: float,
    ) -> None:
        if not ping_interval > 0:
            raise ValueError(f"ping_interval must be > 0 seconds, not {ping_interval!r}")
        self.app = app
        self.wid = str(_workflow_id(workflow_id))
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        #: Whether LISTEN works (not behind PgBouncer without a listen_dsn): else poll.
        self.listens = app.notifications
        self.interval = interval if self.listens else min(interval, PGBOUNCER_POLL_INTERVAL)
        self.listen = sql.SQL("LISTEN {}").format(sql.Identifier(_channel(app)))
        self.ping_interval = ping_interval
        self.echo_timeout = 2 * ping_interval + app.call_timeout
        self.sender = f"wait_for_workflow:{uuid.uuid4().hex}"
        self.info: WorkflowInfo | None = None
        self._sent = 0
        #: The ping waiting for its echo, and when it was sent (one at a time).
        self._outstanding: tuple[int, float] | None = None
        self._next_ping = 0.0
        self._next_read = 0.0
        #: How many times a connection was found stalled and replaced.
        self.stalls = 0

    def connected(self) -> None:
        """A new LISTEN connection: pings sent to the old one are not held against it,
        and the workflow is read at once (notifications may have been missed)."""
        self._outstanding = None
        self._next_ping = time.monotonic() + self.ping_interval
        self._next_read = 0.0

    def read_due(self) -> bool:
        """Whether to read the workflow now (a notification about it came, a new
        connection, or ``interval`` seconds since the last read)."""
        return time.monotonic() >= self._next_read

    def read_limit(self) -> float:
        """How long the next connect-and-read may take (``call_timeout``, or less before
        the deadline)."""
        limit = self.app.call_timeout
        if self.deadline is not None:
            limit = max(0.05, min(limit, self.deadline - time.monotonic()))
        return limit

    def too_slow(self) -> DatabaseUnavailableError:
        """The error of a read that outlasted :meth:`read_limit`."""
        return DatabaseUnavailableError(
            f"no answer within {self.app.call_timeout:g}s (call_timeout); reconnecting"
        )

    def finished(self, info: WorkflowInfo) -> bool:
        """Record what was read; whether the workflow is final."""
        self.info = info
        self._next_read = time.monotonic() + self.interval
        return info.done

    def check_alive(self) -> None:
        """Raise :class:`ListenerStalled` if the last ping's echo is overdue."""
        if self._outstanding is not None:
            _, sent_at = self._outstanding
            if time.monotonic() - sent_at > self.echo_timeout:
                self.stalls += 1
                raise ListenerStalled(
                    f"its own ping did not come back within {self.echo_timeout:.1f}s (a"
                    " half-open connection?)"
                )

    def ping(self) -> str | None:
        """The payload of the ping to send now, or ``None`` (none due, one already
        waiting for its echo, or no LISTEN)."""
        now = time.monotonic()
        if not self.listens or self._outstanding is not None or now < self._next_ping:
            return None
        self._next_ping = now + self.ping_interval
        self._sent += 1
        return ping_payload(self.sender, self._sent)

    def ping_sent(self, payload: str) -> None:
        """The ping was sent: its echo is now expected."""
        found = parse_ping(payload)
        if found is not None:
            self._outstanding = (found[1], time.monotonic())

    def heard(self, payload: str) -> bool:
        """Whether a notification is about this workflow (a ping echo is recorded)."""
        found = parse_ping(payload)
        if found is not None:
            sender, n = found
            if (
                sender == self.sender
                and self._outstanding is not None
                and n >= self._outstanding[0]
            ):
                self._outstanding = None
            return False
        if self.wid in payload:
            self._next_read = 0.0
            return True
        return False

    def wait_time(self) -> float:
        """How long to wait for a notification before reading again (the poll interval,
        the next ping or echo deadline, the caller's deadline); raises
        :class:`TimeoutError` once the deadline has passed."""
        now = time.monotonic()
        wait = max(self._next_read - now, 0.0)
        if self.deadline is not None:
            wait = min(wait, self.deadline - now)
            if wait <= 0:
                raise _waited_too_long(self.wid, self.timeout, self.info)
        if self.listens:
            due = self._next_ping
            if self._outstanding is not None:
                due = self._outstanding[1] + self.echo_timeout + 0.01
            wait = min(wait, max(due - now, 0.0))
        return wait

    def pause(self, exc: BaseException, what: str) -> float:
        """The database is away (or the connection stalled): log it, and return how long
        to sleep before reconnecting; raises :class:`TimeoutError` past the deadline."""
        log.warning("%s: database unavailable (%s: %s); retrying", what, type(exc).__name__, exc)
        pause = min(self.interval, 1.0)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise _waited_too_long(self.wid, self.timeout, self.info) from exc
            pause = min(pause, left)
        return pause


async def wait_for_workflow(
    app: Chancy,
    workflow_id: str,
    *,
    timeout: float | None = None,
    interval: float = 1.0,
    ping_interval: float = PING_INTERVAL,
) -> WorkflowInfo:
    """Wait until the workflow is in a final state, and return it.

    Woken by a notification when it ends; reads it every ``interval`` seconds in case a
    notification is lost (every 0.2 s at most when notifications cannot work: behind
    PgBouncer without ``listen_dsn``), and reconnects if the database goes away, a read
    gets no answer within ``call_timeout``, or the LISTEN connection does not echo its
    own ping (sent every ``ping_interval`` seconds) in time. Raises
    :class:`TimeoutError` after ``timeout`` seconds, :class:`WorkflowNotFoundError` if
    it does not exist."""
    w = _Waiting(app, workflow_id, timeout, interval, ping_interval)
    conn: psycopg.AsyncConnection[Any] | None = None
    try:
        while True:
            try:
                if conn is None or conn.closed or w.read_due():
                    with anyio.move_on_after(w.read_limit()) as scope:
                        if conn is None or conn.closed:
                            conn = await app.connect()
                            if w.listens:
                                await conn.execute(w.listen)
                            w.connected()
                        info: WorkflowInfo = await _arun(app, conn, _get_op(app, w.wid))
                    if scope.cancelled_caught:
                        raise w.too_slow()
                    if w.finished(info):
                        return info
                w.check_alive()
                payload = w.ping()
                if payload is not None:
                    try:
                        await app.execute(_ping_op(app, payload))
                    except Exception as exc:
                        log.debug("wait_for_workflow: could not send its ping (%s)", exc)
                    else:
                        w.ping_sent(payload)
            except _AWAY as exc:
                if conn is not None:
                    await conn.close()
                conn = None
                await anyio.sleep(w.pause(exc, "wait_for_workflow"))
                continue
            wait = w.wait_time()
            if not w.listens or conn is None:
                await anyio.sleep(wait)
                continue
            try:
                async for note in conn.notifies(timeout=wait):
                    if w.heard(note.payload):
                        break
            except psycopg.OperationalError:
                await conn.close()
                conn = None
    finally:
        if conn is not None:
            await conn.close()


def sync_wait_for_workflow(
    app: Chancy,
    workflow_id: str,
    *,
    timeout: float | None = None,
    interval: float = 1.0,
    ping_interval: float = PING_INTERVAL,
) -> WorkflowInfo:
    """Sync twin of :func:`wait_for_workflow`."""
    w = _Waiting(app, workflow_id, timeout, interval, ping_interval)
    conn: psycopg.Connection[Any] | None = None
    try:
        while True:
            try:
                fresh = conn is None or conn.closed
                if conn is None or conn.closed:
                    conn = app.sync_connect()
                if fresh or w.read_due():
                    with cut_after(conn, w.read_limit()) as cut:
                        try:
                            if fresh:
                                if w.listens:
                                    conn.execute(w.listen)
                                w.connected()
                            info: WorkflowInfo = _srun(app, conn, _get_op(app, w.wid))
                        except psycopg.OperationalError as exc:
                            if cut.is_set():
                                raise w.too_slow() from exc
                            raise
                    if w.finished(info):
                        return info
                w.check_alive()
                payload = w.ping()
                if payload is not None:
                    try:
                        app.sync_execute(_ping_op(app, payload))
                    except Exception as exc:
                        log.debug("sync_wait_for_workflow: could not send its ping (%s)", exc)
                    else:
                        w.ping_sent(payload)
            except _AWAY as exc:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(w.pause(exc, "sync_wait_for_workflow"))
                continue
            wait = w.wait_time()
            if not w.listens or conn is None:
                time.sleep(wait)
                continue
            try:
                for note in conn.notifies(timeout=wait):
                    if w.heard(note.payload):
                        break
            except psycopg.OperationalError:
                conn.close()
                conn = None
    finally:
        if conn is not None:
            conn.close()


# --- running operations: (statement, params) steps, or a push ---------------------------------


@dataclass(frozen=True)
class _Push:
    """An operation's request to push jobs on its connection (answered with references)."""

    jobs: list[Job]


WriteOperation = Generator[tuple[bytes, dict[str, Any]] | _Push, Any, Any]


def _missing() -> SchemaMissingError:
    return SchemaMissingError(
        "the workflow tables do not exist: install chancy-plugin-workflow where you run"
        " `chancy migrate` (or `await chancy.migrate()`), then run it"
    )


async def _arun(app: Chancy, conn: psycopg.AsyncConnection[Any], op: WriteOperation) -> Any:
    try:
        step = next(op)
        while True:
            if isinstance(step, _Push):
                answer: Any = await app.push_many_ex(conn, step.jobs)
            else:
                cur = await conn.execute(*step)
                answer = await cur.fetchall() if cur.description else []
            step = op.send(answer)
    except StopIteration as done:
        return done.value
    except psycopg.errors.UndefinedTable:
        raise _missing() from None


def _srun(app: Chancy, conn: psycopg.Connection[Any], op: WriteOperation) -> Any:
    try:
        step = next(op)
        while True:
            if isinstance(step, _Push):
                answer: Any = app.sync_push_many_ex(conn, step.jobs)
            else:
                cur = conn.execute(*step)
                answer = cur.fetchall() if cur.description else []
            step = op.send(answer)
    except StopIteration as done:
        return done.value
    except psycopg.errors.UndefinedTable:
        raise _missing() from None


# --- submitting ------------------------------------------------------------------------------


def _submit_op(app: Chancy, workflow: Workflow, plan: _Plan) -> WriteOperation:
    wid = str(uuid.uuid4())
    yield (
        app.schema.render(q.INSERT_WORKFLOW),
        {
            "id": wid,
            "name": workflow.name,
            "on_failure": workflow.on_failure,
            "total": len(plan.names),
        },
    )
    yield (
        app.schema.render(q.INSERT_STEPS),
        {
            "id": wid,
            "names": plan.names,
            "jobs": plan.jobs,
            "depends_on": plan.depends_on,
            "children": plan.children,
            "waiting": plan.waiting,
        },
    )
    refs: list[Reference] = yield _Push([_step_job(s.job, wid, s.name, {}) for s in plan.roots])
    yield (
        app.schema.render(q.SET_JOB_IDS),
        {
            "workflows": [wid] * len(refs),
            "names": [s.name for s in plan.roots],
            "job_ids": [r.identifier for r in refs],
        },
    )
    log.info(
        "workflow %s submitted: %s, %d steps",
        wid,
        workflow.name,
        len(plan.names),
        extra={"workflow_id": wid},
    )
    return wid


async def submit_workflow(
    app: Chancy,
    workflow: Workflow,
    *,
    connection: psycopg.AsyncConnection[Any] | None = None,
    max_steps: int = MAX_STEPS,
) -> str:
    """Validate and store the workflow and push its first steps, in one transaction;
    return its id.

    With ``connection``, everything happens inside the caller's transaction on it (a
    rollback leaves nothing). Raises :class:`WorkflowError` for an invalid workflow, and
    then writes nothing."""
    plan = _plan(workflow, max_steps)
    if connection is not None:
        async with connection.transaction():
            wid: str = await _arun(app, connection, _submit_op(app, workflow, plan))
        return wid
    async with app.connection() as conn, conn.transaction():
        wid = await _arun(app, conn, _submit_op(app, workflow, plan))
    return wid


def sync_submit_workflow(
    app: Chancy,
    workflow: Workflow,
    *,
    connection: psycopg.Connection[Any] | None = None,
    max_steps: int = MAX_STEPS,
) -> str:
    """Sync twin of :func:`submit_workflow` (e.g. inside a Django or Flask transaction)."""
    plan = _plan(workflow, max_steps)
    if connection is not None:
        with connection.transaction():
            wid: str = _srun(app, connection, _submit_op(app, workflow, plan))
        return wid
    with app.sync_connect() as conn, conn.transaction():
        wid = _srun(app, conn, _submit_op(app, workflow, plan))
    return wid


# --- cancelling ------------------------------------------------------------------------------


def _cancel_op(app: Chancy, workflow_id: object) -> Operation:
    wid = _workflow_id(workflow_id)
    rows = yield app.schema.render(q.LOCK_ONE), {"id": wid}
    if not rows:
        raise WorkflowNotFoundError(f"workflow {wid} does not exist")
    ((state,),) = rows
    if state != WorkflowState.RUNNING:
        return None
    ((count, job_ids),) = yield app.schema.render(q.CANCEL_STEPS), {"id": wid}
    yield (
        app.schema.render(q.COUNT_FINAL),
        {"ids": [wid], "done": [count], "failed": [count], "final_states": ["cancelled"]},
    )
    yield app.schema.render(q.NOTIFY), _notify_params(app, wid, "cancelled")
    return [str(j) for j in job_ids]


async def cancel_workflow(app: Chancy, workflow_id: str) -> bool:
    """Cancel a running workflow: its waiting steps never run, and the jobs of its queued
    and running steps are cancelled (:meth:`Chancy.cancel_job`). Returns whether it was
    running. Raises :class:`WorkflowNotFoundError` if it does not exist."""
    try:
        job_ids: list[str] | None = await app.execute(
            _cancel_op(app, workflow_id), transaction=True
        )
    except SchemaMissingError:
        raise _missing() from None
    if job_ids is None:
        return False
    for job_id in job_ids:
        await app.cancel_job(job_id)
    log.info("workflow %s cancelled", workflow_id, extra={"workflow_id": str(workflow_id)})
    return True


def sync_cancel_workflow(app: Chancy, workflow_id: str) -> bool:
    """Sync twin of :func:`cancel_workflow`."""
    try:
        job_ids: list[str] | None = app.sync_execute(_cancel_op(app, workflow_id), transaction=True)
    except SchemaMissingError:
        raise _missing() from None
    if job_ids is None:
        return False
    if job_ids:
        _sync_cancel_jobs(app, job_ids)
    log.info("workflow %s cancelled", workflow_id, extra={"workflow_id": str(workflow_id)})
    return True


def _sync_cancel_jobs(app: Chancy, job_ids: list[str]) -> None:
    """Cancel jobs from sync code. The core's ``cancel_job`` is async only: run it on a
    short-lived app of the same database and prefix, in a thread of its own (the caller
    may be inside an event loop)."""

    failure: list[BaseException] = []

    async def cancel() -> None:
        other = Chancy(app.dsn, prefix=app.schema.prefix, autoload_plugins=False)
        async with other:
            for job_id in job_ids:
                await other.cancel_job(job_id)

    def run() -> None:
        try:
            anyio.run(cancel)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="chancy-workflow-cancel")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


# --- advancing -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Buffer:
    """The finished steps' jobs one worker has reported, not yet advanced."""

    job_ids: list[str] = field(default_factory=list)
    ready: anyio.Event = field(default_factory=anyio.Event)
    active: bool = False  # whether the worker's advancer task runs


async def advance(app: Chancy, job_ids: Sequence[str]) -> int:
    """Advance the workflows of these (ended) jobs: one transaction that marks their
    steps, applies the failure policy, and pushes the steps now ready. Idempotent: a
    step already marked is left alone. Returns how many steps were marked."""
    if not job_ids:
        return 0
    for attempt in range(5):
        try:
            async with app.connection() as conn, conn.transaction():
                marked, to_cancel = await _advance(app, conn, list(job_ids))
            break
        except _RETRIES:
            if attempt == 4:
                raise
            await anyio.sleep(0.05 * (attempt + 1))
    for job_id in to_cancel:
        await app.cancel_job(job_id)
    return marked


async def _fetch(
    conn: psycopg.AsyncConnection[Any],
    app: Chancy,
    statement: LiteralString,
    params: dict[str, Any],
) -> Rows:
    cur = await conn.execute(app.schema.render(statement), params)
    return await cur.fetchall() if cur.description else []


async def _advance(
    app: Chancy, conn: psycopg.AsyncConnection[Any], job_ids: list[str]
) -> tuple[int, list[str]]:
    ids = [uuid.UUID(j) for j in job_ids]
    wids = [row[0] for row in await _fetch(conn, app, q.WORKFLOWS_OF_JOBS, {"job_ids": ids})]
    if not wids:
        return 0, []
    policy: dict[uuid.UUID, str] = dict(await _fetch(conn, app, q.LOCK_RUNNING, {"ids": wids}))
    if not policy:
        return 0, []
    finished = await _fetch(conn, app, q.FINISH_STEPS, {"workflows": list(policy), "job_ids": ids})
    if not finished:
        return 0, []
    done: Counter[uuid.UUID] = Counter()
    failed_count: Counter[uuid.UUID] = Counter()
    final: dict[uuid.UUID, str] = {}
    failed: dict[uuid.UUID, list[str]] = defaultdict(list)
    decrements: Counter[tuple[uuid.UUID, str]] = Counter()
    to_cancel: list[str] = []
    for wid, name, state, children in finished:
        done[wid] += 1
        if state == StepState.SUCCEEDED:
            for child in children:
                decrements[wid, child] += 1
        else:
            failed[wid].append(name)
            failed_count[wid] += 1
    for wid, names in failed.items():
        log.warning(
            "workflow %s: step(s) %s failed (%s)",
            wid,
            ", ".join(names),
            "the rest is cancelled" if policy[wid] == "fail" else "skipping what depends on them",
            extra={"workflow_id": str(wid)},
        )
        if policy[wid] == "fail":
            ((count, jobs),) = await _fetch(conn, app, q.CANCEL_STEPS, {"id": wid})
            done[wid] += count
            failed_count[wid] += count
            final[wid] = WorkflowState.FAILED
            to_cancel += [str(j) for j in jobs]
        else:
            skipped = await _fetch(conn, app, q.SKIP_DESCENDANTS, {"id": wid, "failed": names})
            done[wid] += len(skipped)
            failed_count[wid] += len(skipped)
    live = [(key, n) for key, n in decrements.items() if key[0] not in final]
    if live:
        rows = await _fetch(
            conn,
            app,
            q.DECREMENT_WAITING,
            {
                "workflows": [w for (w, _), _ in live],
                "names": [name for (_, name), _ in live],
                "counts": [n for _, n in live],
            },
        )
        ready: dict[uuid.UUID, list[tuple[str, Any, list[str]]]] = defaultdict(list)
        for wid, name, waiting, packed, deps in rows:
            if waiting == 0:
                ready[wid].append((name, packed, deps))
        if ready:
            await _push_ready(app, conn, ready)
    wids_done = list(done)
    states = await _fetch(
        conn,
        app,
        q.COUNT_FINAL,
        {
            "ids": wids_done,
            "done": [done[w] for w in wids_done],
            "failed": [failed_count[w] for w in wids_done],
            "final_states": [final.get(w) for w in wids_done],
        },
    )
    for wid, state in states:
        if state != WorkflowState.RUNNING:
            await conn.execute(app.schema.render(q.NOTIFY), _notify_params(app, wid, state))
            log.info("workflow %s %s", wid, state, extra={"workflow_id": str(wid)})
    return len(finished), to_cancel


async def _push_ready(
    app: Chancy,
    conn: psycopg.AsyncConnection[Any],
    ready: dict[uuid.UUID, list[tuple[str, Any, list[str]]]],
) -> None:
    jobs: list[Job] = []
    keys: list[tuple[uuid.UUID, str]] = []
    for wid, steps in ready.items():
        parents = sorted({dep for _, _, deps in steps for dep in deps})
        results: dict[str, Any] = dict(
            await _fetch(conn, app, q.STEP_RESULTS, {"id": wid, "names": parents})
        )
        for name, packed, deps in steps:
            try:
                template = Job.unpack(packed)
            except InvalidJobError as exc:  # written by hand: it cannot run
                log.error("workflow %s: step %s has an invalid job (%s)", wid, name, exc)
                raise
            jobs.append(
                _step_job(template, str(wid), name, {dep: results.get(dep) for dep in deps})
            )
            keys.append((wid, name))
    refs = await app.push_many_ex(conn, jobs)
    await conn.execute(
        app.schema.render(q.SET_JOB_IDS),
        {
            "workflows": [w for w, _ in keys],
            "names": [name for _, name in keys],
            "job_ids": [r.identifier for r in refs],
        },
    )


# --- the plugin ------------------------------------------------------------------------------


class Workflows:
    """The workflow plugin: its tables, the per-worker advancer and the leader's sweeper.

    :param sweep_interval: seconds between two sweeps of the leader (the repair of
        workflows whose hook never ran: a worker killed between its write and its hook).
    :param batch_size: finished steps advanced per transaction.
    :param batch_delay: seconds an advancer waits for more finished steps to share a
        transaction.
    """

    name = "workflow"

    def __init__(
        self, *, sweep_interval: float = 30.0, batch_size: int = 500, batch_delay: float = 0.01
    ) -> None:
        if sweep_interval <= 0 or batch_delay < 0 or not 1 <= batch_size <= 10_000:
            raise WorkflowError(
                "sweep_interval must be > 0, batch_delay >= 0 and batch_size from 1 to 10000"
            )
        self.sweep_interval = sweep_interval
        self.batch_size = batch_size
        self.batch_delay = batch_delay
        #: One buffer per worker this plugin serves (several workers may share an app).
        self._buffers: dict[str, _Buffer] = {}

    def describe(self) -> str:
        """What the worker's start-up summary shows for this plugin."""
        return (
            f"Workflows(sweep_interval={self.sweep_interval}, batch_size={self.batch_size},"
            f" batch_delay={self.batch_delay})"
        )

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def chancy_migrations(self, app: Chancy) -> MigrationSet:
        """The workflow tables."""
        return load_migrations("workflow", "chancy_plugin_workflow.migrations")

    @hookimpl
    def chancy_register_commands(self, subparsers: Any) -> None:
        """``chancy workflow ...``."""
        _register_commands(subparsers)

    @hookimpl
    def chancy_worker_tasks(self, worker: Worker, register: RegisterTask) -> None:
        """The advancer (every worker) and the leader-only sweeper."""
        register("workflow.advancer", self._advancer)
        register("workflow.sweeper", self._sweeper, leader_only=True)

    @hookimpl
    async def chancy_job_completed(self, worker: Worker, job: QueuedJob, outcome: Outcome) -> None:
        """Advance the job's workflow once its outcome is final."""
        if outcome.state is QueuedJob.State.RETRYING or not isinstance(
            job.meta.get(META_KEY), dict
        ):
            return
        buffer = self._buffers.get(worker.worker_id)
        if buffer is None or not buffer.active:  # the advancer has stopped: do it now
            await self._advance_logged(worker.app, [job.id])
            return
        buffer.job_ids.append(job.id)
        buffer.ready.set()

    # --- the tasks -----------------------------------------------------------------------

    async def _advance_logged(self, app: Chancy, job_ids: list[str]) -> bool:
        """Advance; False if the database is away (try again later)."""
        try:
            await advance(app, job_ids)
        except TRANSIENT_ERRORS as exc:
            log.warning("workflow: the database is unavailable (%s); will try again", exc)
            return False
        except Exception:
            log.exception("workflow: advancing after jobs %s failed; the sweeper will", job_ids)
        return True

    async def _drain(self, app: Chancy, buffer: _Buffer) -> None:
        while buffer.job_ids:
            batch = buffer.job_ids[: self.batch_size]
            if not await self._advance_logged(app, batch):
                await anyio.sleep(1.0)
                continue
            del buffer.job_ids[: len(batch)]
        buffer.ready = anyio.Event()

    async def _advancer(self, worker: Worker) -> None:
        buffer = self._buffers.setdefault(worker.worker_id, _Buffer())
        buffer.active = True
        try:
            while True:
                await buffer.ready.wait()
                if len(buffer.job_ids) < self.batch_size:
                    await anyio.sleep(self.batch_delay)
                await self._drain(worker.app, buffer)
        finally:
            buffer.active = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                await self._drain(worker.app, buffer)
            if buffer.job_ids:
                log.warning(
                    "workflow: %d finished steps not advanced at shutdown; the sweeper will",
                    len(buffer.job_ids),
                )

    async def sweep(self, app: Chancy) -> int:
        """Repair workflows whose advancing never ran (a worker killed between writing a
        step's outcome and its hook), and cancel the jobs of cancelled steps still alive.
        What the leader does every ``sweep_interval`` seconds; returns the steps repaired."""
        repaired = 0
        for _ in range(100):
            async with app.connection() as conn:
                rows = await _fetch(conn, app, q.STRANDED, {"limit": self.batch_size})
            if not rows:
                break
            marked = await advance(app, [str(row[0]) for row in rows])
            repaired += marked
            if marked == 0 or len(rows) < self.batch_size:
                break
        if repaired:
            log.warning(
                "workflow sweeper: advanced %d steps whose worker never reported them", repaired
            )
        async with app.connection() as conn:
            alive = await _fetch(conn, app, q.UNCANCELLED, {"limit": self.batch_size})
        for (job_id,) in alive:
            await app.cancel_job(str(job_id))
        return repaired

    async def _sweeper(self, worker: Worker) -> None:
        while True:
            try:
                await self.sweep(worker.app)
            except TRANSIENT_ERRORS as exc:
                log.warning("workflow sweeper: the database is unavailable (%s)", exc)
            except (psycopg.errors.UndefinedTable, SchemaMissingError):
                log.warning(
                    "workflow sweeper: the workflow tables do not exist; run `chancy migrate`"
                    " with chancy-plugin-workflow installed"
                )
            await anyio.sleep(self.sweep_interval)


# --- the command line ----------------------------------------------------------------------


def _register_commands(subparsers: Any) -> None:
    workflow = subparsers.add_parser("workflow", help="read and cancel workflows")
    actions = workflow.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list workflows, newest first")
    listing.add_argument("--state", choices=[s.value for s in WorkflowState])
    listing.add_argument("--limit", type=int, default=50, help="at most this many (1-1000)")
    listing.add_argument("--after", help="the last id of the previous page")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_cli_list)
    show = actions.add_parser("show", help="a workflow and its steps")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_cli_show)
    cancel = actions.add_parser("cancel", help="cancel a running workflow")
    cancel.add_argument("id")
    cancel.set_defaults(handler=_cli_cancel)


async def _cli_list(app: Chancy, args: argparse.Namespace) -> int:
    found = await list_workflows(app, state=args.state, limit=args.limit, after=args.after)
    if args.json:
        print(json.dumps([w.to_json() for w in found], indent=2))
        return 0
    for w in found:
        print(
            f"{w.id}\t{w.state.value}\t{w.steps_done}/{w.steps_total}\t"
            f"{w.created_at.isoformat()}\t{w.name}"
        )
    return 0


async def _cli_show(app: Chancy, args: argparse.Namespace) -> int:
    info = await get_workflow(app, args.id)
    if args.json:
        print(json.dumps(info.to_json(), indent=2, default=str))
        return 0
    print(f"{info.id}\t{info.state.value}\t{info.steps_done}/{info.steps_total}\t{info.name}")
    for step in info.steps.values():
        job = step.job.identifier if step.job else "-"
        print(f"  {step.name}\t{step.state.value}\t{job}\t{','.join(step.depends_on)}")
    return 0


async def _cli_cancel(app: Chancy, args: argparse.Namespace) -> int:
    if await cancel_workflow(app, args.id):
        print(f"cancelled workflow {args.id}")
        return 0
    print(f"chancy: error: workflow {args.id} is not running", file=sys.stderr)
    return 1
