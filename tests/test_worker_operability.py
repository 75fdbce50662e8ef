"""What a person running workers sees: one log line per failure, retry, cancellation; a
start-up summary; a message while the shutdown waits; the recovery warning; and a worker
id that is alive cannot be taken twice, while a dead one's can (real workers, real
database)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import anyio
import pytest
import test_worker_support as s
from psycopg.conninfo import make_conninfo

from chancy_core import Chancy, Job, Queue
from chancy_core.errors import WorkerError
from chancy_core.job import QueuedJob
from chancy_core.worker import Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]

WORKER_LOG = "chancy_core.worker"


def _messages(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


class Configured:
    """A plugin with options and no repr of its own."""

    def __init__(self) -> None:
        self.backoff = 7.0
        self.label = "x"


class Described:
    """A plugin that describes itself, and recovers dead workers' jobs."""

    name = "described"
    recovers_dead_workers = True

    def describe(self) -> str:
        return "Described(port=9477)"


async def test_failures_retries_and_cancellations_are_logged_at_info(
    chancy: Chancy, run_worker, caplog
):
    caplog.set_level(logging.INFO, logger="chancy_core")
    with anyio.fail_after(30):
        await chancy.declare(Queue("q", concurrency=2, polling_interval=0.2))
        async with run_worker(chancy):
            failing = await chancy.push(
                Job.from_func(s.fail_until, queue="q", kwargs={"attempt": 99}, max_attempts=2)
            )
            slow = await chancy.push(Job.from_func(s.counted, queue="q", kwargs={"seconds": 30}))
            await s.wait_all(chancy, [slow], "running", timeout=10)
            await chancy.cancel_job(slow)
            await s.wait_all(chancy, [failing, slow], "failed", timeout=20)
    func = "test_worker_support.fail_until"
    lines = _messages(caplog)
    retried = [m for m in lines if m.startswith(f"job {failing} ({func}) attempt 1 of 2 failed")]
    assert len(retried) == 1 and "retrying at once" in retried[0]
    failed = [m for m in lines if m.startswith(f"job {failing} ({func}) failed on attempt 2 of 2")]
    assert len(failed) == 1
    cancelled = [m for m in lines if m.startswith(f"job {slow} (test_worker_support.counted)")]
    assert cancelled == [f"job {slow} (test_worker_support.counted) was cancelled on attempt 1"]
    record = next(r for r in caplog.records if r.getMessage() == failed[0])
    assert record.job_id == str(failing) and record.attempt == 2  # type: ignore[attr-defined]


async def test_start_up_summary_names_queues_plugins_options_and_masks_the_password(
    database: str, run_worker, caplog
):
    caplog.set_level(logging.INFO, logger="chancy_core")
    async with Chancy(database, plugins=[Configured(), Described()]) as app:
        await app.declare(Queue("cpu", executor="process", concurrency=2))
        await app.declare(Queue("emails", concurrency=20))
        async with run_worker(app, worker_id="summary-w1"):
            pass
    summary = next(m for m in _messages(caplog) if m.startswith("worker summary-w1 started"))
    assert "  queue cpu: process executor, concurrency 2, active" in summary
    assert "  queue emails: async executor, concurrency 20, active" in summary
    assert "  plugin configured: backoff=7.0, label='x'" in summary
    assert "  plugin described: Described(port=9477)" in summary
    assert "database " in summary
    # Described says it recovers dead workers' jobs: no warning.
    assert not [m for m in _messages(caplog) if "no plugin recovers" in m]


async def test_the_summary_masks_the_dsn_password(database: str, run_worker, caplog):
    caplog.set_level(logging.INFO, logger="chancy_core")
    # The test server trusts its clients: the password is accepted and ignored.
    dsn = make_conninfo(database, password="hunter2")
    async with Chancy(dsn) as app, run_worker(app, worker_id="masked"):
        pass
    summary = next(m for m in _messages(caplog) if m.startswith("worker masked started"))
    assert "password=***" in summary
    assert "hunter2" not in "\n".join(_messages(caplog, logging.DEBUG))


async def test_a_worker_without_a_recovery_plugin_warns_at_start(
    chancy: Chancy, run_worker, caplog
):
    caplog.set_level(logging.INFO, logger="chancy_core")
    async with run_worker(chancy):
        pass
    warnings = [m for m in _messages(caplog, logging.WARNING) if "no plugin recovers" in m]
    assert len(warnings) == 1
    assert "chancy-plugin-recovery" in warnings[0] and "stay 'running'" in warnings[0]


async def test_shutdown_says_how_many_jobs_it_waits_for(chancy: Chancy, run_worker, caplog):
    caplog.set_level(logging.INFO, logger="chancy_core")
    with anyio.fail_after(30):
        await chancy.declare(Queue("q", concurrency=2, polling_interval=0.2))
        async with run_worker(chancy, worker_id="draining", shutdown_timeout=0.5):
            refs = await chancy.push_many(
                [Job.from_func(s.counted, queue="q", kwargs={"seconds": 20}) for _ in range(2)]
            )
            await s.wait_all(chancy, refs, "running", timeout=10)
            while s.GAUGE.now < 2:  # claimed is not yet started: both jobs must be running
                await anyio.sleep(0.01)
    waiting = [m for m in _messages(caplog) if m.startswith("worker draining is shutting down")]
    assert waiting == [
        "worker draining is shutting down: waiting up to 0.5s for 2 running jobs to finish"
        " (a second signal stops them at once)"
    ]


