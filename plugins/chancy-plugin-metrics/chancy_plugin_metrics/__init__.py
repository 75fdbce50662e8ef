"""Metrics for chancy-core on prometheus-client, and a cluster-wide history in PostgreSQL.

Each plugin instance owns one :class:`prometheus_client.CollectorRegistry` (never the
process-global default one), holding:

* ``chancy_jobs_completed_total{queue,func,state}``: attempts that ended, by the state
  written (``succeeded``, ``failed``, ``retrying``, ``pending``);
* ``chancy_job_run_seconds{queue,func}``: a histogram of how long attempts ran;
* ``chancy_job_wait_seconds{queue,func}``: a histogram of ``started_at - scheduled_at``;
* gauges read from the database (cluster-wide): ``chancy_queue_depth{queue,state}``,
  ``chancy_queue_oldest_job_age_seconds{queue}``, ``chancy_workers``,
  ``chancy_workers_oldest_heartbeat_age_seconds`` and
  ``chancy_metrics_sampled_timestamp_seconds``;
* this process's workers, labelled ``worker`` (stable across restarts by default: see
  ``worker_label``): ``chancy_worker_running_jobs`` and ``chancy_worker_is_leader`` (read
  at scrape time), ``chancy_worker_heartbeat_age_seconds`` (sampled) and
  ``chancy_leadership_changes_total``.

The database gauges are sampled every ``depth_interval`` seconds by a worker task, and by
:func:`metrics_app` at scrape time when the last sample is older than that. With ``port``
set, a worker serves the registry on ``/metrics`` (``/healthz`` answers 200, any other
path 404) with prometheus-client's WSGI server; :func:`metrics_app` is the same registry
as an ASGI application (the dashboard mounts it at ``/metrics``).

Every worker also adds its counts, per minute, to the plugin's table
(``{prefix}metrics_minutes``), giving a cluster-wide history that
:meth:`Metrics.history` reads; the leader deletes rows older than ``retention``.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import anyio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.asgi import make_asgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from chancy_core import Chancy, Outcome, QueuedJob, hookimpl
from chancy_core.errors import TRANSIENT_ERRORS, ConfigurationError
from chancy_core.migrations import MigrationSet, load_migrations
from chancy_plugin_metrics import queries as q

if TYPE_CHECKING:
    from chancy_core.hookspecs import RegisterTask
    from chancy_core.hookspecs import WorkerHandle as Worker

__all__ = [
    "DEFAULT_BUCKETS",
    "INDEX_ENV",
    "PORT_ENV",
    "WORKER_LABELS",
    "HistoryRow",
    "Metrics",
    "MetricsApp",
    "endpoint_app",
    "metrics_app",
]

log = logging.getLogger(__name__)

PORT_ENV = "CHANCY_METRICS_PORT"
"""Where the default ``Metrics()`` (the one the entry point makes) serves, if set."""

INDEX_ENV = "CHANCY_PROCESS_INDEX"
"""Set by ``chancy worker start --processes N`` to each child's index: child ``n`` serves
on ``$CHANCY_METRICS_PORT + n``, so every child is a target of its own."""

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip
"""Histogram upper bounds, in seconds, for run and wait times."""

WORKER_LABELS = ("hostname", "id")
"""The values of ``Metrics(worker_label=...)``."""

_TRANSIENT = TRANSIENT_ERRORS
_RETRY_LISTEN = 30.0
_DEPTH_STATES = ("pending", "retrying", "running")

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


@dataclass(frozen=True)
class _Sample:
    """One read of the database gauges; replaced whole, so a scrape never sees half of one."""

    depths: dict[tuple[str, str], int] = field(default_factory=dict)
    oldest: dict[str, float] = field(default_factory=dict)
    workers: int = 0
    oldest_heartbeat: float = 0.0
    """Seconds since the least recent heartbeat of a registered worker (0: no worker)."""
    heartbeats: dict[str, float] = field(default_factory=dict)
    """Heartbeat age of this process's workers, by worker id."""
    at: float = 0.0
    """``time.time()`` of the read; 0: never read."""


