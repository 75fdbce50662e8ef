"""Run jobs, scrape the Prometheus endpoint over real HTTP, read the history back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from chancy_plugin_metrics import PORT_ENV, Metrics, metrics_app
from prometheus_client.parser import text_string_to_metric_families

from chancy_core import Chancy, Job, Queue, QueuedJob, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def succeed(x: int) -> int:
    await anyio.sleep(0.02)
    return x


async def fail() -> None:
    raise RuntimeError("failing on purpose")


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def parse(text: str) -> Samples:
    """Every sample of a text exposition, parsed by prometheus-client's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def scrape_asgi(app: Any) -> tuple[int, dict[str, str], str]:
    """One GET through an ASGI application, as a server would call it."""
    sent: list[dict[str, Any]] = []
    request = iter([{"type": "http.request", "body": b"", "more_body": False}])

    async def receive() -> dict[str, Any]:
        return next(request, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/metrics",
        "query_string": b"",
        "headers": [(b"accept", b"text/plain")],
    }
    await app(scope, receive, send)
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"].decode()


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_scraped_counts_match_the_jobs_just_run(database: str, run_worker: RunWorker) -> None:
    metrics = Metrics(port=0, depth_interval=0.05, flush_interval=0.1)
    async with Chancy(database, plugins=[metrics]) as app:
        assert app.plugins.get_plugin("metrics") is metrics
        await app.declare(Queue("default", concurrency=5))
        await app.declare(Queue("parked", tags=frozenset({"nobody"})))  # no worker serves it
        with anyio.fail_after(30):
            async with run_worker(app) as worker:
                ok = [Job.from_func(succeed, kwargs={"x": n}) for n in range(3)]
                bad = [Job.from_func(fail) for _ in range(2)]
                refs = await app.push_many([*ok, *bad])
                await app.push_many([Job.from_func(succeed, queue="parked", kwargs={"x": 0})] * 2)
                done = [await app.wait_for_job(ref, timeout=10) for ref in refs]
                while (
                    metrics.address is None
                    or value(
                        parse(metrics.render()),
                        "chancy_queue_depth",
                        queue="parked",
                        state="pending",
                    )
                    != 2
                ):
                    await anyio.sleep(0.05)
                await anyio.sleep(0.1)  # the parked jobs' age grows past 0.1 s
                host, port = metrics.address
                status, content_type, text = await anyio.to_thread.run_sync(
                    fetch, f"http://{host}:{port}/metrics"
                )
            history = await Metrics.history(app)
    assert [j.state.value for j in done] == ["succeeded"] * 3 + ["failed"] * 2
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    samples = parse(text)
    ok_func, bad_func = ok[0].func, bad[0].func
    completed = "chancy_jobs_completed_total"
    assert value(samples, completed, queue="default", func=ok_func, state="succeeded") == 3
    assert value(samples, completed, queue="default", func=bad_func, state="failed") == 2
    assert (
        completed,
        frozenset({("queue", "default"), ("func", ok_func), ("state", "failed")}),
    ) not in samples
    labels = {"queue": "default", "func": ok_func}
    assert value(samples, "chancy_job_run_seconds_count", **labels) == 3
    assert value(samples, "chancy_job_run_seconds_bucket", **labels, le="+Inf") == 3
    assert value(samples, "chancy_job_run_seconds_bucket", **labels, le="0.01") == 0  # slept 20 ms
    assert value(samples, "chancy_job_run_seconds_bucket", **labels, le="5.0") == 3
    assert 0.06 <= value(samples, "chancy_job_run_seconds_sum", **labels) < 5
    assert value(samples, "chancy_job_wait_seconds_count", **labels) == 3
    assert value(samples, "chancy_job_wait_seconds_count", queue="default", func=bad_func) == 2
    assert value(samples, "chancy_queue_depth", queue="parked", state="pending") == 2
    assert value(samples, "chancy_queue_depth", queue="default", state="pending") == 0
    assert value(samples, "chancy_queue_depth", queue="default", state="running") == 0
    assert (
        "chancy_queue_depth",
        frozenset({("queue", "default"), ("state", "retrying")}),
    ) in samples
    assert 0.1 <= value(samples, "chancy_queue_oldest_job_age_seconds", queue="parked") < 30
    assert value(samples, "chancy_queue_oldest_job_age_seconds", queue="default") == 0
    assert value(samples, "chancy_workers") == 1
    # The worker label is the host's name (stable across restarts), not the random id.
    assert value(samples, "chancy_worker_running_jobs", worker=socket.gethostname()) == 0
    assert worker.worker_id not in text
    assert (
        0
        < datetime.now(UTC).timestamp() - value(samples, "chancy_metrics_sampled_timestamp_seconds")
        < 30
    )
    # The history: written by the worker (periodically and when it stopped).
    rows = {(r.func, r.outcome): r for r in history}
    assert rows[(ok_func, "succeeded")].jobs == 3
    assert rows[(bad_func, "failed")].jobs == 2
    assert rows[(ok_func, "succeeded")].run_seconds_max >= 0.02
    assert all(r.bucket.second == 0 and r.queue == "default" for r in history)


