"""Pushing: what ``push``, ``push_many`` and ``push_many_ex`` (and their sync twins) run.

:class:`Pusher` turns what it is given into jobs (``chancy_before_push`` sees them), checks
them, and makes the one operation that pushes them (:func:`chancy_core.ops.insert_jobs`,
or :func:`chancy_core.ops.copy_jobs` from :data:`COPY_MIN_JOBS` jobs): the app runs it on
its async or its sync driver.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psycopg

from chancy_core import admin, hooks, ops
from chancy_core.errors import ConfigurationError, InvalidJobError, QueueNotFoundError
from chancy_core.hooks import implemented
from chancy_core.job import IsAJob, Job, Reference
from chancy_core.ops import Operation

if TYPE_CHECKING:
    from chancy_core.app.chancy import Chancy

__all__ = ["COPY_MIN_JOBS", "Pusher"]

#: From this many jobs without unique keys, push_many streams them with binary COPY
#: (measured against the INSERT: about 1.15x at 500, 1,000 and 10,000 a call, 0.9x at 100).
COPY_MIN_JOBS = 500


class Pusher:
    """Builds the app's push operations.

    Owned state: the names of the queues it has seen declared (pushing to them needs no
    check); :meth:`forget` drops one (its queue was deleted)."""

    def __init__(self, app: Chancy) -> None:
        self.app = app
        self.declared: set[str] = set()

    def jobs(self, items: Iterable[Job | IsAJob[..., Any]]) -> list[Job]:
        """The jobs of ``items`` (jobs, or functions decorated with ``@job``), after
        ``chancy_before_push``."""
        result: list[Job] = []
        for item in items:
            found = item if isinstance(item, Job) else getattr(item, "job", None)
            if not isinstance(found, Job):
                raise InvalidJobError(
                    f"cannot push {item!r}: push a Job, or a function decorated with @job"
                )
            result.append(found)
        hook = self.app.plugins.hook.chancy_before_push
        if result and implemented(hook):
            hooks.call_sync_event(hook, app=self.app, jobs=result)
        return result

    def push(
        self, items: Iterable[Job | IsAJob[..., Any]], batch_size: int
    ) -> tuple[Operation[list[Reference]], bool]:
        """The operation of ``push_many``, and whether it needs a transaction: one
        statement per ``batch_size`` jobs (one is atomic on its own), or one ``COPY``."""
        jobs = self.jobs(items)
        batches = _batches(jobs, batch_size)
        guard = self.guard(jobs)
        if len(jobs) >= COPY_MIN_JOBS and all(job.unique_key is None for job in jobs):
            return _then(guard, ops.copy_jobs(self.app.schema, jobs)), True
        if guard is None and len(batches) == 1:  # every plain push(): one generator
            return ops.insert_jobs(self.app.schema, batches[0]), False
        return self._inserts(guard, batches), len(batches) > 1

    def push_ex(
        self, items: Iterable[Job | IsAJob[..., Any]], batch_size: int
    ) -> Operation[list[Reference]]:
        """The operation of ``push_many_ex`` (in the caller's transaction)."""
        jobs = self.jobs(items)
        return self._inserts(self.guard(jobs), _batches(jobs, batch_size))

    def _inserts(
        self, guard: Operation[None] | None, batches: list[list[Job]]
    ) -> Operation[list[Reference]]:
        if guard is not None:
            yield from guard
        refs: list[Reference] = []
        for batch in batches:
            refs += yield from ops.insert_jobs(self.app.schema, batch)
        return refs

    def guard(self, jobs: list[Job]) -> Operation[None] | None:
        """Refuse jobs whose kwargs their (known) function cannot take, now; and return the
        check that refuses jobs for queues nobody declared, ``None`` if there is nothing
        to ask the database (each queue seen declared is asked about once)."""
        if self.app.check_kwargs_on_push:
            admin.check_signatures(jobs)
        if not self.app.require_declared_queues:
            return None
        wanted = {job.queue for job in jobs} - self.declared
        return self._check_declared(wanted) if wanted else None

    def _check_declared(self, wanted: set[str]) -> Operation[None]:
        found: set[str] = yield from admin.queue_exists_op(self.app.schema, sorted(wanted))
        self.declared |= found
        missing = sorted(wanted - found)
        if missing:
            raise QueueNotFoundError(
                f"queue {', '.join(map(repr, missing))} is not declared, so no worker would"
                " run the job: declare it first (`await chancy.declare(Queue(name))` or"
                f" `chancy queue declare {missing[0]}`)"
            )

    def forget(self, queue: str) -> None:
        """Check ``queue`` again at the next push to it."""
        self.declared.discard(queue)


def _batches(jobs: list[Job], size: int) -> list[list[Job]]:
    if not isinstance(size, int) or size < 1:
        raise ConfigurationError(f"batch_size must be a positive integer, not {size!r}")
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _then(
    first: Operation[None] | None, then: Operation[list[Reference]]
) -> Operation[list[Reference]]:
    if first is not None:
        yield from first
    return (yield from then)


def check_target(target: object, *, sync: bool) -> None:
    """Refuse, clearly, a target ``push_many_ex`` cannot push on: not a psycopg 3
    connection or cursor of the API's kind (a psycopg2 connection, an async one given to
    the sync API...)."""
    kinds: tuple[type, ...] = (
        (psycopg.Connection, psycopg.Cursor)
        if sync
        else (psycopg.AsyncConnection, psycopg.AsyncCursor)
    )
    if isinstance(target, kinds):
        return
    kind = f"{type(target).__module__}.{type(target).__qualname__}"
    name = "sync_push_many_ex" if sync else "push_many_ex"
    other = "push_many_ex (async)" if sync else "sync_push_many_ex"
    if isinstance(target, (psycopg.AsyncConnection, psycopg.AsyncCursor, psycopg.Connection,
                           psycopg.Cursor)):  # fmt: skip
        raise ConfigurationError(f"{name} was given a {kind}: use {other} for it")
    raise ConfigurationError(
        f"{name} needs a psycopg 3 connection or cursor, not a {kind}: psycopg2 and other"
        " drivers cannot share their transaction with chancy (Django uses psycopg 3 when the"
        " `psycopg` package is installed; Django's connection.connection is then one)"
    )