class _Collector:
    """Yields the gauges read from the database (the last sample) and the live worker gauge."""

    def __init__(self, plugin: Metrics) -> None:
        self._plugin = plugin

    def describe(self) -> Iterator[Metric]:
        return self._families(_Sample(), [])

    def collect(self) -> Iterator[Metric]:
        plugin = self._plugin
        return self._families(plugin.sample, list(plugin._workers.items()))

    def _families(
        self, sample: _Sample, workers_here: list[tuple[str, Worker]]
    ) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "chancy_queue_depth",
            "Jobs per queue in each unfinished state (cluster-wide, sampled).",
            labels=("queue", "state"),
        )
        oldest = GaugeMetricFamily(
            "chancy_queue_oldest_job_age_seconds",
            "Age of the oldest due job waiting in each queue, 0 when none (cluster-wide, sampled).",
            labels=("queue",),
        )
        workers = GaugeMetricFamily(
            "chancy_workers", "Workers registered in the database (cluster-wide, sampled)."
        )
        oldest_heartbeat = GaugeMetricFamily(
            "chancy_workers_oldest_heartbeat_age_seconds",
            "Seconds since the least recent heartbeat of a registered worker, 0 when none"
            " (cluster-wide, sampled).",
        )
        sampled = GaugeMetricFamily(
            "chancy_metrics_sampled_timestamp_seconds",
            "Unix time of the last successful read of the database gauges.",
        )
        if sample.at:
            for (queue, state), n in sorted(sample.depths.items()):
                depth.add_metric((queue, state), n)
            for queue, age in sorted(sample.oldest.items()):
                oldest.add_metric((queue,), age)
            workers.add_metric((), sample.workers)
            oldest_heartbeat.add_metric((), sample.oldest_heartbeat)
            sampled.add_metric((), sample.at)
        by_worker = GaugeMetricFamily(
            "chancy_worker_running_jobs",
            "Jobs each worker of this process is running.",
            labels=("worker",),
        )
        leader = GaugeMetricFamily(
            "chancy_worker_is_leader",
            "1 while the worker of this process leads (runs the leader-only tasks), else 0.",
            labels=("worker",),
        )
        heartbeat = GaugeMetricFamily(
            "chancy_worker_heartbeat_age_seconds",
            "Seconds since the heartbeat of each worker of this process (its row's last_seen,"
            " sampled).",
            labels=("worker",),
        )
        labels = self._plugin._labels
        for worker_id, worker in sorted(workers_here, key=lambda item: labels.get(item[0], "")):
            label = labels.get(worker_id, worker_id)
            by_worker.add_metric((label,), len(worker.running_jobs))
            leader.add_metric((label,), 1 if worker.is_leader else 0)
            if worker_id in sample.heartbeats:
                heartbeat.add_metric((label,), sample.heartbeats[worker_id])
        yield from (depth, oldest, workers, oldest_heartbeat, sampled, by_worker, leader, heartbeat)


