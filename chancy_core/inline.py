"""Inline mode: pushed jobs run in this process, at once or on :meth:`InlineChancy.drain`.

For tests of code that pushes jobs: no worker process to start. ``InlineChancy`` is a
:class:`~chancy_core.app.Chancy` (same database, same API) whose ``drain()`` runs a real
:class:`~chancy_core.worker.Worker` in the calling process until no due job is left, so
jobs go through exactly what a deployed worker does: the allow-list and resolver, the
queue's executor, time limits, plugins' hooks, retries, concurrency keys, and outcomes
written to the database (read them with ``get_job``)::

    async with InlineChancy(dsn) as chancy:          # run_on_push=True: at once
        await chancy.declare(Queue("default"))
        ref = await chancy.push(Job.from_func(send_email, kwargs={"to": "a@b.c"}))
        assert (await chancy.get_job(ref)).state is QueuedJob.State.SUCCEEDED

With ``run_on_push=False`` jobs wait until ``await chancy.drain()`` (``sync_drain()`` for
sync code). What a drain runs and leaves:

* Only due jobs run: a job whose ``scheduled_at`` is in the future, or a retry scheduled
  later, stays ``pending``/``retrying`` (drain again once it is due).
* Jobs that the running jobs push (or retries due at once) run in the same drain.
* Jobs of undeclared or paused queues, and jobs held back by a rate limit or a
  concurrency key, are left; ``drain`` returns once nothing has run for ``idle`` seconds.
* ``push_many_ex`` (inside the caller's transaction) does not run anything: the jobs are
  invisible until the caller commits; call ``drain()`` after the commit.
* A job that pushes more jobs on the same app while a drain runs does not start a
  second drain: the running one picks them up.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from typing import Any, LiteralString

import anyio

from chancy_core.app import Chancy
from chancy_core.job import IsAJob, Job, Reference
from chancy_core.ops import Operation
from chancy_core.queue import Queue
from chancy_core.sql import Schema

__all__ = ["InlineChancy"]

log = logging.getLogger(__name__)

# Whether a due job is waiting in the served queues, and whether the database says the
# worker runs a job (claimed and not started yet, or its outcome not yet written).
_STATUS: LiteralString = """
SELECT EXISTS (
           SELECT 1 FROM {jobs}
           WHERE queue = ANY(%(queues)s::text[]) AND state IN ('pending', 'retrying')
             AND scheduled_at <= now()
       ),
       EXISTS (SELECT 1 FROM {jobs} WHERE state = 'running' AND taken_by = %(worker_id)s)
"""

# Queues with due jobs that the drain's worker does not serve (not declared, or tags that
# do not match): said in a warning, since nothing will ever run them inline.
_UNSERVED: LiteralString = """
SELECT DISTINCT queue FROM {jobs}
WHERE state IN ('pending', 'retrying') AND scheduled_at <= now()
  AND NOT queue = ANY(%(queues)s::text[])