async def test_the_asgi_app_reads_the_database_gauges_without_a_worker(chancy: Chancy) -> None:
    metrics = Metrics(port=None, depth_interval=60)
    app = metrics_app(metrics, chancy)
    await chancy.declare(Queue("mail"))
    await chancy.push_many([Job.from_func(succeed, queue="mail", kwargs={"x": 1})] * 3)
    status, headers, text = await scrape_asgi(app)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    samples = parse(text)
    assert value(samples, "chancy_queue_depth", queue="mail", state="pending") == 3
    assert value(samples, "chancy_queue_depth", queue="mail", state="running") == 0
    assert value(samples, "chancy_workers") == 0
    # Younger than depth_interval: the next scrape serves the same sample, no query.
    await chancy.push(Job.from_func(succeed, queue="mail", kwargs={"x": 2}))
    again = parse((await scrape_asgi(app))[2])
    assert value(again, "chancy_queue_depth", queue="mail", state="pending") == 3
    metrics.depth_interval = 0.01
    await anyio.sleep(0.02)
    fresh = parse((await scrape_asgi(app))[2])
    assert value(fresh, "chancy_queue_depth", queue="mail", state="pending") == 4
    # Without an app the endpoint serves what it has, never reading the database.
    alone = parse((await scrape_asgi(metrics_app(Metrics(port=None))))[2])
    assert ("chancy_queue_depth", frozenset({("queue", "mail"), ("state", "pending")})) not in alone


async def test_two_plugin_instances_never_share_a_metric() -> None:
    one, two = Metrics(port=None), Metrics(port=None)
    job = QueuedJob(
        id="00000000-0000-0000-0000-000000000002",
        func="app.tasks.go",
        state=QueuedJob.State.SUCCEEDED,
        started_at=datetime.now(UTC),
    )
    one.record(job, 0.1)
    assert (
        value(
            parse(one.render()),
            "chancy_jobs_completed_total",
            queue="default",
            func="app.tasks.go",
            state="succeeded",
        )
        == 1
    )
    assert "app.tasks.go" not in two.render()


async def test_history_is_summed_across_flushes_and_pruned(chancy: Chancy) -> None:
    metrics = Metrics(port=None, retention=timedelta(minutes=30))
    old = datetime.now(UTC) - timedelta(hours=2)
    job = Job.from_func(succeed, kwargs={"x": 1})

    def ended(state: QueuedJob.State) -> QueuedJob:
        return QueuedJob(
            **{**Job.unpack(job.pack()).__dict__},
            id="00000000-0000-0000-0000-000000000001",
            state=state,
            started_at=job.scheduled_at + timedelta(seconds=2),
        )

    metrics.record(ended(QueuedJob.State.SUCCEEDED), 0.5)
    assert await metrics.flush(chancy) == 1
    metrics.record(ended(QueuedJob.State.SUCCEEDED), 1.5)
    metrics.record(ended(QueuedJob.State.FAILED), 0.1)
    assert await metrics.flush(chancy) == 2
    assert await metrics.flush(chancy) == 0
    rows = {r.outcome: r for r in await Metrics.history(chancy, func=job.func)}
    assert rows["succeeded"].jobs == 2
    assert rows["succeeded"].run_seconds_sum == pytest.approx(2.0)
    assert rows["succeeded"].run_seconds_max == pytest.approx(1.5)
    assert rows["succeeded"].wait_seconds_max == pytest.approx(2.0)
    assert rows["failed"].jobs == 1
    async with chancy.pool.connection() as conn:
        await conn.execute(
            chancy.schema.render(
                "UPDATE {metrics_minutes} SET bucket = %(old)s WHERE outcome = 'failed'"
            ),
            {"old": old.replace(second=0, microsecond=0)},
        )
    await metrics.prune(chancy)
    remaining = await Metrics.history(chancy, since=old - timedelta(hours=1))
    assert [r.outcome for r in remaining] == ["succeeded"]