class Metrics:
    """The metrics plugin.

    :param port: serve the Prometheus endpoint on this port (``0``: any free
        port, see :attr:`address`); ``None`` serves nothing. By default the
        port comes from ``$CHANCY_METRICS_PORT``, else nothing is served: the
        plugin is loaded in every process that has it installed, and a fixed
        default port would collide between workers on one host. Child ``n`` of
        ``chancy worker start --processes N`` (``$CHANCY_PROCESS_INDEX``) serves on
        the port plus ``n``, whether the port comes from the environment or from here.
    :param host: the address to listen on (``"0.0.0.0"`` to let other hosts scrape).
    :param depth_interval: seconds between two samples of the database gauges.
    :param flush_interval: seconds between two writes of the history.
    :param retention: how long history is kept (a :class:`timedelta` or seconds).
    :param prune_interval: seconds between two prunes of the history (by the leader).
    :param buckets: histogram upper bounds, in seconds.
    :param process_metrics: also serve prometheus-client's ``process_*`` (CPU, memory,
        file descriptors) and ``python_*`` (version, garbage collector) metrics of this
        process, registered on this instance's registry.
    :param worker_label: the ``worker`` label of the per-worker metrics. ``"hostname"``
        (default): the worker's host name, stable across restarts, plus ``-N`` for the
        child ``N`` of ``chancy worker start --processes`` (``$CHANCY_PROCESS_INDEX``) and
        ``#2``, ``#3``... for a second, third worker started in one process. ``"id"``:
        the worker's id (a random UUID unless you give ``Worker(worker_id=...)``: then
        every restart starts new series).
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
        process_metrics: bool = True,
        worker_label: Literal["hostname", "id"] = "hostname",
    ) -> None:
        if port is FROM_ENV:
            env = os.environ.get(PORT_ENV, "").strip()
            if env and not env.isdigit():
                raise ConfigurationError(f"{PORT_ENV}={env!r} is not a port number")
            port = int(env) if env else None
        index = os.environ.get(INDEX_ENV, "").strip()
        if port and index:  # a child of `chancy worker start --processes N`: port + n
            if not index.isdigit():
                raise ConfigurationError(f"{INDEX_ENV}={index!r} is not a process index")
            port += int(index)
        if port is not None and not 0 <= port <= 65535:
            raise ConfigurationError(f"port must be from 0 to 65535 or None, not {port!r}")
        seconds = retention.total_seconds() if isinstance(retention, timedelta) else retention
        if min(depth_interval, flush_interval, prune_interval, seconds) <= 0:
            raise ConfigurationError("intervals and retention must be positive")
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ConfigurationError("buckets must be increasing upper bounds, in seconds")
        if worker_label not in WORKER_LABELS:
            raise ConfigurationError(
                f"worker_label must be one of {', '.join(WORKER_LABELS)}, not {worker_label!r}"
            )
        self.worker_label = worker_label
        self.port: int | None = port
        self.host = host
        self.depth_interval = depth_interval
        self.flush_interval = flush_interval
        self.retention = float(seconds)
        self.prune_interval = prune_interval
        self.buckets = tuple(float(b) for b in buckets)
        self.address: tuple[str, int] | None = None
        """``(host, port)`` the endpoint listens on, once it does."""
        self._workers: dict[str, Worker] = {}
        #: The ``worker`` label of each worker of this process, by worker id.
        self._labels: dict[str, str] = {}
        self.registry = CollectorRegistry()
        """This instance's metrics (prometheus-client's process-global registry is not used)."""
        self.completed = Counter(
            "chancy_jobs_completed",
            "Job attempts that ended, by queue, function and the state written.",
            ("queue", "func", "state"),
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "chancy_job_run_seconds",
            "How long job attempts ran.",
            ("queue", "func"),
            buckets=self.buckets,
            registry=self.registry,
        )
        self.wait_seconds = Histogram(
            "chancy_job_wait_seconds",
            "How long due jobs waited for a worker (started_at - scheduled_at).",
            ("queue", "func"),
            buckets=self.buckets,
            registry=self.registry,
        )
        self.leadership_changes = Counter(
            "chancy_leadership_changes",
            "Times a worker of this process became (is_leader=1) or stopped being (0) the leader.",
            ("worker", "is_leader"),
            registry=self.registry,
        )
        self.sample = _Sample()
        """The last read of the database gauges (see :meth:`refresh`)."""
        self.registry.register(_Collector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self._minutes: dict[tuple[datetime, str, str, str], _Minute] = {}
        self._serving = False
        self._refreshing: anyio.Lock | None = None

    # --- hooks ---------------------------------------------------------------------------

    @hookimpl
    def chancy_migrations(self, app: Chancy) -> MigrationSet:
        """The per-minute history table."""
        return load_migrations("metrics", "chancy_plugin_metrics.migrations")

    def label_of(self, worker: Worker) -> str:
        """The ``worker`` label of ``worker`` (see ``worker_label``), fixed at its start."""
        found = self._labels.get(worker.worker_id)
        if found is None:
            found = _worker_label(worker, self.worker_label, set(self._labels.values()))
            self._labels[worker.worker_id] = found
        return found

    @hookimpl
    def chancy_worker_tasks(self, worker: Worker, register: RegisterTask) -> None:
        """Sample queue depths and write the history, in this worker."""
        self.label_of(worker)
        self._workers[worker.worker_id] = worker
        register("metrics.depths", self._sample_depths)
        register("metrics.history", self._write_history)
        register("metrics.prune", self._prune_history, leader_only=True)
        if self.port is not None:
            register("metrics.endpoint", self._serve)

    @hookimpl
    def chancy_leadership_changed(self, worker: Worker, is_leader: bool) -> None:
        """Count the leadership change."""
        self.leadership_changes.labels(self.label_of(worker), "1" if is_leader else "0").inc()

    @hookimpl
    def chancy_job_completed(self, worker: Worker, job: QueuedJob, outcome: Outcome) -> None:
        """Record the attempt's outcome, run time and wait time."""
        self.record(
            job, outcome.run_seconds, state=outcome.state.value, wait_seconds=outcome.wait_seconds
        )

    # --- recording -----------------------------------------------------------------------

    def record(
        self,
        job: QueuedJob,
        run_seconds: float | None = None,
        *,
        state: str | None = None,
        wait_seconds: float | None = None,
    ) -> None:
        """Count one ended attempt of ``job``.

        ``state`` is the state written (default ``job.state``); ``run_seconds``
        is how long it ran, else taken from ``job.started_at`` (0 for a job
        refused before it ran); ``wait_seconds`` defaults to
        ``started_at - scheduled_at``.
        """
        now = datetime.now(UTC)
        started = job.started_at
        if run_seconds is None:
            run_seconds = (now - started).total_seconds() if started else 0.0
        if wait_seconds is None:
            wait_seconds = (started - job.scheduled_at).total_seconds() if started else 0.0
        run_seconds, wait_seconds = max(run_seconds, 0.0), max(wait_seconds, 0.0)
        outcome = state or job.state.value
        key = (job.queue, job.func)
        self.completed.labels(*key, outcome).inc()
        self.run_seconds.labels(*key).observe(run_seconds)
        self.wait_seconds.labels(*key).observe(wait_seconds)
        minute = now.replace(second=0, microsecond=0)
        self._minutes.setdefault((minute, *key, outcome), _Minute()).add(run_seconds, wait_seconds)

    # --- exposition ----------------------------------------------------------------------

    def render(self) -> str:
        """Every metric in the Prometheus text format (what the endpoint serves)."""
        return generate_latest(self.registry).decode("utf-8")

    async def _serve(self, worker: Worker) -> None:
        assert self.port is not None
        while True:
            while self._serving:  # another worker of this process serves; take over if it stops
                await anyio.sleep(1.0)
            self._serving = True
            try:
                await self._serve_once(self.port)
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

    async def _serve_once(self, port: int) -> None:
        # prometheus-client's WSGI app and threading server, in a daemon thread, on this
        # registry only; it reads the last database sample, never the database.
        server, thread = _start_server(self.host, port, self.registry)
        try:
            self.address = (self.host, int(server.server_port))
            log.info("serving metrics on http://%s:%d/metrics", *self.address)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(server.shutdown)
                server.server_close()
                await anyio.to_thread.run_sync(thread.join, 5.0)

    # --- the database gauges -------------------------------------------------------------

    async def refresh(self, app: Chancy) -> None:
        """Read the database gauges: depth by queue and state, oldest waiting job, workers."""

        ids = sorted(self._workers)

        def op() -> Operation:
            rows = yield app.schema.render(q.SELECT_GAUGES), {"worker_ids": ids}
            return rows

        rows: list[tuple[Any, ...]] = await app.execute(op())
        queues = {queue.name for queue in await app.get_all_queues()}
        queues |= {queue for queue, _ in self.sample.depths}
        depths: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        workers = 0
        oldest_heartbeat = 0.0
        heartbeats: dict[str, float] = {}
        for queue, state, count, age in rows:
            if state == "workers":
                workers = int(count)
                oldest_heartbeat = max(float(age or 0.0), 0.0)
                continue
            if state == "heartbeat":  # queue is the worker id here
                heartbeats[queue] = max(float(age), 0.0)
                continue
            queues.add(queue)
            depths[(queue, state)] = int(count)
            if age is not None:
                oldest[queue] = max(oldest.get(queue, 0.0), float(age))
        self.sample = _Sample(
            depths={(qn, s): depths.get((qn, s), 0) for qn in queues for s in _DEPTH_STATES},
            oldest={qn: max(oldest.get(qn, 0.0), 0.0) for qn in queues},
            workers=workers,
            oldest_heartbeat=oldest_heartbeat,
            heartbeats=heartbeats,
            at=time.time(),
        )

    async def refresh_if_stale(self, app: Chancy) -> None:
        """:meth:`refresh` unless the last sample is younger than ``depth_interval``.

        Concurrent callers share one read; a failed read is logged and the last
        sample stays (``chancy_metrics_sampled_timestamp_seconds`` tells its age).
        """
        if self._refreshing is None:
            self._refreshing = anyio.Lock()
        async with self._refreshing:
            if time.time() - self.sample.at < self.depth_interval:
                return
            try:
                await self.refresh(app)
            except _TRANSIENT as exc:
                log.warning("metrics: could not read the database gauges (%s)", exc)

    async def _sample_depths(self, worker: Worker) -> None:
        try:
            while True:
                try:
                    await self.refresh(worker.chancy)
                except _TRANSIENT as exc:
                    log.warning("metrics: could not read the database gauges (%s)", exc)
                await anyio.sleep(self.depth_interval)
        finally:
            self._workers.pop(worker.worker_id, None)
            self._labels.pop(worker.worker_id, None)

    # --- the history ---------------------------------------------------------------------

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
                    bucket=bucket,
                    queue=queue_name,
                    func=func_name,
                    outcome=outcome,
                    jobs=int(jobs),
                    run_seconds_sum=run_sum,
                    run_seconds_max=run_max,
                    wait_seconds_sum=wait_sum,
                    wait_seconds_max=wait_max,
                )
                for (
                    bucket,
                    queue_name,
                    func_name,
                    outcome,
                    jobs,
                    run_sum,
                    run_max,
                    wait_sum,
                    wait_max,
                ) in rows
            ]

        found: list[HistoryRow] = await app.execute(op())
        return found


