"""Metrics for chancy-core: counters, histograms, queue depths, and history in PostgreSQL.

Each worker process keeps, per queue and function:

* ``chancy_jobs_total{queue,func,outcome}``: attempts that ended, by the state
  written (``succeeded``, ``failed``, ``retrying``, ``pending``);
* ``chancy_job_run_seconds{queue,func}``: a histogram of how long attempts ran;
* ``chancy_job_wait_seconds{queue,func}``: a histogram of ``started_at - scheduled_at``
  (how long a due job waited for a worker);

and samples, every ``depth_interval`` seconds, ``chancy_queue_depth{queue,state}``
(pending and retrying jobs per queue, cluster-wide) plus
``chancy_worker_running_jobs{worker}``. With ``port`` set, a worker serves them in the
Prometheus text format at ``http://host:port/metrics``.

Every worker also adds its counts, per minute, to the plugin's table
(``{prefix}metrics_minutes``), giving a cluster-wide history that
:meth:`Metrics.history` reads; the leader deletes rows older than ``retention``.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import AsyncIterator, Generator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio

from chancy_core import Chancy, Outcome, QueuedJob, hookimpl
from chancy_core.errors import TRANSIENT_ERRORS, ConfigurationError
from chancy_core.migrations import MigrationSet, load_migrations
from chancy_plugin_metrics import queries as q
from chancy_plugin_metrics.exposition import Histogram, sample
from chancy_plugin_metrics.server import serve

if TYPE_CHECKING:
    from chancy_core.hookspecs import RegisterTask
    from chancy_core.hookspecs import WorkerHandle as Worker

__all__ = ["DEFAULT_BUCKETS", "PORT_ENV", "HistoryRow", "Metrics"]

log = logging.getLogger(__name__)

PORT_ENV = "CHANCY_METRICS_PORT"
"""Where the default ``Metrics()`` (the one the entry point makes) serves, if set."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip
"""Histogram upper bounds, in seconds, for run and wait times."""

_TRANSIENT = TRANSIENT_ERRORS
_MAX_TIMINGS = 10_000
_RETRY_LISTEN = 30.0
_WAITING = (QueuedJob.State.PENDING, QueuedJob.State.RETRYING)

Operation = Generator[tuple[bytes, dict[str, Any]], list[tuple[Any, ...]], Any]


class _Env(enum.Enum):
    FROM_ENV = "env"


FROM_ENV = _Env.FROM_ENV


@dataclass(frozen=True, kw_only=True)
class HistoryRow:
    """One minute of one queue, function and outcome, summed over every worker."""

    bucket: datetime
    """The minute (UTC) the attempts ended in."""
    queue: str
    func: str
    outcome: str
    """The state written: ``succeeded``, ``failed``, ``retrying`` or ``pending``."""
    jobs: int
    """How many attempts ended so."""
    run_seconds_sum: float
    run_seconds_max: float
    wait_seconds_sum: float
    wait_seconds_max: float


@dataclass(eq=False)
class _Minute:
    jobs: int = 0
    run_sum: float = 0.0
    run_max: float = 0.0
    wait_sum: float = 0.0
    wait_max: float = 0.0

    def add(self, run: float, wait: float) -> None:
        self.jobs += 1
        self.run_sum += run
        self.run_max = max(self.run_max, run)
        self.wait_sum += wait
        self.wait_max = max(self.wait_max, wait)

    def merge(self, other: _Minute) -> None:
        self.jobs += other.jobs
        self.run_sum += other.run_sum
        self.run_max = max(self.run_max, other.run_max)
        self.wait_sum += other.wait_sum
        self.wait_max = max(self.wait_max, other.wait_max)