async def test_metrics_is_discovered_through_its_entry_point(chancy: Chancy) -> None:
    found = chancy.plugins.get_plugin("metrics")
    assert isinstance(found, Metrics)
    assert found.port is None  # no $CHANCY_METRICS_PORT: nothing is served by default
    assert await Metrics.history(chancy) == []  # its table exists: its migration ran


def two_free_ports() -> int:
    """A port ``p`` such that ``p`` and ``p + 1`` are both free (now)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            base = int(first.getsockname()[1])
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", base + 1))
                except OSError:
                    continue
                return base
    raise AssertionError("no two adjacent free ports")


async def test_each_child_of_worker_start_processes_serves_its_own_port(database: str) -> None:
    base = two_free_ports()
    env = {**os.environ, PORT_ENV: str(base)}
    command = [sys.executable, "-m", "chancy_core.cli", "--dsn", database, "worker", "start"]
    command += ["--processes", "2", "--queue", "default", "--declare", "--shutdown-timeout", "2"]
    parent = subprocess.Popen(command, env=env)
    try:
        workers: dict[int, set[str]] = {}
        with anyio.fail_after(60):
            for port in (base, base + 1):
                while True:
                    try:
                        status, _, text = await anyio.to_thread.run_sync(
                            fetch, f"http://127.0.0.1:{port}/metrics"
                        )
                    except OSError:
                        await anyio.sleep(0.2)
                        continue
                    found = {
                        dict(labels)["worker"]
                        for name, labels in parse(text)
                        if name == "chancy_worker_running_jobs"
                    }
                    if status == 200 and found:
                        workers[port] = found
                        break
                    await anyio.sleep(0.2)
    finally:
        parent.send_signal(signal.SIGTERM)
        code = await anyio.to_thread.run_sync(lambda: parent.wait(30))
    assert code == 0
    (first,), (second,) = workers[base], workers[base + 1]
    # Two processes, each scraped on its own port, labelled by host and process index.
    host = socket.gethostname()
    assert (first, second) == (f"{host}-0", f"{host}-1")


async def test_worker_labels_are_stable_and_worker_gauges_follow_the_worker(
    database: str, run_worker: RunWorker
) -> None:
    host = socket.gethostname()
    seen: list[Samples] = []
    async with Chancy(database, autoload_plugins=False) as app:
        await app.declare(Queue("default"))
        for _ in range(2):  # a worker process restarted: a new worker id, the same label
            metrics = Metrics(port=None, depth_interval=0.05)
            async with Chancy(database, autoload_plugins=False, plugins=[metrics]) as one:
                with anyio.fail_after(30):
                    async with run_worker(one) as worker:
                        while worker.worker_id not in metrics.sample.heartbeats:
                            await anyio.sleep(0.05)
                        seen.append(parse(metrics.render()))
                        # Leadership: every worker leads itself without a leadership plugin;
                        # set_leader(False) (what such a plugin calls) shows at once.
                        await worker.set_leader(False)
                        seen.append(parse(metrics.render()))
    first, stepped_down, again, _ = seen
    for samples in (first, again):
        assert value(samples, "chancy_worker_running_jobs", worker=host) == 0
        assert value(samples, "chancy_worker_is_leader", worker=host) == 1
        assert 0 <= value(samples, "chancy_worker_heartbeat_age_seconds", worker=host) < 30
        assert 0 <= value(samples, "chancy_workers_oldest_heartbeat_age_seconds") < 30
        assert value(samples, "chancy_leadership_changes_total", worker=host, is_leader="1") == 1
        assert {dict(labels).get("worker") for _, labels in samples} <= {host, None}
    assert value(stepped_down, "chancy_worker_is_leader", worker=host) == 0
    assert value(stepped_down, "chancy_leadership_changes_total", worker=host, is_leader="0") == 1


async def test_two_workers_of_one_process_and_the_id_label(
    database: str, run_worker: RunWorker
) -> None:
    host = socket.gethostname()
    by_host, by_id = Metrics(port=None), Metrics(port=None, worker_label="id")
    async with (
        Chancy(database, autoload_plugins=False, plugins=[by_host]) as app,
        Chancy(database, autoload_plugins=False, plugins=[by_id]) as other,
    ):
        await app.declare(Queue("default"))
        with anyio.fail_after(30):
            async with run_worker(app), run_worker(app), run_worker(other) as third:
                hosts = parse(by_host.render())
                ids = parse(by_id.render())
    running = "chancy_worker_running_jobs"
    labels = {dict(labels)["worker"] for name, labels in hosts if name == running}
    assert labels == {host, f"{host}#2"}  # a second worker in one process: #2
    assert {dict(labels)["worker"] for name, labels in ids if name == running} == {third.worker_id}
