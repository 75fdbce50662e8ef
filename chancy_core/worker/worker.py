"""The worker: composes the components that claim, run and complete jobs.

Start order (the worker's table of contents): the listener, the heartbeat, the
completer, the queue set (one producer per served queue) and its watcher, the
plugin tasks, leadership, then ``chancy_worker_started``. Claimed jobs run on
the runner pool; each outcome goes to the completer, which writes it (fenced on
the claim's token) and then reports it to ``chancy_job_completed``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Self

import anyio
import anyio.abc

from chancy_core import concurrency, events, ops
from chancy_core import sql as q
from chancy_core.app import Chancy, mask_dsn
from chancy_core.errors import (
    TRANSIENT_ERRORS,
    ConfigurationError,
    DatabaseUnavailableError,
    WorkerError,
)
from chancy_core.hooks import call_event, decide_or
from chancy_core.job import QueuedJob
from chancy_core.plugins import plugin_options, recovers_dead_workers, registered
from chancy_core.queue import Queue
from chancy_core.sql import job_from_row
from chancy_core.worker.completer import Completer, Completion, storable
from chancy_core.worker.functions import FunctionResolver
from chancy_core.worker.heartbeat import Heartbeat
from chancy_core.worker.listener import Listener
from chancy_core.worker.producer import QueueProducer
from chancy_core.worker.progress import ProgressWriter
from chancy_core.worker.queues import QueueSet
from chancy_core.worker.runner import JobRunner, RunnerPool, Running
from chancy_core.worker.tasks import PluginTasks

__all__ = ["Worker"]

log = logging.getLogger(__name__)

_MAX_BACKOFF = 5.0

#: (database, prefix, worker id) of the workers running in this process: a second one
#: with the same id is refused even though its host and pid are the same.
_RUNNING_HERE: set[tuple[str, str, str]] = set()


class Worker:
    """Runs jobs from the queues whose tags match this worker's.

    Use as an async context manager to run it in the background::

        async with Worker(chancy) as worker:
            await worker.wait_for_shutdown()

    or ``await Worker(chancy).serve()`` to run until SIGINT/SIGTERM.

    :param chancy: the app (opened by the caller).
    :param worker_id: a unique id (default: a random UUID).
    :param tags: the worker's tags, matched by queues' tag patterns (always
        includes ``hostname:<host>`` and ``worker:<id>``).
    :param allow: module prefixes whose functions may run, plus ``@job``
        functions; ``None`` runs anything importable (see the module docs).
    :param heartbeat_interval: seconds between heartbeats (and cancellation checks).
    :param shutdown_timeout: seconds running jobs get to finish on shutdown
        before they are stopped and put back to ``pending``.
    :param completion_batch: outcomes written per statement at most.
    :param completion_delay: seconds an outcome may wait for others to share its write
        (none once a batch is full, or when unwritten outcomes hold claims back).
    :param max_result_bytes: the largest result (as JSON, in bytes) stored with a job;
        a larger one is not stored and the job's ``result_error`` says so (the job still
        succeeds). Default 1 MiB.
    :param progress_interval: seconds between writes of running jobs' progress (each
        write carries every job's latest value; the last one is written with the outcome).
    :param fence_after: self-fencing: once the heartbeat has not been written for this
        many seconds, the worker stops its running jobs (async jobs are cancelled,
        process jobs killed, thread jobs abandoned) before another worker may rescue
        them; their outcomes are not written (the orphan check puts them back to
        ``pending`` once the heartbeat is written again, or the recovery plugin rescues
        them). Default ``None``: half the recovery plugin's ``worker_timeout`` when a
        plugin that recovers dead workers is registered, else off; ``math.inf``: off.
    """

    def __init__(
        self,
        chancy: Chancy,
        *,
        worker_id: str | None = None,
        tags: Iterable[str] | None = None,
        allow: Sequence[str] | None = None,
        heartbeat_interval: float = 5.0,
        shutdown_timeout: float = 30.0,
        completion_batch: int = 200,
        completion_delay: float = 0.005,
        max_result_bytes: int = 1_048_576,
        progress_interval: float = 0.5,
        fence_after: float | None = None,
    ) -> None:
        if isinstance(allow, str):
            raise ConfigurationError("allow takes a list of module prefixes, not one string")
        if heartbeat_interval <= 0 or shutdown_timeout < 0:
            raise ConfigurationError("heartbeat_interval must be > 0 and shutdown_timeout >= 0")
        if not 1 <= completion_batch <= 200:
            raise ConfigurationError("completion_batch must be from 1 to 200")
        if isinstance(max_result_bytes, bool) or not isinstance(max_result_bytes, int):
            raise ConfigurationError(
                f"max_result_bytes must be an int (bytes), not {max_result_bytes!r}"
            )
        if max_result_bytes < 0:
            raise ConfigurationError("max_result_bytes must be >= 0 (0 stores no result)")
        if not progress_interval > 0:
            raise ConfigurationError("progress_interval must be > 0 (seconds)")
        if fence_after is not None and not fence_after > heartbeat_interval:
            raise ConfigurationError(
                f"fence_after ({fence_after!r}) must be more than heartbeat_interval"
                f" ({heartbeat_interval!r}) seconds (math.inf turns self-fencing off)"
            )
        self._fence_after = fence_after
        self.chancy = chancy
        self.worker_id = worker_id or str(uuid.uuid4())
        self.hostname = socket.gethostname()
        self.tags = frozenset(
            {*(tags or {"default"}), f"hostname:{self.hostname}", f"worker:{self.worker_id}"}
        )
        self.allow = None if allow is None else tuple(allow)
        self.shutdown_timeout = shutdown_timeout
        self._schema = schema = chancy.schema
        self._hooks = chancy.plugins.hook
        self._stopping = anyio.Event()
        self._stopped = anyio.Event()
        self._outer: anyio.abc.TaskGroup | None = None
        self._drain_scope: anyio.CancelScope | None = None
        #: The queues with concurrency rules: claimed by the keyed statement.
        self._keyed: frozenset[str] = frozenset()
        #: The ids of the jobs whose outcomes the shutdown could not write (``serve()``
        #: raises :class:`WorkerError` when there are any).
        self.unwritten_at_shutdown: list[str] = []

        # The components, in data-path order.
        self._listener = Listener(
            chancy.connect,
            schema.channel,
            self._on_event,
            self._missed,
            ping=lambda payload: chancy.execute(ops.notify(schema, payload)),
            sender=self.worker_id,
            interval=heartbeat_interval,
            echo_timeout=2 * heartbeat_interval + chancy.call_timeout,
            call_timeout=chancy.call_timeout,
        )
        self._queues = QueueSet(self.tags, self._new_producer)
        self._runners: RunnerPool[tuple[QueueProducer, Running]] = RunnerPool(self._run_job)
        self._job_runner = JobRunner(
            FunctionResolver(self.allow), self._hooks, self, max_result_bytes=max_result_bytes
        )
        self._completer = Completer(
            self._write,
            batch=completion_batch,
            delay=completion_delay,
            on_written=self._written,
        )
        self._heartbeat = Heartbeat(
            chancy.execute,
            register=lambda: ops.register_worker(
                schema,
                self.worker_id,
                self.hostname,
                os.getpid(),
                sorted(self.tags),
                sorted(self._queues.producers),
            ),
            unregister=partial(ops.unregister_worker, schema, self.worker_id),
            own_running=partial(ops.own_running, schema, self.worker_id),
            release=partial(ops.release, schema, self.worker_id),
            knows=self._knows,
            cancel=self._cancel_running,
            on_transient=self._check_pool,
            interval=heartbeat_interval,
            worker_id=self.worker_id,
            fence=self._fence,
        )
        self._progress = ProgressWriter(
            chancy.execute,
            partial(ops.set_progress, schema, self.worker_id),
            self._all_running,
            interval=progress_interval,
        )
        self._tasks = PluginTasks(self._hooks, self)

    # --- what plugins see (WorkerHandle) ---------------------------------------------------

    @property
    def app(self) -> Chancy:
        """The app this worker runs jobs of (the same as :attr:`chancy`)."""
        return self.chancy

    @property
    def is_leader(self) -> bool:
        """Whether this worker leads (runs the leader-only plugin tasks)."""
        return self._tasks.is_leader

    async def set_leader(self, leader: bool) -> None:
        """Become (or stop being) the leader: start or stop the leader-only tasks.

        Called by a leadership plugin; without one, every worker leads itself."""
        await self._tasks.set_leader(leader)

    @property
    def running_jobs(self) -> list[QueuedJob]:
        """The jobs this worker is executing right now."""
        return [r.job for producer in self._queues.all() for r in producer.running]

    @property
    def queues(self) -> dict[str, QueueProducer]:
        """The producers of the queues this worker serves, by name."""
        return self._queues.producers

    @property
    def unwritten(self) -> int:
        """How many outcomes of finished jobs wait to be written."""
        return len(self._completer)

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats."""
        return self._heartbeat.interval

    # --- running ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._outer = anyio.create_task_group()
        await self._outer.__aenter__()
        try:
            await self._outer.start(self.run)
        except BaseException:
            await self._outer.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        await self.stop()
        assert self._outer is not None
        return await self._outer.__aexit__(*exc_info)

    async def stop(self) -> None:
        """Stop claiming, let running jobs finish (up to ``shutdown_timeout``), and exit."""
        self._stopping.set()
        await self._stopped.wait()

    async def wait_for_shutdown(self) -> None:
        """Wait until the worker has stopped."""
        await self._stopped.wait()

    async def serve(self) -> None:
        """Run until SIGINT or SIGTERM, then shut down gracefully (a second signal stops
        the running jobs at once)."""
        try:
            await self._serve_until_signalled(signal.SIGINT, signal.SIGTERM)
        except BaseExceptionGroup as group:
            # The signal task never raises: the worker's own error (a live namesake, a
            # schema not migrated...) reaches the caller as itself, not inside a group.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _serve_until_signalled(self, *signums: signal.Signals) -> None:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(*signums) as signals:

                async def on_signal() -> None:
                    async for signum in signals:
                        if not self._stopping.is_set():
                            log.info("received signal %s; shutting down", signum)
                            self._stopping.set()
                        else:
                            log.info("received signal %s again; stopping running jobs", signum)
                            self.shutdown_timeout = 0
                            if self._drain_scope is not None:
                                self._drain_scope.cancel()

                tg.start_soon(on_signal)
                await self.run()
                tg.cancel_scope.cancel()
        if self.unwritten_at_shutdown:
            n = len(self.unwritten_at_shutdown)
            raise WorkerError(
                f"worker {self.worker_id} stopped with {n} outcome{'' if n == 1 else 's'}"
                " unwritten: their jobs stay 'running' until the recovery plugin rescues"
                " them (they may run again)"
            )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the worker until :meth:`stop` (or SIGTERM via :meth:`serve`)."""
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            # The check multiprocessing itself makes before starting a process.
            raise WorkerError(
                "a worker was started while a process-executor child was importing the"
                " program's main module: start the worker under"
                ' `if __name__ == "__main__":` (docs/deployment.md, section 8)'
            )
        key = (self.chancy.dsn, self._schema.prefix, self.worker_id)
        try:
            await self._take_id(key)  # SchemaMissingError if not migrated
            # Safe side if a plugin raises: no leader-only task runs until one makes this
            # worker lead.
            elects = bool(decide_or(self._hooks.chancy_elects_leader, True, worker=self))
            async with anyio.create_task_group() as tg:
                self._runners.start(tg)
                self._queues.start(tg)
                if self.chancy.notifications:
                    await tg.start(self._listener.run)
                else:  # behind PgBouncer without listen_dsn: LISTEN cannot work there
                    log.info(
                        "worker %s: no wake-ups (behind PgBouncer without listen_dsn); each"
                        " queue polls every polling_interval, 0.5 s at most",
                        self.worker_id,
                        extra={"worker_id": self.worker_id},
                    )
                tg.start_soon(self._heartbeat.run)
                self._heartbeat.fence_after = self._fencing_bound()
                tg.start_soon(self._heartbeat.watch)
                tg.start_soon(self._completer.run)
                tg.start_soon(self._progress.run)
                self._queues.apply(await self._read_queues())
                tg.start_soon(self._queues.run, self._read_queues)
                self._tasks.start(tg)
                if not elects:
                    await self.set_leader(True)
                await call_event(self._hooks.chancy_worker_started, worker=self)
                self._log_summary()
                task_status.started()
                await self._stopping.wait()
                await self._shutdown()
                tg.cancel_scope.cancel()
        finally:
            _RUNNING_HERE.discard(key)
            with anyio.CancelScope(shield=True):
                await self._runners.aclose()
                for producer in self._queues.all():
                    with anyio.move_on_after(10):
                        await producer.executor.aclose()
                self._stopped.set()

    async def _take_id(self, key: tuple[str, str, str]) -> None:
        """Register this worker's row, refusing an id a live worker holds (its heartbeat
        is fresh and this host cannot tell it is gone); a dead one's row is taken over."""
        alive_within = max(3 * self.heartbeat_interval, 15.0)
        if key in _RUNNING_HERE:
            holder: ops.IdHolder | None = ops.IdHolder(self.hostname, os.getpid(), 0.0, False)
        else:
            holder = await self.chancy.execute(
                ops.take_worker_id(
                    self._schema,
                    self.worker_id,
                    self.hostname,
                    os.getpid(),
                    sorted(self.tags),
                    sorted(self._queues.producers),
                    alive_within=alive_within,
                    is_dead=self._is_dead_here,
                )
            )
        if holder is not None and not holder.replaced:
            raise WorkerError(
                f"a worker with id {self.worker_id!r} is alive (pid {holder.pid} on"
                f" {holder.hostname}, last heartbeat {holder.heartbeat_age:.1f}s ago):"
                " stop it first, or give this worker another worker_id (a worker id is"
                f" taken over only once its heartbeat is {alive_within:.0f}s old, or its"
                " process is gone from this host)"
            )
        if holder is not None:
            log.warning(
                "worker %s: taking over the id of a dead worker (pid %d on %s, last heartbeat"
                " %.1fs ago)",
                self.worker_id,
                holder.pid,
                holder.hostname,
                holder.heartbeat_age,
                extra={"worker_id": self.worker_id},
            )
        _RUNNING_HERE.add(key)

    def _is_dead_here(self, hostname: str, pid: int) -> bool:
        """Whether the process ``pid`` of ``hostname`` is known to be gone: only this
        host's processes can be checked (an earlier worker object of this process that
        did not unregister, or a pid that no longer runs)."""
        if hostname != self.hostname:
            return False
        if pid == os.getpid():
            return True  # not in _RUNNING_HERE: a worker of this process that is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    def _log_summary(self) -> None:
        """The start-up summary (INFO), and a warning when no plugin recovers the jobs of
        dead workers."""
        plugins = list(registered(self.chancy.plugins))
        lines = [
            f"worker {self.worker_id} started (pid {os.getpid()} on {self.hostname}),"
            f" database {mask_dsn(self.chancy.dsn)} (table prefix {self._schema.prefix!r})"
        ]
        for name, producer in sorted(self._queues.producers.items()):
            queue = producer.queue
            lines.append(
                f"  queue {name}: {queue.executor} executor, concurrency {queue.concurrency},"
                f" {queue.state.value}"
            )
        if not self._queues.producers:
            lines.append(f"  no queue matches this worker's tags {sorted(self.tags)}")
        lines += [f"  plugin {name}: {plugin_options(p)}" for name, p in plugins]
        if not plugins:
            lines.append("  no plugins")
        log.info("\n".join(lines), extra={"worker_id": self.worker_id})
        if not any(recovers_dead_workers(p) for _, p in plugins):
            log.warning(
                "worker %s: no plugin recovers the jobs of dead workers: if a worker dies"
                " (kill -9, out of memory, a lost host) its running jobs stay 'running'"
                " for ever. Install chancy-plugin-recovery (from the repository root: pip install"
                " ./plugins/chancy-plugin-recovery) and add Recovery() to the app's plugins",
                self.worker_id,
                extra={"worker_id": self.worker_id},
            )

    def _busy(self) -> bool:
        """Whether a job still runs, or a producer may still start one. (A job leaves its
        producer's slots and its outcome is recorded in one step, with no await between.)"""
        return any(p.running or not p.done.is_set() for p in self._queues.all())

    async def _shutdown(self) -> None:
        """Stop claiming, drain (up to ``shutdown_timeout``), stop what is left and put it
        back to ``pending``, write every outcome, and unregister."""
        with anyio.CancelScope(shield=True):
            self._queues.close()  # stop claiming; running jobs go on
            unfinished = len(self._all_running())
            if unfinished:
                log.info(
                    "worker %s is shutting down: waiting up to %.1fs for %d running job%s to"
                    " finish (a second signal stops them at once)",
                    self.worker_id,
                    self.shutdown_timeout,
                    unfinished,
                    "" if unfinished == 1 else "s",
                    extra={"worker_id": self.worker_id},
                )
            deadline = anyio.current_time() + self.shutdown_timeout
            with anyio.move_on_after(self.shutdown_timeout) as self._drain_scope:
                await call_event(self._hooks.chancy_worker_stopping, worker=self)
                while self._busy():
                    await anyio.sleep(0.01)
            # Stop what is left. A claim that was under way when the producers were
            # cancelled still starts its jobs, so repeat until nothing runs.
            released: list[tuple[str, str]] = []
            while self._busy():
                for producer in self._queues.all():
                    for running in producer.running:
                        if running.stop("shutdown"):
                            released.append((running.job.id, running.token))
                await anyio.sleep(0.01)
            # First: a finished job keeps its outcome. Within what is left of the
            # shutdown deadline (at least a second).
            with anyio.move_on_after(max(deadline - anyio.current_time(), 1.0)):
                try:
                    await self._completer.flush()
                except Exception:
                    log.exception("worker %s could not write its outcomes", self.worker_id)
            self.unwritten_at_shutdown = self._completer.pending_ids()
            if self.unwritten_at_shutdown:
                log.error(
                    "worker %s: %d outcome%s could not be written by the end of the shutdown"
                    " timeout (unwritten; their jobs stay 'running' until recovered)",
                    self.worker_id,
                    len(self.unwritten_at_shutdown),
                    "" if len(self.unwritten_at_shutdown) == 1 else "s",
                    extra={"worker_id": self.worker_id},
                )
                log.debug(
                    "unwritten outcomes of jobs %s",
                    ", ".join(self.unwritten_at_shutdown),
                    extra={"worker_id": self.worker_id},
                )
            with anyio.move_on_after(5.0):
                try:
                    await self._retrying(
                        "releasing jobs",
                        partial(ops.release, self._schema, self.worker_id, released),
                    )
                    await self._heartbeat.unregister(partial(self._retrying, "unregistering"))
                except Exception:
                    log.exception("worker %s could not shut down cleanly", self.worker_id)
            log.info("worker %s stopped", self.worker_id, extra={"worker_id": self.worker_id})

    # --- the data path: claim → run → complete ---------------------------------------------

    def _new_producer(self, queue: Queue, previous: QueueProducer | None) -> QueueProducer:
        return QueueProducer(
            queue,
            claim=self._claim,
            start=self._start_job,
            unwritten=self._completer.unwritten,
            on_transient=self._check_pool,
            hurry=self._completer.hurry,
            previous=previous,
            max_wait=None if self.chancy.notifications else 0.5,
        )

    async def _claim(self, queue: Queue, limit: int) -> ops.Claimed:
        """Claim up to ``limit`` jobs of ``queue``.

        Waiting for a connection can be cancelled; once it has one, the claim is shielded
        from cancellation (a retirement, the shutdown), so that claimed rows always reach
        the producer, which starts them with no await between."""
        pool = self.chancy.pool
        conn = await pool.getconn()
        keyed = queue.name in self._keyed
        op = ops.claim(self._schema, queue, limit, self.worker_id, keyed=keyed)
        claimed: ops.Claimed | None = None
        with anyio.CancelScope(shield=True) as shield:
            # The app's call deadline: a frozen connection is closed at it (a claim that
            # commits after the worker gave up is put back by the heartbeat's orphan check).
            shield.deadline = anyio.current_time() + self.chancy.call_timeout
            try:
                if queue.rate_limit is None and not keyed:
                    claimed = await self.chancy.execute_ex(conn, op)
                else:  # the rate-limit tokens or the key lock, and the claim, together
                    async with conn.transaction():
                        claimed = await self.chancy.execute_ex(conn, op)
            finally:
                await pool.putconn(conn)
        if claimed is None:
            raise DatabaseUnavailableError(f"claiming from {queue.name} did not finish in time")
        if claimed.rows and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "claimed %d of up to %d jobs of %s: %s",
                len(claimed.rows),
                limit,
                queue.name,
                ", ".join(str(row[q.J_ID]) for row in claimed.rows),
                extra={"worker_id": self.worker_id},
            )
        return claimed

    def _start_job(self, producer: QueueProducer, row: tuple[Any, ...], token: str) -> None:
        try:
            job = job_from_row(row)
        except Exception as exc:  # a row written by hand that is not a valid job
            self._completer.record(
                Completion(
                    id=str(row[q.J_ID]),
                    queue=row[q.J_QUEUE],
                    token=token,
                    state="failed",
                    error=storable(f"invalid job row, not run: {exc}"),
                )
            )
            return
        running = Running(job, token)
        producer.running.add(running)
        self._runners.submit((producer, running))

    async def _run_job(self, item: tuple[QueueProducer, Running]) -> None:
        producer, running = item
        try:
            completion = await self._job_runner.run(running, producer.executor)
        finally:
            producer.finished(running)
            self._queues.job_ended(producer)
        if completion is not None:
            self._completer.record(completion)

    async def _write(self, batch: Sequence[Completion]) -> set[str]:
        op = partial(ops.complete, self._schema, self.worker_id, [c.as_json() for c in batch])
        accepted: set[str] = await self._retrying("writing outcomes", op)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "wrote %d outcomes (%s)%s",
                len(batch),
                ", ".join(f"{c.id} {c.state}" for c in batch),
                ""
                if len(accepted) == len(batch)
                else f"; {len(batch) - len(accepted)} fenced out (no longer held by this worker)",
                extra={"worker_id": self.worker_id},
            )
        return accepted

    async def _written(self, batch: Sequence[Completion], accepted: set[str]) -> None:
        """After a write: wake producers (a due retry, freed slots), then report the
        outcomes the database accepted to ``chancy_job_completed``."""
        again = {c.queue for c in batch if c.state == "retrying" and not c.scheduled_at}
        for name in {c.queue for c in batch}:
            producer = self._queues.get(name)
            # A keyed queue: a finished job may free a key whose next job waits.
            if producer is not None and (producer.more or name in again or name in self._keyed):
                producer.wake()
        for c in batch:
            if c.outcome is not None and c.job is not None and c.id in accepted:
                await call_event(
                    self._hooks.chancy_job_completed, worker=self, job=c.job, outcome=c.outcome
                )

    # --- events, cancellation, the heartbeat's check ---------------------------------------

    def _on_event(self, event: events.Event) -> None:
        if event.kind == events.PUSHED:
            producer = self._queues.get(str(event.queue))
            if producer is not None:
                producer.wake()
        elif event.kind == events.QUEUE:
            self._queues.changed.set()
        elif event.kind == events.CANCEL:
            self._cancel_running(set(event.ids))

    def _missed(self) -> None:
        """The listener reconnected: events may have been missed."""
        self._queues.wake_all()
        self._queues.changed.set()

    def _fencing_bound(self) -> float | None:
        """Seconds without a heartbeat after which this worker fences itself, or ``None``."""
        if self._fence_after is not None:
            return None if self._fence_after == float("inf") else self._fence_after
        timeouts = [
            getattr(p, "worker_timeout", None)
            for _, p in registered(self.chancy.plugins)
            if recovers_dead_workers(p)
        ]
        found = [t for t in timeouts if isinstance(t, (int, float)) and t > 0]
        return min(found) / 2 if found else None

    def _fence(self, age: float) -> None:
        """The heartbeat is too old: stop every running job before it may be rescued."""
        running = [r for r in self._all_running() if r.stop_reason is None]
        if not running:
            return
        log.error(
            "worker %s: no heartbeat written for %.1fs (more than fence_after=%.1fs): stopping"
            " its %d running job%s before another worker may rescue them (they are put back"
            " to pending once the database answers again)",
            self.worker_id,
            age,
            self._heartbeat.fence_after or 0.0,
            len(running),
            "" if len(running) == 1 else "s",
            extra={"worker_id": self.worker_id},
        )
        for r in running:
            r.stop("fenced")

    def _cancel_running(self, ids: set[str]) -> None:
        for producer in self._queues.all():
            for running in producer.running:
                if running.job.id in ids:
                    running.stop("cancel")

    def _all_running(self) -> list[Running]:
        return [r for p in self._queues.all() for r in p.running]

    def _knows(self, job_id: str) -> bool:
        """Whether this worker runs ``job_id`` or holds its outcome."""
        return any(
            r.job.id == job_id for p in self._queues.all() for r in p.running
        ) or self._completer.holds(job_id)

    async def _read_queues(self) -> list[Queue]:
        queues: list[Queue] = await self.chancy.execute(ops.select_queues(self._schema))
        self._keyed = await self.chancy.execute(concurrency.keyed_queues(self._schema))
        return queues

    # --- the database --------------------------------------------------------------------

    async def _retrying(self, what: str, op: Callable[[], ops.Operation]) -> Any:
        """Run the operation ``op()`` builds until the database answers, backing off up to
        5 s."""
        delay = 0.1
        while True:
            try:
                return await self.chancy.execute(op())
            except TRANSIENT_ERRORS as exc:
                log.warning(
                    "%s failed (%s); retrying in %.1fs",
                    what,
                    exc,
                    delay,
                    extra={"worker_id": self.worker_id},
                )
                await self._check_pool()
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)

    async def _check_pool(self) -> None:
        """After a connection error, drop the pool's broken connections at once (after a
        database restart every pooled connection is dead, and each would fail once)."""
        with anyio.move_on_after(5):
            try:
                await self.chancy.pool.check()
            except Exception as exc:
                log.debug("checking the pool failed: %s", exc)

    def __repr__(self) -> str:
        return f"Worker({self.worker_id!r}, queues={sorted(self._queues.producers)!r})"
