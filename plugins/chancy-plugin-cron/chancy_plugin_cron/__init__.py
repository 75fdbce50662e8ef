"""Cron schedules for chancy-core, kept in PostgreSQL and pushed exactly once.

Schedules live in the plugin's table (``{prefix}cron_schedules``) and can be
added, replaced and removed while workers run, from Python or the ``chancy
cron`` command::

    await Cron.add(chancy, "digest", "0 7 * * *", send_digest.job, timezone="Europe/Paris")
    await Cron.remove(chancy, "digest")
    for schedule in await Cron.list(chancy): ...

A leader-only worker task pushes each due run. **Each run is pushed once**,
however many workers run the task and across leader changes and restarts: in
one transaction the task locks the due schedules (``FOR UPDATE SKIP
LOCKED``), pushes their jobs with :meth:`Chancy.push_many_ex` and advances
``next_run``; a rollback leaves neither the jobs nor the advance behind. Each
job also carries ``unique_key = "cron:<name>:<run time in UTC, ISO 8601>"``.

**Catch-up policy.** Runs missed while no scheduler ran (every worker down, a
long pause) are not all replayed: when a schedule is found overdue, one job is
pushed for the most recent missed run time, older missed runs are skipped (and
logged), and ``next_run`` moves to the first run time after now.

Job.meta key owned: ``"cron"``, set on each pushed job to
``{"schedule": name, "run_at": run time (UTC, ISO 8601)}``.
"""

from __future__ import annotations

import argparse
import builtins
import dataclasses
import logging
import re
import sys
from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, LiteralString

import anyio
import psycopg
from psycopg.types.json import Jsonb

from chancy_core import Chancy, Job, Reference, hookimpl
from chancy_core.cli import add_job_arguments, job_from_arguments, show
from chancy_core.errors import TRANSIENT_ERRORS, InvalidJobError
from chancy_core.migrations import MigrationSet, load_migrations
from chancy_plugin_cron import queries as q
from chancy_plugin_cron.times import (
    CronError,
    check_expression,
    latest_due,
    next_run_after,
    zone,
)

if TYPE_CHECKING:
    from chancy_core.hookspecs import RegisterTask
    from chancy_core.hookspecs import WorkerHandle as Worker

__all__ = ["META_KEY", "Cron", "CronError", "Schedule", "latest_due", "next_run_after"]

log = logging.getLogger(__name__)

META_KEY = "cron"
"""The key of ``Job.meta`` this plugin owns."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_TRANSIENT = TRANSIENT_ERRORS

Rows = builtins.list[tuple[Any, ...]]
Step = tuple[bytes, dict[str, Any]]
Operation = Generator[Step, Rows, Any]


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A stored schedule."""

    name: str
    """Unique name of the schedule."""
    cron: str
    """The cron expression, evaluated in :attr:`timezone`."""
    timezone: str
    """An IANA time zone name, e.g. ``Europe/Paris``."""
    job: Job
    """The job pushed at each run (its ``scheduled_at`` and ``unique_key`` are replaced)."""
    next_run: datetime | None
    """When it runs next (``None``: disabled, its expression could not be evaluated)."""
    last_run: datetime | None
    """The run time most recently pushed."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict (what ``chancy cron list --json`` prints); the job without
        the ``scheduled_at`` and ``unique_key`` each run replaces."""
        job = {k: v for k, v in self.job.pack().items() if k not in ("scheduled_at", "unique_key")}
        return {
            "name": self.name,
            "cron": self.cron,
            "timezone": self.timezone,
            "job": job,
            "next_run": self.next_run.isoformat() if self.next_run else None,
            "last_run": self.last_run.isoformat() if self.last_run else None,
        }


def _schedule(row: tuple[Any, ...]) -> Schedule:
    name, cron, timezone, packed, next_run, last_run = row
    return Schedule(
        name=name,
        cron=cron,
        timezone=timezone,
        job=Job.unpack(packed),
        next_run=next_run,
        last_run=last_run,
    )