class Metrics:
    """The metrics plugin.

    :param port: serve the Prometheus endpoint on this port (``0``: any free
        port, see :attr:`address`); ``None`` serves nothing. By default the
        port comes from ``$CHANCY_METRICS_PORT``, else nothing is served: the
        plugin is loaded in every process that has it installed, and a fixed
        default port would collide between workers on one host.
    :param host: the address to listen on (``"0.0.0.0"`` to let other hosts scrape).
    :param depth_interval: seconds between two samples of the queue depths.
    :param flush_interval: seconds between two writes of the history.
    :param retention: how long history is kept (a :class:`timedelta` or seconds).
    :param prune_interval: seconds between two prunes of the history (by the leader).
    :param buckets: histogram upper bounds, in seconds.
    """

    name = "metrics"

    def __init__(
        self,
        *,
        port: int | _Env | None = FROM_ENV,
        host: str = "127.0.0.1",
        depth_interval: float = 15.0,
        flush_interval: float = 10.0,
        retention: timedelta | float = timedelta(days=7),
        prune_interval: float = 3600.0,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        if port is FROM_ENV:
            env = os.environ.get(PORT_ENV, "").strip()
            if env and not env.isdigit():
                raise ConfigurationError(f"{PORT_ENV}={env!r} is not a port number")
            port = int(env) if env else None
        if port is not None and not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be from 0 to 65535 or None, not {port!r}")
        seconds = retention.total_seconds() if isinstance(retention, timedelta) else retention
        if min(depth_interval, flush_interval, prune_interval, seconds) <= 0:
            raise ConfigurationError("intervals and retention must be positive")
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ConfigurationError("buckets must be increasing upper bounds, in seconds")
        self.port: int | None = port
        self.host = host
        self.depth_interval = depth_interval
        self.flush_interval = flush_interval
        self.retention = float(seconds)
        self.prune_interval = prune_interval
        self.buckets = tuple(float(b) for b in buckets)
        self.address: tuple[str, int] | None = None
        """``(host, port)`` the endpoint listens on, once it does."""
        self.counts: dict[tuple[str, str, str], int] = {}
        self.run_times: dict[tuple[str, str], Histogram] = {}
        self.wait_times: dict[tuple[str, str], Histogram] = {}
        self.depths: dict[tuple[str, str], int] = {}
        self._minutes: dict[tuple[datetime, str, str, str], _Minute] = {}
        self._timings: dict[str, float] = {}
        self._workers: dict[str, Worker] = {}
        self._serving = False

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def chancy_migrations(self, app: Chancy) -> MigrationSet:
        return load_migrations("metrics", "chancy_plugin_metrics.migrations")

    @hookimpl
    def chancy_worker_tasks(self, worker: Worker, register: RegisterTask) -> None:
        self._workers[worker.worker_id] = worker
        register("metrics.depths", self._sample_depths)
        register("metrics.history", self._write_history)
        register("metrics.prune", self._prune_history, leader_only=True)
        if self.port is not None:
            register("metrics.endpoint", self._serve)

    @hookimpl
    def chancy_job_wrap(self, worker: Worker, job: QueuedJob) -> AbstractAsyncContextManager[None]:
        return self._timed(job.id)

    @hookimpl
    def chancy_job_completed(self, worker: Worker, job: QueuedJob, outcome: Outcome) -> None:
        self._timings.pop(job.id, None)
        self.record(job, outcome.run_seconds)

    # --- recording -----------------------------------------------------------------------

    @asynccontextmanager
    async def _timed(self, job_id: str) -> AsyncIterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if len(self._timings) >= _MAX_TIMINGS:  # jobs released at shutdown never complete
                self._timings.pop(next(iter(self._timings)))
            self._timings[job_id] = time.perf_counter() - start

    def record(self, job: QueuedJob, run_seconds: float | None = None) -> None:
        """Count one ended attempt of ``job`` (``job.state`` is its outcome).

        ``run_seconds`` is how long it ran; when unknown it is taken from
        ``job.started_at`` (0 for a job refused before it ran).
        """
        now = datetime.now(UTC)
        started = job.started_at
        if run_seconds is None:
            run_seconds = (now - started).total_seconds() if started else 0.0
        wait_seconds = (started - job.scheduled_at).total_seconds() if started else 0.0
        run_seconds, wait_seconds = max(run_seconds, 0.0), max(wait_seconds, 0.0)
        outcome = job.state.value
        key = (job.queue, job.func)
        self.counts[(*key, outcome)] = self.counts.get((*key, outcome), 0) + 1
        if key not in self.run_times:
            self.run_times[key] = Histogram(self.buckets)
            self.wait_times[key] = Histogram(self.buckets)
        self.run_times[key].observe(run_seconds)
        self.wait_times[key].observe(wait_seconds)
        minute = now.replace(second=0, microsecond=0)
        self._minutes.setdefault((minute, *key, outcome), _Minute()).add(run_seconds, wait_seconds)

    # --- exposition ----------------------------------------------------------------------

    def render(self) -> str:
        """Every metric in the Prometheus text format (what the endpoint serves)."""
        out = [
            "# HELP chancy_jobs_total Job attempts that ended, by queue, function and outcome.",
            "# TYPE chancy_jobs_total counter",
        ]
        for (queue, func, outcome), count in sorted(self.counts.items()):
            out.append(
                sample(
                    "chancy_jobs_total",
                    [("queue", queue), ("func", func), ("outcome", outcome)],
                    count,
                )
            )
        for name, help_text, histograms in (
            ("chancy_job_run_seconds", "How long job attempts ran.", self.run_times),
            (
                "chancy_job_wait_seconds",
                "How long due jobs waited for a worker (started_at - scheduled_at).",
                self.wait_times,
            ),
        ):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
            for (queue, func), histogram in sorted(histograms.items()):
                out += histogram.lines(name, [("queue", queue), ("func", func)])
        out += [
            "# HELP chancy_queue_depth Jobs waiting per queue and state (cluster-wide, sampled).",
            "# TYPE chancy_queue_depth gauge",
        ]
        for (queue, state), depth in sorted(self.depths.items()):
            out.append(sample("chancy_queue_depth", [("queue", queue), ("state", state)], depth))
        out += [
            "# HELP chancy_worker_running_jobs Jobs each worker of this process is running.",
            "# TYPE chancy_worker_running_jobs gauge",
        ]
        for worker_id, worker in sorted(self._workers.items()):
            out.append(
                sample(
                    "chancy_worker_running_jobs", [("worker", worker_id)], len(worker.running_jobs)
                )
            )
        return "\n".join(out) + "\n"

    # --- worker tasks --------------------------------------------------------------------

    async def _serve(self, worker: Worker) -> None:
        def bound(host: str, port: int) -> None:
            self.address = (host, port)

        assert self.port is not None
        while True:
            while self._serving:  # another worker of this process serves; take over if it stops
                await anyio.sleep(1.0)
            self._serving = True
            try:
                await serve(self.host, self.port, self.render, on_bound=bound)
            except OSError as exc:  # e.g. the port is taken
                log.error(
                    "metrics: cannot serve on %s:%s (%s); trying again in %ss",
                    self.host,
                    self.port,
                    exc,
                    _RETRY_LISTEN,
                )
            finally:
                self._serving = False
                self.address = None
            await anyio.sleep(_RETRY_LISTEN)

    async def sample_depths(self, app: Chancy) -> None:
        """Read how many jobs wait in each queue (what the depth task does)."""
        counts = await app.count_jobs(_WAITING)
        queues = {queue.name for queue in await app.get_all_queues()}
        queues |= {queue for queue, _ in self.depths} | {queue for queue, _ in counts}
        self.depths = {
            (queue, state.value): counts.get((queue, state), 0)
            for queue in queues
            for state in _WAITING
        }

    async def _sample_depths(self, worker: Worker) -> None:
        try:
            while True:
                try:
                    await self.sample_depths(worker.chancy)
                except _TRANSIENT as exc:
                    log.warning("metrics: could not sample queue depths (%s)", exc)
                await anyio.sleep(self.depth_interval)
        finally:
            self._workers.pop(worker.worker_id, None)

    async def flush(self, app: Chancy) -> int:
        """Add the counts recorded since the last flush to the history; returns rows written."""
        if not self._minutes:
            return 0
        taken, self._minutes = self._minutes, {}
        keys = sorted(taken)
        params = {
            "buckets": [k[0] for k in keys],
            "queues": [k[1] for k in keys],
            "funcs": [k[2] for k in keys],
            "outcomes": [k[3] for k in keys],
            "jobs": [taken[k].jobs for k in keys],
            "run_sums": [taken[k].run_sum for k in keys],
            "run_maxes": [taken[k].run_max for k in keys],
            "wait_sums": [taken[k].wait_sum for k in keys],
            "wait_maxes": [taken[k].wait_max for k in keys],
        }

        def op() -> Operation:
            yield app.schema.render(q.UPSERT_MINUTES), params

        try:
            await app.execute(op())
        except anyio.get_cancelled_exc_class():
            raise  # it may have been written: dropping it is better than counting it twice
        except Exception:
            for key, minute in taken.items():  # keep them for the next flush
                self._minutes.setdefault(key, _Minute()).merge(minute)
            raise
        return len(keys)

    async def _flush_shielded(self, app: Chancy, timeout: float) -> None:
        # Shielded: a shutdown must not interrupt a write whose fate it could not know.
        with anyio.CancelScope(shield=True), anyio.move_on_after(timeout):
            try:
                await self.flush(app)
            except Exception as exc:  # the database is away, or worse: never kill the worker
                log.warning("metrics: could not write the history (%s); will retry", exc)

    async def _write_history(self, worker: Worker) -> None:
        try:
            while True:
                await anyio.sleep(self.flush_interval)
                await self._flush_shielded(worker.chancy, 30.0)
        finally:
            await self._flush_shielded(worker.chancy, 5.0)

    async def prune(self, app: Chancy) -> None:
        """Delete history older than the retention (what the leader's prune task does)."""

        def op() -> Operation:
            yield app.schema.render(q.PRUNE_MINUTES), {"seconds": self.retention}

        await app.execute(op())

    async def _prune_history(self, worker: Worker) -> None:
        while True:
            try:
                await self.prune(worker.chancy)
            except _TRANSIENT as exc:
                log.warning("metrics: could not prune the history (%s)", exc)
            await anyio.sleep(self.prune_interval)

    # --- reading the history -------------------------------------------------------------

    @staticmethod
    async def history(
        app: Chancy,
        *,
        since: datetime | None = None,
        queue: str | None = None,
        func: str | None = None,
    ) -> list[HistoryRow]:
        """The cluster-wide history from ``since`` (default: the last hour), oldest first."""
        start = since or datetime.now(UTC) - timedelta(hours=1)

        def op() -> Operation:
            rows = yield (
                app.schema.render(q.SELECT_MINUTES),
                {"since": start, "queue": queue, "func": func},
            )
            return [
                HistoryRow(
                    bucket=row[0],
                    queue=row[1],
                    func=row[2],
                    outcome=row[3],
                    jobs=int(row[4]),
                    run_seconds_sum=row[5],
                    run_seconds_max=row[6],
                    wait_seconds_sum=row[7],
                    wait_seconds_max=row[8],
                )
                for row in rows
            ]

        found: list[HistoryRow] = await app.execute(op())
        return found