async def test_claims_and_completions_are_logged_at_debug(chancy: Chancy, run_worker, caplog):
    caplog.set_level(logging.DEBUG, logger="chancy_core")
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", polling_interval=0.2))
        async with run_worker(chancy):
            ref = await chancy.push(Job.from_func(s.noop, queue="q"))
            await chancy.wait_for_job(ref, timeout=15, interval=0.2)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("claimed 1 of up to") and str(ref) in m for m in debug)
    assert any(m.startswith("wrote 1 outcomes") and f"{ref} succeeded" in m for m in debug)
    assert any(m.startswith(f"job {ref} (test_worker_support.noop) succeeded") for m in debug)


async def test_a_second_worker_with_a_live_id_is_refused(chancy: Chancy, run_worker):
    with anyio.fail_after(20):
        async with run_worker(chancy, worker_id="twin"):
            with pytest.raises(WorkerError) as refused:
                async with Worker(chancy, worker_id="twin", shutdown_timeout=1):
                    pytest.fail("a second worker with a live id started")
            rows = await chancy.execute(_workers(chancy))
    message = str(refused.value)
    assert "a worker with id 'twin' is alive (pid" in message
    assert "give this worker another worker_id" in message
    assert len(rows) == 1  # the live worker's row is untouched


async def test_a_live_id_held_by_another_process_is_refused(chancy: Chancy, database: str):
    """A worker of another process (alive, heartbeat fresh) holds the id."""
    code = (
        "import anyio, sys\n"
        "from chancy_core import Chancy\n"
        "from chancy_core.worker import Worker\n"
        "async def main():\n"
        "    async with Chancy(sys.argv[1]) as app, Worker(app, worker_id='elsewhere',"
        " heartbeat_interval=0.5):\n"
        "        print('up', flush=True)\n"
        "        await anyio.sleep(60)\n"
        "anyio.run(main)\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code, database], stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout is not None
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(other.stdout.readline)
        assert line.strip() == "up"
        with pytest.raises(WorkerError, match=rf"pid {other.pid} on "):
            async with Worker(chancy, worker_id="elsewhere"):
                pass
    finally:
        other.kill()
        other.wait()
        if other.stdout is not None:
            other.stdout.close()
    # Its process is gone (this host can tell): the id is taken over at once.
    async with Worker(chancy, worker_id="elsewhere", shutdown_timeout=1):
        rows = await chancy.execute(_workers(chancy))
    assert [(r[0], r[2]) for r in rows] == [("elsewhere", os.getpid())]


async def test_a_dead_workers_id_is_taken_over(chancy: Chancy, caplog):
    caplog.set_level(logging.INFO, logger="chancy_core")
    # A row left by a worker of another host that stopped beating 60 s ago.
    await chancy.execute(_insert_worker(chancy, "gone-w", "other-host", 4242, 60))
    with anyio.fail_after(20):
        async with Worker(chancy, worker_id="gone-w", shutdown_timeout=1) as worker:
            rows = await chancy.execute(_workers(chancy))
            assert [(r[0], r[1]) for r in rows] == [("gone-w", worker.hostname)]
    taken = [m for m in _messages(caplog, logging.WARNING) if "taking over the id" in m]
    assert len(taken) == 1 and "pid 4242 on other-host" in taken[0]
    # A fresh row of another host is a live worker.
    await chancy.execute(_insert_worker(chancy, "live-w", "other-host", 4242, 0))
    with pytest.raises(WorkerError, match="pid 4242 on other-host"):
        async with Worker(chancy, worker_id="live-w"):
            pass


def _workers(app: Chancy):
    rows = yield app.schema.render("SELECT worker_id, hostname, pid FROM {workers}"), {}
    return rows


def _insert_worker(app: Chancy, worker_id: str, host: str, pid: int, age: float):
    yield (
        app.schema.render(
            "INSERT INTO {workers} (worker_id, hostname, pid, tags, queues, last_seen)"
            " VALUES (%(id)s, %(host)s, %(pid)s, '{{}}', '{{}}',"
            " now() - make_interval(secs => %(age)s))"
        ),
        {"id": worker_id, "host": host, "pid": pid, "age": age},
    )


async def test_job_state_is_unchanged_by_these_logs(chancy: Chancy, run_worker):
    """The summary and the logs do not change what runs: a job still succeeds."""
    with anyio.fail_after(20):
        await chancy.declare(Queue("q", polling_interval=0.2))
        async with run_worker(chancy):
            ref = await chancy.push(Job.from_func(s.async_add, queue="q", kwargs={"a": 1, "b": 2}))
            done = await chancy.wait_for_job(ref, timeout=15, interval=0.2)
    assert done.state is QueuedJob.State.SUCCEEDED and done.result == 3


def test_plugin_options_shows_options_not_internal_state():
    import random
    from datetime import timedelta

    from chancy_core.plugins import plugin_options

    class Plugin:
        def __init__(self) -> None:
            self.interval = 2.5
            self.retention = {"failed": timedelta(days=2)}
            self.policy = {"backoff": 7.0, "retry_on": ["OSError"]}
            self.rng = random.Random(1)  # state, not an option
            self._private = 1

        def describe(self):  # another protocol's describe (a prometheus collector's)
            return iter(())

    text = plugin_options(Plugin())
    assert text == (
        "interval=2.5, retention={'failed': datetime.timedelta(days=2)},"
        " policy={'backoff': 7.0, 'retry_on': ['OSError']}"
    )
