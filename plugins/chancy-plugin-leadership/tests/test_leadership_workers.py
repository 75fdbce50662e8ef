"""Leadership among real workers: never two leaders, and a quick takeover.

Every test samples the workers' beliefs (``worker.is_leader``) and the lease in the
database every few milliseconds, and checks at each sample that at most one worker
believes it leads, and that a worker that believed it led both before and after the
database was read was the holder of an unexpired lease.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from chancy_plugin_leadership import Leadership

from chancy_core import Chancy, Worker, hookimpl
from chancy_core.hookspecs import RegisterTask, WorkerHandle

pytestmark = [pytest.mark.anyio, pytest.mark.db]

HERE = Path(__file__).parent
TTL, INTERVAL = 1.5, 0.25
SLACK = 0.35  # statement latency and scheduling on a busy machine


class Probe:
    """A leader-only task that records where it runs, and how many run at once."""

    name = "probe"

    def __init__(self) -> None:
        self.active = 0
        self.most = 0
        self.ran_on: list[str] = []

    @hookimpl
    def chancy_worker_tasks(self, register: RegisterTask) -> None:
        register("probe", self.task, leader_only=True)

    async def task(self, worker: WorkerHandle) -> None:
        self.active += 1
        self.most = max(self.most, self.active)
        self.ran_on.append(worker.worker_id)
        try:
            await anyio.sleep_forever()
        finally:
            self.active -= 1


class Sampler:
    """Checks the invariants every ``every`` seconds while it runs."""

    def __init__(self, app: Chancy, workers: list[Worker]) -> None:
        self.app = app
        self.workers = workers
        self.lease = Leadership(ttl=TTL, interval=INTERVAL)
        self.samples = 0
        self.violations: list[str] = []

    def leaders(self) -> list[str]:
        return [w.worker_id for w in self.workers if w.is_leader]

    async def run(self, every: float = 0.005) -> None:
        while True:
            before = self.leaders()
            lease = await self.lease.current(self.app)
            after = self.leaders()
            self.samples += 1
            if len(before) > 1 or len(after) > 1:
                self.violations.append(f"two leaders: {before} / {after}")
            for worker_id in set(before) & set(after):
                if lease is None or lease.holder != worker_id or not lease.valid:
                    self.violations.append(f"{worker_id} believes it leads; the lease: {lease}")
            await anyio.sleep(every)


@asynccontextmanager
async def cluster(
    database: str, count: int, probe: Probe
) -> AsyncIterator[tuple[list[Worker], list[Leadership], Sampler]]:
    """``count`` workers, each with its own app and plugin, and a sampler running."""
    async with AsyncExitStack() as stack:
        reader = await stack.enter_async_context(Chancy(database, autoload_plugins=False))
        await reader.migrate()
        workers: list[Worker] = []
        plugins: list[Leadership] = []
        sampler = Sampler(reader, workers)
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)  # stops the sampler once the workers stopped
        tg.start_soon(sampler.run)
        for _ in range(count):
            plugin = Leadership(ttl=TTL, interval=INTERVAL)
            app = await stack.enter_async_context(
                Chancy(database, autoload_plugins=False, plugins=[plugin, probe])
            )
            workers.append(
                await stack.enter_async_context(
                    Worker(app, heartbeat_interval=0.5, shutdown_timeout=1.0)
                )
            )
            plugins.append(plugin)
        yield workers, plugins, sampler


async def until(condition: Callable[[], Any], timeout: float) -> tuple[Any, float]:
    """Wait until ``condition()`` is truthy; return it and the seconds it took."""
    start = time.monotonic()
    with anyio.fail_after(timeout):
        while not (found := condition()):
            await anyio.sleep(0.002)
    return found, time.monotonic() - start


def leader_of(workers: list[Worker]) -> Worker | None:
    leaders = [w for w in workers if w.is_leader]
    return leaders[0] if len(leaders) == 1 else None


def check(sampler: Sampler, probe: Probe) -> None:
    assert sampler.violations == []
    assert sampler.samples > 50
    assert probe.most == 1


async def test_one_leader_at_a_time_and_a_clean_handoff(database: str) -> None:
    probe = Probe()
    with anyio.fail_after(9):
        async with cluster(database, 3, probe) as (workers, _, sampler):
            first, _ = await until(lambda: leader_of(workers), INTERVAL + SLACK)
            handed: list[Worker] = [first]
            for _ in range(2):  # stop the leader twice; the lease goes on at once
                await handed[-1].stop()
                assert not handed[-1].is_leader
                new, _ = await until(lambda: leader_of(workers), INTERVAL + SLACK)
                assert new not in handed, "a stopped worker leads again"
                handed.append(new)
            await anyio.sleep(3 * INTERVAL)  # the last one keeps it, renewing
            assert leader_of(workers) is handed[-1]
    check(sampler, probe)
    assert probe.ran_on == [w.worker_id for w in handed]


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_a_leader_that_cannot_renew_steps_down_before_its_lease_expires(
    database: str, failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = Probe()
    with anyio.fail_after(9):
        async with cluster(database, 3, probe) as (workers, plugins, sampler):
            leader, _ = await until(lambda: leader_of(workers), INTERVAL + SLACK)
            plugin = plugins[workers.index(leader)]

            async def broken(app: Chancy, holder: str) -> bool:
                if failure == "hangs":
                    await anyio.sleep_forever()
                raise OSError("the database is unreachable")

            monkeypatch.setattr(plugin, "acquire", broken)
            _, stepped = await until(lambda: not leader.is_leader, TTL)
            lease = await sampler.lease.current(sampler.app)
            # It stopped believing while its lease was still valid: nobody else could lead yet.
            assert lease is not None and lease.holder == leader.worker_id and lease.valid
            assert stepped <= TTL - plugin.margin + SLACK
            new, _ = await until(lambda: leader_of(workers), TTL + INTERVAL + SLACK)
            assert new is not leader
    check(sampler, probe)


async def test_a_killed_leader_is_replaced_within_ttl_and_an_interval(
    database: str, tmp_path: Path
) -> None:
    probe = Probe()
    doomed = f"doomed-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    lease = Leadership(ttl=TTL, interval=INTERVAL)
    with anyio.fail_after(9.5), (tmp_path / "leader.log").open("wb") as out:
        async with Chancy(database, autoload_plugins=False) as app:
            await app.migrate()  # before the child starts, so that it finds its tables
            process = await anyio.open_process(
                [
                    sys.executable,
                    "-m",
                    "leadership_helpers",
                    database,
                    doomed,
                    f"{TTL}",
                    f"{INTERVAL}",
                ],
                env=env,
                stdout=out,
                stderr=out,
            )
            try:
                while not ((held := await lease.current(app)) and held.holder == doomed):
                    assert process.returncode is None, "the child worker exited"
                    await anyio.sleep(0.02)
                async with cluster(database, 2, probe) as (workers, _, sampler):
                    await anyio.sleep(2 * INTERVAL)
                    assert leader_of(workers) is None  # the child leads; nobody here does
                    process.send_signal(signal.SIGKILL)
                    killed = time.monotonic()
                    await process.wait()
                    dead = await lease.current(app)
                    new, _ = await until(lambda: leader_of(workers), TTL + INTERVAL + SLACK)
                    took = time.monotonic() - killed
                    taken = await lease.current(app)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
    assert took <= TTL + INTERVAL + SLACK, took
    assert new is not None and taken is not None and taken.holder == new.worker_id
    # taken over only once the dead leader's lease had expired
    assert dead is not None and dead.holder == doomed and taken.acquired_at >= dead.expires_at
    check(sampler, probe)