def _as_job(job: object) -> Job:
    found = job if isinstance(job, Job) else getattr(job, "job", None)
    if not isinstance(found, Job):
        raise CronError(f"cannot schedule {job!r}: give a Job, or a function decorated with @job")
    return Job.unpack(found.pack())  # a plain Job, even from a QueuedJob


@dataclass(eq=False)
class _Run:
    """What one tick does with one due schedule."""

    at: datetime | None = None  # the run time pushed (None: none)
    following: datetime | None = None  # the next run time (None: disabled)
    job: Job | None = None
    ref: Reference | None = None


def run_key(name: str, run_at: datetime) -> str:
    """The ``unique_key`` of the job pushed for schedule ``name`` at ``run_at``."""
    return f"cron:{name}:{run_at.isoformat()}"


class Cron:
    """The cron plugin.

    :param interval: at most this many seconds pass between two checks of the
        schedule table (a schedule added at run time is seen within it; due
        runs are pushed on time whatever the interval).
    :param batch_size: schedules handled per transaction.
    """

    name = "cron"

    def __init__(self, *, interval: float = 1.0, batch_size: int = 100) -> None:
        if interval <= 0 or not 1 <= batch_size <= 10_000:
            raise CronError("interval must be > 0 and batch_size from 1 to 10000")
        self.interval = interval
        self.batch_size = batch_size

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def chancy_migrations(self, app: Chancy) -> MigrationSet:
        """The ``cron_schedules`` table."""
        return load_migrations("cron", "chancy_plugin_cron.migrations")

    @hookimpl
    def chancy_worker_tasks(self, worker: Worker, register: RegisterTask) -> None:
        """The leader-only scheduler task."""
        register("cron.scheduler", self._scheduler, leader_only=True)

    @hookimpl
    def chancy_register_commands(self, subparsers: Any) -> None:
        """``chancy cron ...``."""
        _register_commands(subparsers)

    # --- the API -------------------------------------------------------------------------

    @staticmethod
    async def add(
        app: Chancy, name: str, cron: str, job: object, *, timezone: str = "UTC"
    ) -> Schedule:
        """Add a schedule, or replace the one of that name; returns it with its next run.

        ``job`` is a :class:`Job` (or a ``@job`` function) pushed at each run time.
        The next run is computed from the database's clock, never before the run
        most recently pushed, so replacing a schedule never repeats a run.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise CronError(
                f"invalid schedule name {name!r}: use 1-100 letters, digits, '_', '.', ':' or"
                " '-', starting with a letter or digit"
            )
        expression = check_expression(cron)
        zone(timezone)
        template = _as_job(job)
        next_run_after(expression, timezone, datetime.now(UTC))  # refuses one that never runs

        def op() -> Operation:
            rows = yield app.schema.render(q.NOW_AND_LAST_RUN), {"name": name}
            now, last_run = rows[0]
            start = max(now, last_run) if last_run is not None else now
            params = {
                "name": name,
                "cron": expression,
                "timezone": timezone,
                "job": Jsonb(template.pack()),
                "next_run": next_run_after(expression, timezone, start),
            }
            rows = yield app.schema.render(q.UPSERT_SCHEDULE), params
            return _schedule(rows[0])

        schedule: Schedule = await app.execute(op(), transaction=True)
        log.info(
            "cron schedule %s: %r (%s), next run %s",
            name,
            expression,
            timezone,
            schedule.next_run,
            extra={"schedule": name},
        )
        return schedule

    @staticmethod
    async def remove(app: Chancy, name: str) -> bool:
        """Remove a schedule; returns whether it existed. Jobs already pushed stay."""
        removed: bool = await app.execute(_one(app, q.DELETE_SCHEDULE, {"name": name}, bool))
        return removed

    @staticmethod
    async def get(app: Chancy, name: str) -> Schedule | None:
        """The schedule named ``name``, or ``None``."""

        def found(rows: Rows) -> Schedule | None:
            return _schedule(rows[0]) if rows else None

        schedule: Schedule | None = await app.execute(
            _one(app, q.SELECT_SCHEDULE, {"name": name}, found)
        )
        return schedule

    @staticmethod
    async def list(app: Chancy) -> builtins.list[Schedule]:
        """Every schedule, by name (one whose stored job is invalid is logged and left out)."""

        def every(rows: Rows) -> builtins.list[Schedule]:
            found = []
            for row in rows:
                try:
                    found.append(_schedule(row))
                except InvalidJobError as exc:  # written by hand: say so, list the others
                    log.warning("cron schedule %s has an invalid job (%s); not listed", row[0], exc)
            return found

        schedules: builtins.list[Schedule] = await app.execute(
            _one(app, q.SELECT_SCHEDULES, {}, every)
        )
        return schedules

    async def push_due(self, app: Chancy) -> builtins.list[Reference]:
        """Push the jobs of every schedule due now, once each; returns their references.

        What the leader-only task does on each tick; safe to call from many
        processes at once.
        """
        refs: builtins.list[Reference] = []
        while True:
            pushed, handled = await self._tick(app)
            refs += pushed
            if handled < self.batch_size:
                return refs

    # --- the scheduler -------------------------------------------------------------------

    async def _tick(self, app: Chancy) -> tuple[builtins.list[Reference], int]:
        async with app.connection() as conn, conn.transaction():
            due_op = _rows_op(app.schema.render(q.SELECT_DUE), {"limit": self.batch_size})
            rows = await app.execute_ex(conn, due_op)
            if not rows:
                return [], 0
            runs: dict[str, _Run] = {}
            for name, expression, timezone, packed, due, now in rows:
                runs[name] = run = _Run()
                try:
                    run.following = next_run_after(expression, timezone, now)
                    run.at = latest_due(expression, timezone, due, now)
                    template = Job.unpack(packed)
                except (CronError, InvalidJobError) as exc:
                    log.error(
                        "cron schedule %s cannot run (%s); %s",
                        name,
                        exc,
                        "skipping this run" if run.following else "disabling it",
                        extra={"schedule": name},
                    )
                    run.at = None
                    continue
                if run.at > due:
                    log.warning(
                        "cron schedule %s missed runs from %s; pushing only the latest, %s",
                        name,
                        due.isoformat(),
                        run.at.isoformat(),
                        extra={"schedule": name},
                    )
                run.job = dataclasses.replace(
                    template,
                    scheduled_at=run.at,
                    unique_key=run_key(name, run.at),
                    meta={
                        **template.meta,
                        META_KEY: {"schedule": name, "run_at": run.at.isoformat()},
                    },
                )
            await self._push(app, conn, runs)
            advance = {
                "names": list(runs),
                "next_runs": [run.following for run in runs.values()],
                "last_runs": [run.at if run.ref else None for run in runs.values()],
            }
            await app.execute_ex(conn, _rows_op(app.schema.render(q.ADVANCE), advance))
        for name, run in runs.items():
            if run.ref is not None and run.job is not None:
                log.info(
                    "cron pushed %s for %s",
                    run.job.func,
                    run.job.unique_key,
                    extra={"schedule": name, "job_id": run.ref.identifier},
                )
        return [run.ref for run in runs.values() if run.ref is not None], len(rows)

    @staticmethod
    async def _push(app: Chancy, conn: psycopg.AsyncConnection[Any], runs: dict[str, _Run]) -> None:
        """Push the runs' jobs in one statement; if that fails, one by one, skipping the
        runs whose job cannot be pushed (so one bad schedule never blocks the others)."""
        due = [run for run in runs.values() if run.job is not None]
        if not due:
            return
        try:
            async with conn.transaction():  # a savepoint
                refs = await app.push_many_ex(conn, [run.job for run in due if run.job])
            for run, ref in zip(due, refs, strict=True):
                run.ref = ref
            return
        except _TRANSIENT:
            raise
        except Exception:
            if len(due) == 1:
                log.exception("cron: pushing %s failed; skipping this run", due[0].job)
                return
        for run in due:
            try:
                async with conn.transaction():
                    (run.ref,) = await app.push_many_ex(conn, [run.job] if run.job else [])
            except _TRANSIENT:
                raise
            except Exception:
                log.exception("cron: pushing %s failed; skipping this run", run.job)

    async def _seconds_to_next(self, app: Chancy) -> float | None:
        return await app.execute(_seconds_to_next_op(app))

    async def _scheduler(self, worker: Worker) -> None:
        app = worker.chancy
        while True:
            wait = self.interval
            try:
                await self.push_due(app)
                until = await self._seconds_to_next(app)
                if until is not None:
                    wait = min(wait, max(until, 0.0))
            except _TRANSIENT as exc:
                log.warning("cron: the database is unavailable (%s); will try again", exc)
            await anyio.sleep(max(wait, 0.005))


def _one(app: Chancy, statement: LiteralString, params: dict[str, Any], then: Any) -> Operation:
    rows = yield app.schema.render(statement), params
    return then(rows)


def _rows_op(statement: bytes, params: dict[str, Any]) -> Generator[Step, Rows, Rows]:
    """One statement; its rows."""
    rows = yield statement, params
    return rows


def _seconds_to_next_op(
    app: Chancy,
) -> Generator[Step, Rows, float | None]:
    """Seconds until the next schedule is due (``None``: no schedule is)."""
    ((seconds,),) = yield app.schema.render(q.SECONDS_TO_NEXT), {}
    return None if seconds is None else float(seconds)


# --- the command line ----------------------------------------------------------------------


def _register_commands(subparsers: Any) -> None:
    cron = subparsers.add_parser("cron", help="manage cron schedules").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = cron.add_parser(
        "add",
        help="add or replace a schedule",
        description='Add a schedule, e.g. chancy cron add digest "0 7 * * *" myapp.tasks.digest'
        " --timezone Europe/Paris. Quote the expression.",
    )
    add.add_argument("name", help="the schedule's unique name")
    add.add_argument("cron", help='the cron expression, e.g. "*/5 * * * *"')
    add_job_arguments(add)
    add.add_argument("--timezone", default="UTC", help="IANA time zone (default UTC)")
    add.set_defaults(handler=_cli_add)
    remove = cron.add_parser(
        "remove",
        help="remove a schedule",
        description="Remove a schedule (jobs it already pushed stay).",
    )
    remove.add_argument("name", help="the schedule's name")
    remove.set_defaults(handler=_cli_remove)
    listing = cron.add_parser(
        "list", help="list schedules with their next and last run", description="List schedules."
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=_cli_list)


async def _cli_add(app: Chancy, args: argparse.Namespace) -> int:
    job = job_from_arguments(args)
    schedule = await Cron.add(app, args.name, args.cron, job, timezone=args.timezone)
    next_run = schedule.next_run.isoformat() if schedule.next_run else "never"
    print(f"scheduled {schedule.name}: next run {next_run}")
    return 0


async def _cli_remove(app: Chancy, args: argparse.Namespace) -> int:
    if await Cron.remove(app, args.name):
        print(f"removed schedule {args.name}")
        return 0
    print(
        f"chancy: error: no schedule named {args.name!r}; see `chancy cron list`", file=sys.stderr
    )
    return 1


async def _cli_list(app: Chancy, args: argparse.Namespace) -> int:
    schedules = await Cron.list(app)

    def when(value: datetime | None, none: str) -> str:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else none

    rows = [
        (
            s.name,
            s.cron,
            s.timezone,
            s.job.func,
            s.job.queue,
            when(s.next_run, "disabled"),
            when(s.last_run, "never"),
        )
        for s in schedules
    ]
    columns = ("NAME", "CRON", "TIME ZONE", "FUNC", "QUEUE", "NEXT RUN (UTC)", "LAST RUN (UTC)")
    return show(
        args,
        [s.to_json() for s in schedules],
        columns,
        rows,
        empty="no schedules (add one: chancy cron add NAME EXPRESSION FUNC)",
    )