def metrics_app(plugin: Metrics, chancy: Chancy | None = None) -> MetricsApp:
    """The plugin's registry as an ASGI application, to mount at ``/metrics``.

    It is prometheus-client's ASGI app (text or OpenMetrics format by the
    ``Accept`` header, gzip by ``Accept-Encoding``) on ``plugin.registry``.
    With ``chancy`` given, a scrape first re-reads the database gauges when
    the last read is older than ``plugin.depth_interval``: a process that runs
    no worker (a web app, the dashboard) still serves current queue depths.

    :param plugin: the :class:`Metrics` instance, e.g. ``chancy.plugins.get_plugin("metrics")``.
    :param chancy: the app whose database the gauges are read from.
    """
    if not isinstance(plugin, Metrics):
        raise ConfigurationError(
            f"metrics_app needs the Metrics plugin instance, not {type(plugin).__name__};"
            ' use chancy.plugins.get_plugin("metrics")'
        )
    return MetricsApp(plugin, chancy)


class MetricsApp:
    """The ASGI application :func:`metrics_app` returns.

    An object rather than a function, so that Starlette's ``Route("/metrics", app)``
    treats it as an ASGI app (a plain function would be taken for a request handler).
    """

    def __init__(self, plugin: Metrics, chancy: Chancy | None) -> None:
        self.plugin = plugin
        self.chancy = chancy
        self._inner = make_asgi_app(plugin.registry)

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        """Answer one ASGI connection (``http``; ``lifespan`` is acknowledged)."""
        if scope["type"] == "lifespan":  # served alone by an ASGI server: nothing to set up
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            raise ValueError(f"metrics_app serves HTTP only, not {scope['type']!r}")
        if self.chancy is not None:
            await self.plugin.refresh_if_stale(self.chancy)
        await self._inner(scope, receive, send)


