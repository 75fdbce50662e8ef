"""Run jobs, scrape the Prometheus endpoint over real HTTP, read the history back."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from chancy_plugin_metrics import Metrics

from chancy_core import Chancy, Job, Queue, QueuedJob, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$'
)


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
    """Every sample of a text exposition, checking each line's syntax."""
    samples: Samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        match = _LINE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
        samples[(match[1], labels)] = float(match[3])
    return samples


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
            async with run_worker(app):
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
                host, port = metrics.address
                status, content_type, text = await anyio.to_thread.run_sync(
                    fetch, f"http://{host}:{port}/metrics"
                )
                missing = await anyio.to_thread.run_sync(fetch, f"http://{host}:{port}/nope")
            history = await Metrics.history(app)
    assert [j.state.value for j in done] == ["succeeded"] * 3 + ["failed"] * 2
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert missing[0] == 404
    samples = parse(text)
    ok_func, bad_func = ok[0].func, bad[0].func
    assert (
        value(samples, "chancy_jobs_total", queue="default", func=ok_func, outcome="succeeded") == 3
    )
    assert (
        value(samples, "chancy_jobs_total", queue="default", func=bad_func, outcome="failed") == 2
    )
    assert value(samples, "chancy_jobs_total", queue="default", func=ok_func, outcome="failed") == 0
    labels = {"queue": "default", "func": ok_func}
    assert value(samples, "chancy_job_run_seconds_count", **labels) == 3
    assert value(samples, "chancy_job_run_seconds_bucket", **labels, le="+Inf") == 3
    assert value(samples, "chancy_job_run_seconds_bucket", **labels, le="0.01") == 0  # slept 20 ms
    assert value(samples, "chancy_job_run_seconds_bucket", **labels, le="5") == 3
    assert 0.06 <= value(samples, "chancy_job_run_seconds_sum", **labels) < 5
    assert value(samples, "chancy_job_wait_seconds_count", **labels) == 3
    assert value(samples, "chancy_job_wait_seconds_count", queue="default", func=bad_func) == 2
    assert value(samples, "chancy_queue_depth", queue="parked", state="pending") == 2
    assert value(samples, "chancy_queue_depth", queue="default", state="pending") == 0
    assert (
        "chancy_queue_depth",
        frozenset({("queue", "default"), ("state", "retrying")}),
    ) in samples
    # The history: written by the worker (periodically and when it stopped).
    rows = {(r.func, r.outcome): r for r in history}
    assert rows[(ok_func, "succeeded")].jobs == 3
    assert rows[(bad_func, "failed")].jobs == 2
    assert rows[(ok_func, "succeeded")].run_seconds_max >= 0.02
    assert all(r.bucket.second == 0 and r.queue == "default" for r in history)


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