ORDER BY queue
"""


def _status_op(schema: Schema, queues: list[str], worker_id: str) -> Operation[tuple[bool, bool]]:
    """Whether a due job waits in ``queues``, and whether the drain's worker holds a claim
    (:data:`_STATUS`)."""
    ((due, claimed),) = yield schema.render(_STATUS), {"queues": queues, "worker_id": worker_id}
    return bool(due), bool(claimed)


def _unserved_op(schema: Schema, queues: list[str]) -> Operation[list[str]]:
    """The queues with due jobs that are not among ``queues`` (:data:`_UNSERVED`)."""
    rows = yield schema.render(_UNSERVED), {"queues": queues}
    return [queue for (queue,) in rows]


class InlineChancy(Chancy):
    """A :class:`~chancy_core.app.Chancy` that runs pushed jobs in this process.

    :param run_on_push: run jobs as soon as ``push``/``push_many`` (and their sync
        twins) return; ``False``: only on :meth:`drain`.
    :param worker_options: options of the :class:`~chancy_core.worker.Worker` each drain
        runs (e.g. ``{"allow": ["myapp."]}``).
    :param timeout: seconds a drain may take at most (``TimeoutError`` after).
    :param idle: seconds with nothing running and due jobs left (held back by a key, a
        rate limit, a paused queue) before a drain gives up on them and returns.

    The other arguments are :class:`~chancy_core.app.Chancy`'s.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        run_on_push: bool = True,
        worker_options: dict[str, Any] | None = None,
        timeout: float = 60.0,
        idle: float = 0.5,
        **options: Any,
    ) -> None:
        super().__init__(dsn, **options)
        self.run_on_push = run_on_push
        self.worker_options = dict(worker_options or {})
        self.timeout = timeout
        self.idle = idle
        self._options = options
        self._draining = False

    async def push_many(
        self, jobs: Iterable[Job | IsAJob[..., Any]], *, batch_size: int = 1000
    ) -> list[Reference]:
        """Push, then (``run_on_push``) run every due job before returning."""
        refs = await super().push_many(jobs, batch_size=batch_size)
        if self.run_on_push:
            await self.drain()
        return refs

    def sync_push_many(
        self, jobs: Iterable[Job | IsAJob[..., Any]], *, batch_size: int = 1000
    ) -> list[Reference]:
        """Sync twin of :meth:`push_many`."""
        refs = super().sync_push_many(jobs, batch_size=batch_size)
        if self.run_on_push:
            self.sync_drain()
        return refs

    async def drain(self) -> None:
        """Run jobs with a worker in this process until no due job is left (see the
        module docs); outcomes are in the database when it returns."""
        if self._draining:
            return  # called by a job of the running drain: that drain runs its pushes
        self._draining = True
        try:
            await _drain(self, self.worker_options, self.timeout, self.idle)
        finally:
            self._draining = False

    def sync_drain(self) -> None:
        """Sync twin of :meth:`drain` (runs it on an event loop in a helper thread, on its
        own connections, with this app's plugins)."""
        if self._draining:
            return
        self._draining = True
        failure: list[BaseException] = []

        async def run() -> None:
            app = Chancy(self.dsn, **self._options)
            app.plugins = self.plugins
            async with app:
                await _drain(app, self.worker_options, self.timeout, self.idle)

        def thread() -> None:
            try:
                anyio.run(run)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)

        try:
            helper = threading.Thread(target=thread, name="chancy-inline-drain")
            helper.start()
            helper.join()
        finally:
            self._draining = False
        if failure:
            raise failure[0]


async def _drain(app: Chancy, options: dict[str, Any], timeout: float, idle: float) -> None:
    """Run a worker on ``app`` until nothing runs and no due job of an active served
    queue is left (or nothing ran for ``idle`` seconds while some are left)."""
    from chancy_core.worker import Worker

    options = {
        "worker_id": f"inline-{uuid.uuid4()}",
        "completion_delay": 0.0,
        "shutdown_timeout": timeout,
        **options,
    }
    with anyio.fail_after(timeout):
        async with Worker(app, **options) as worker:
            unserved = await app.execute(_unserved_op(app.schema, list(worker.queues)))
            if unserved:
                log.warning(
                    "inline drain: jobs of %s wait in queues this worker does not serve;"
                    " declare them (await chancy.declare(Queue(name))) to run them",
                    ", ".join(unserved),
                )
            idle_since: float | None = None
            while True:
                await anyio.sleep(0.005)
                if worker.running_jobs or worker.unwritten:
                    idle_since = None
                    continue
                active = [
                    name
                    for name, producer in worker.queues.items()
                    if producer.queue.state is Queue.State.ACTIVE
                ]
                due, claimed = await app.execute(_status_op(app.schema, active, worker.worker_id))
                if claimed:
                    idle_since = None
                    continue
                if not due:
                    return
                now = anyio.current_time()
                if idle_since is None:
                    idle_since = now
                elif now - idle_since >= idle:
                    return  # due jobs the worker does not start: held back