def _worker_label(worker: Worker, kind: str, taken: Iterable[str]) -> str:
    """The ``worker`` label of a worker starting in this process (see ``worker_label``)."""
    if kind == "id":
        return worker.worker_id
    host = next(
        (tag.partition(":")[2] for tag in sorted(worker.tags) if tag.startswith("hostname:")),
        "",
    )
    label = host or socket.gethostname()
    index = os.environ.get(INDEX_ENV, "").strip()
    if index:
        label = f"{label}-{index}"
    used = set(taken)
    found, n = label, 1
    while found in used:
        n += 1
        found = f"{label}#{n}"
    return found


class _QuietHandler(WSGIRequestHandler):
    """Logs no request line (as prometheus-client's own server)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing."""


def endpoint_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """The standalone endpoint's WSGI application: prometheus-client's on ``/metrics``
    (text or OpenMetrics by ``Accept``, gzip by ``Accept-Encoding``), ``200 ok`` on
    ``/healthz``, ``404`` on any other path."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            status, body = "200 OK", b"ok\n"
        else:
            status, body = "404 Not Found", b"not found: the metrics are on /metrics\n"
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


def _start_server(
    host: str, port: int, registry: CollectorRegistry
) -> tuple[WSGIServer, threading.Thread]:
    """Serve :func:`endpoint_app` on ``host:port`` in a daemon thread (IPv4 or IPv6 by the
    address, as ``prometheus_client.start_http_server``)."""

    class Server(ThreadingWSGIServer):
        pass

    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    Server.address_family = family
    server = make_server(
        str(sockaddr[0]), port, endpoint_app(registry), Server, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="chancy-metrics", daemon=True)
    thread.start()
    return server, thread
