"""7. Network faults that do not reset anything: dead paths and half-open connections.

Everything goes through :class:`chaos.netproxy.NetProxy` (a loopback proxy that stops
moving bytes without closing sockets), in front of the suite's own server:

* the app alone: ``push`` / ``sync_push`` / ``wait_for_job`` on a frozen path give up
  within ``call_timeout`` with ``DatabaseUnavailableError``, and work again on new
  connections;
* a worker whose whole path is dead for a while, then restored: nothing lost, nothing
  run twice, work resumes at once;
* a worker whose open connections freeze for ever while new ones work (failover, NAT
  state lost): it goes on (passes since the worker package was merged);
* a worker whose listener alone freezes: the listener's ping (a NOTIFY on its own channel
  every heartbeat) does not come back, so the worker replaces it (issue 10, round 2).

Job executions are recorded on direct connections (not through the proxy), so the
fault only hits the worker's and the app's own traffic.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from psycopg.conninfo import conninfo_to_dict

from chancy_core import Chancy, Job, Queue
from chancy_core.errors import DatabaseUnavailableError
from chaos import harness as h
from chaos.netproxy import NetProxy

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.slow]

NAME = "7. network faults"
CALL_TIMEOUT = 2.0
# What a loaded 2-core machine adds to a bound: scheduling, the pool's own timeouts.
SLACK = 3.0


def proxy_for(dsn: str) -> tuple[NetProxy, str]:
    info = conninfo_to_dict(dsn)
    proxy = NetProxy(str(info.get("host", "127.0.0.1")), int(info.get("port", 5432))).start()
    return proxy, proxy.dsn(dsn)


def a_job(seconds: float = 0.05, queue: str = "nf_async") -> Job:
    return Job(func="chaos.jobs.tracked", queue=queue, kwargs={"seconds": seconds})


# --- the app alone -----------------------------------------------------------------------


async def test_push_and_wait_on_a_frozen_path_give_up_in_time(database, report):
    proxy, dsn = proxy_for(database)
    try:
        async with Chancy(
            dsn, autoload_plugins=False, call_timeout=CALL_TIMEOUT, connect_timeout=2
        ) as app:
            await app.declare(Queue("nf_async"))
            ref = await app.push(a_job())  # a warm pool
            figures: dict[str, float] = {}

            # The whole path dead (existing and new connections): push gives up in time.
            proxy.hole()
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailableError):
                await app.push(a_job())
            figures["push, dead path"] = time.monotonic() - began
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailableError):
                await app.wait_for_job(ref, timeout=3.0)
            figures["wait_for_job(timeout=3), dead path"] = time.monotonic() - began
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailableError):
                await anyio.to_thread.run_sync(lambda: app.sync_push(a_job()))
            figures["sync_push, dead path"] = time.monotonic() - began
            proxy.release()
            await app.push(a_job())  # works again once the path is back

            # Existing connections frozen for ever, new ones fine: each frozen pooled
            # connection costs one call its deadline (then it is closed), and the calls
            # after them work on new connections.
            await app.push(a_job())
            frozen = len(proxy.hole(proxy.connections()))  # the pool's idle connections
            assert frozen >= 1
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailableError):
                await app.push(a_job())
            figures["push, frozen connection"] = time.monotonic() - began
            for _ in range(frozen):  # the other frozen ones, if the pool hands them out
                began = time.monotonic()
                try:
                    await app.push(a_job())
                    break
                except DatabaseUnavailableError:
                    assert time.monotonic() - began < CALL_TIMEOUT + SLACK
            else:
                raise AssertionError(f"no push worked after {frozen} frozen connections")
            figures["next push, on a new connection"] = time.monotonic() - began
    finally:
        proxy.stop()
    for what, took in figures.items():
        bound = 3.0 + SLACK if "wait_for_job" in what else CALL_TIMEOUT + SLACK
        report.add(NAME, f"{what} (s)", took, took < bound)
    assert figures["push, dead path"] < CALL_TIMEOUT + SLACK
    assert figures["wait_for_job(timeout=3), dead path"] < 3.0 + SLACK
    assert figures["sync_push, dead path"] < CALL_TIMEOUT + SLACK
    assert figures["push, frozen connection"] < CALL_TIMEOUT + SLACK
    assert figures["next push, on a new connection"] < SLACK


# --- a worker ------------------------------------------------------------------------------


def start_worker(database: str, dsn: str, worker_id: str, tmp_path: Path, **options: Any) -> Any:
    config = h.worker_config(
        dsn,
        worker_id,
        heartbeat_interval=0.5,
        shutdown_timeout=5.0,
        log_level="INFO",
        app={"call_timeout": CALL_TIMEOUT},
        **options,
    )
    config["jobs_dsn"] = database  # executions are recorded directly, not through the proxy
    return h.WorkerProcess(config, tmp_path)


async def push_for(app: Chancy, seconds: float, every: float = 0.1) -> int:
    """Push a few jobs every ``every`` seconds, directly; returns how many."""
    pushed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await app.push_many([a_job(0.02) for _ in range(4)])
        pushed += 4
        await anyio.sleep(every)
    return pushed


LOG_TIME = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d\d\d) ", re.MULTILINE)


async def finish_and_check(
    database: str, workers: list[Any], pushed: int, drain: float
) -> tuple[h.Analysis, list[int | None]]:
    logs = lambda: "\n".join(w.tail(3000) for w in workers)  # noqa: E731
    await h.wait_until(
        lambda: h.states(database),
        lambda found: found.get("succeeded", 0) + found.get("failed", 0) == pushed,
        drain,
        f"every job to finish (worker logs: {logs()})",
        every=0.25,
    )
    codes = await h.stop_workers(workers)
    result = await h.analyze(database)
    assert not result.problems(), (result.problems(), logs())
    assert result.rerun_jobs == 0, logs()
    return result, codes


async def test_a_dead_path_then_restored_loses_nothing_and_runs_nothing_twice(
    database, mode, report, fleet, tmp_path
):
    outage = mode.pick(30.0, 8.0)
    proxy, dsn = proxy_for(database)
    try:
        async with Chancy(database, autoload_plugins=False) as app:
            await app.declare(Queue("nf_async", concurrency=10, polling_interval=0.5))
            worker = start_worker(
                database,
                dsn,
                "dead",
                tmp_path,
                # Self-fencing (half of worker_timeout) must not fire during the outage.
                recovery={"interval": 1.0, "worker_timeout": 2 * outage + 30.0},
            )
            fleet.append(worker)
            await h.wait_registered(database, [worker.worker_id])
            pushed = await push_for(app, 2.0)
            proxy.hole()
            pushed += await push_for(app, outage)
            restored = time.monotonic()
            proxy.release()
            pushed += await push_for(app, 2.0)
            first_start = await h.wait_until(
                lambda: h.scalar(
                    database,
                    "SELECT extract(epoch FROM clock_timestamp() - min(started_at))::float8"
                    " FROM chaos_executions WHERE started_at > clock_timestamp()"
                    " - make_interval(secs => %s)",
                    (time.monotonic() - restored,),
                ),
                lambda v: v is not None,
                30,
                "a job to start after the restore",
            )
            resumed = (time.monotonic() - restored) - first_start
            result, codes = await finish_and_check(database, [worker], pushed, 90)
    finally:
        proxy.stop()
    report.add(NAME, f"dead path {outage:.0f} s: jobs / run twice", f"{pushed} / 0", True)
    report.add(NAME, "dead path: first job start after restore (s)", resumed, resumed < 5.0)
    report.add(NAME, "dead path: worker exit code", codes, codes == [0])
    assert result.states == {"succeeded": pushed}
    assert resumed < 5.0, worker.tail()
    assert codes == [0], worker.tail()


async def heartbeat_age(database: str, worker_id: str) -> float:
    age = await h.scalar(
        database,
        "SELECT extract(epoch FROM now() - last_seen)::float8 FROM chancy_workers"
        " WHERE worker_id = %s",
        (worker_id,),
    )
    return float("inf") if age is None else float(age)


async def test_frozen_connections_are_given_up_and_the_worker_goes_on(
    database, mode, report, fleet, tmp_path
):
    """Every open connection of the worker freezes for ever (no reset), new ones work:
    within a bound the worker gives the frozen ones up (heartbeat, outcome writer, claims,
    listener, recovery), writes every outcome once and stops with exit code 0."""
    frozen_for = mode.pick(40.0, 12.0)
    proxy, dsn = proxy_for(database)
    try:
        async with Chancy(database, autoload_plugins=False) as app:
            await app.declare(Queue("nf_async", concurrency=10, polling_interval=0.5))
            worker = start_worker(
                database,
                dsn,
                "frozen",
                tmp_path,
                recovery={"interval": 1.0, "worker_timeout": 60.0},
            )
            fleet.append(worker)
            await h.wait_registered(database, [worker.worker_id])
            pushed = await push_for(app, 2.0)
            proxy.hole(proxy.connections())
            frozen_at = time.monotonic()
            worst_age = 0.0
            end = frozen_at + frozen_for
            while time.monotonic() < end:
                pushed += await push_for(app, 1.0)
                if time.monotonic() - frozen_at > 2 * CALL_TIMEOUT + SLACK:
                    worst_age = max(worst_age, await heartbeat_age(database, "frozen"))
                    # fail fast: the heartbeat is the first thing a stalled worker loses
                    assert worst_age < 2 * CALL_TIMEOUT + SLACK, worker.tail()
            report.add(NAME, "frozen connections: worst heartbeat age (s)", worst_age, True)
            _, codes = await finish_and_check(database, [worker], pushed, 30)
    finally:
        proxy.stop()
    assert codes == [0], worker.tail()


async def test_a_frozen_listener_is_detected_and_replaced(database, mode, report, fleet, tmp_path):
    """Only the listener's connection freezes: the worker notices (it proves its listener
    alive) and reconnects, so wake-ups keep coming on a queue that polls every 60 s."""
    proxy, dsn = proxy_for(database)
    rounds = mode.pick(6, 2)
    latencies: list[float] = []
    try:
        async with Chancy(database, autoload_plugins=False) as app:
            await app.declare(Queue("nf_wake", concurrency=4, polling_interval=60.0))
            worker = start_worker(database, dsn, "listener", tmp_path)
            fleet.append(worker)
            await h.wait_registered(database, [worker.worker_id])

            async def listeners() -> int:
                return len(proxy.listeners())

            await h.wait_until(
                listeners,
                lambda n: n >= 1,
                10,
                "the listener to connect",
            )
            proxy.hole(proxy.listeners())
            holed_at = datetime.now()
            await anyio.sleep(2 * CALL_TIMEOUT)
            for _ in range(rounds):
                pushed_at = time.monotonic()
                ref = await app.push(a_job(0.01, queue="nf_wake"))
                with anyio.move_on_after(10):
                    await app.wait_for_job(ref, timeout=10, interval=0.2)
                latencies.append(time.monotonic() - pushed_at)
                assert latencies[-1] < 10.0, (latencies, worker.tail())  # fail fast
                await anyio.sleep(1.0)
            codes = await h.stop_workers([worker])
    finally:
        proxy.stop()
    worst = max(latencies)
    text = worker.log_path.read_text(errors="replace")
    stalls = [line for line in text.splitlines() if "ListenerStalled" in line]
    assert stalls, worker.tail()  # detected by its ping, and logged at WARNING
    logged = datetime.strptime(stalls[0][:23], "%Y-%m-%d %H:%M:%S,%f")
    detected = (logged - holed_at).total_seconds()
    bound = 3 * 0.5 + CALL_TIMEOUT + SLACK  # a ping interval + the echo deadline
    report.add(NAME, "frozen listener: detected after (s)", round(detected, 2), detected < bound)
    report.add(NAME, "frozen listener: push-to-done max (s)", worst, worst < 10.0)
    assert 0 < detected < bound, (detected, worker.tail())
    assert worst < 10.0, (latencies, worker.tail())
    assert codes == [0], worker.tail()
