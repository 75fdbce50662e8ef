"""Worker processes killed with SIGKILL mid-workflow: nothing is lost, no step runs twice
at once, and each step has exactly one job."""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psycopg
import pytest
import workflow_helpers as h
from chancy_plugin_workflow import (
    StepState,
    Workflow,
    WorkflowState,
    get_workflow,
    submit_workflow,
    wait_for_workflow,
)

from chancy_core import Chancy, Job, Queue

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.slow]

HERE = Path(__file__).parent


async def wait_until(probe: Any, every: float = 0.05) -> Any:
    """Call ``await probe()`` until it returns something truthy (the caller sets the deadline)."""
    while True:
        found = await probe()
        if found:
            return found
        await anyio.sleep(every)


async def test_workers_killed_mid_workflow_lose_nothing_and_never_overlap(
    database: str, tmp_path: Path
) -> None:
    h.recovery_plugin()  # fails clearly if the recovery plugin's source is missing
    middle = [f"m{i}" for i in range(12)]
    flow = Workflow("killed")
    flow.add("root", Job.from_func(h.record, kwargs={"dsn": database, "seconds": 0.05}))
    for name in middle:
        flow.add(
            name,
            Job.from_func(h.record, kwargs={"dsn": database, "seconds": 0.6}),
            depends_on=["root"],
        )
    flow.add(
        "sink",
        Job.from_func(h.record, kwargs={"dsn": database, "seconds": 0.05}),
        depends_on=middle,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    processes: list[anyio.abc.Process] = []
    logs = []

    async def start(worker_id: str, *extra: str) -> anyio.abc.Process:
        log = (tmp_path / f"{worker_id}.log").open("wb")
        logs.append(log)
        process = await anyio.open_process(
            [sys.executable, "-m", "workflow_helpers", database, worker_id, *extra],
            env=env,
            stdout=log,
            stderr=log,
        )
        processes.append(process)
        return process

    def output() -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(tmp_path.glob("*.log"))
        )

    try:
        with anyio.fail_after(90):
            async with Chancy(database) as app:
                await app.declare(Queue("default", concurrency=3, polling_interval=0.2))
                conn = await psycopg.AsyncConnection.connect(database, autocommit=True)
                async with conn:
                    await conn.execute(h.CREATE_RUNS)
                    # 1. The only worker runs `root`, writes its success, and is killed
                    # before its hook can advance the workflow.
                    doomed = await start("doomed", "root")
                    wid = await submit_workflow(app, flow)
                    assert await doomed.wait() == -signal.SIGKILL, output()
                    info = await get_workflow(app, wid)
                    assert info.steps["root"].state is StepState.QUEUED  # not advanced
                    assert info.steps["root"].job_state.value == "succeeded"  # type: ignore[union-attr]

                    # 2. Two workers: their sweepers advance the workflow; one of them is
                    # killed while it runs steps.
                    survivors = [await start("one"), await start("two")]
                    victim = survivors[0]

                    async def victim_runs() -> Any:
                        cur = await conn.execute(
                            "SELECT count(*) FROM workflow_test_runs"
                            " WHERE pid = %s AND finished_at IS NULL",
                            (victim.pid,),
                        )
                        return (await cur.fetchone() or (0,))[0]

                    await wait_until(victim_runs)
                    victim.send_signal(signal.SIGKILL)
                    await victim.wait()
                    cur = await conn.execute("SELECT clock_timestamp()")
                    killed_at: datetime = (await cur.fetchone() or (None,))[0]

                    info = await wait_for_workflow(app, wid, timeout=60, interval=0.2)
                    cur = await conn.execute(
                        "SELECT step, pid, started_at, finished_at FROM workflow_test_runs"
                        " ORDER BY started_at"
                    )
                    executions = await cur.fetchall()
                    cur = await conn.execute(
                        app.schema.render(
                            "SELECT meta->'workflow'->>'step', count(*) FROM {jobs}"
                            " WHERE meta->'workflow'->>'id' = %(id)s GROUP BY 1"
                        ),
                        {"id": wid},
                    )
                    jobs_per_step: dict[str, int] = dict(await cur.fetchall())
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        for log in logs:
            log.close()

    assert info.state is WorkflowState.SUCCEEDED, (info, output())
    assert all(s.state is StepState.SUCCEEDED for s in info.steps.values())
    assert jobs_per_step == dict.fromkeys(flow.steps, 1)  # one job per step, pushed once
    by_step: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for step, pid, started, finished in executions:
        by_step[step].append((pid, started, finished))
    assert set(by_step) == set(flow.steps)
    assert len(by_step["root"]) == 1  # it succeeded before the kill: never run again
    rerun = [step for step, runs in by_step.items() if len(runs) > 1]
    assert rerun, output()  # the victim was killed while it ran steps
    for step, runs in by_step.items():
        # Each step ran to success exactly once; any earlier run was the victim's,
        # cut short by the kill, and ended before the next one started.
        assert runs[-1][2] is not None, step
        for pid, _, finished in runs[:-1]:
            assert pid == victim.pid and finished is None, (step, runs)
        spans = [(started, finished or killed_at) for _, started, finished in runs]
        for (_, end), (begin, _) in itertools.pairwise(spans):
            assert end <= begin, (step, runs)
    done = {step: runs[-1] for step, runs in by_step.items()}
    for child, parents in flow.steps.items():
        for parent in parents:
            assert done[parent][2] <= done[child][1], (parent, child)
