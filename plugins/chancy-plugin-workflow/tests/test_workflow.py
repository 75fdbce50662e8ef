"""Workflows against a real database and real workers: order, results, policies, cancel."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import psycopg
import pytest
import workflow_helpers as h
from chancy_plugin_workflow import (
    META_KEY,
    StepState,
    Workflow,
    WorkflowError,
    WorkflowNotFoundError,
    Workflows,
    WorkflowState,
    cancel_workflow,
    get_step_results,
    get_workflow,
    list_workflows,
    submit_workflow,
    sync_cancel_workflow,
    sync_get_workflow,
    sync_list_workflows,
    sync_submit_workflow,
    sync_wait_for_workflow,
    wait_for_workflow,
)

from chancy_core import Chancy, Job, Queue, QueuedJob, Worker, hookimpl
from chancy_core.cli import main

pytestmark = [pytest.mark.anyio, pytest.mark.db]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]


def job(func: Any, **kwargs: Any) -> Job:
    return Job.from_func(func, kwargs=kwargs)


async def count(app: Chancy, statement: str, params: Any = None) -> int:
    async with app.pool.connection() as conn:
        cur = await conn.execute(app.schema.render(statement), params)
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def runs(database: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT step, job_id, started_at, finished_at FROM workflow_test_runs"
            " ORDER BY started_at"
        )
        return list(await cur.fetchall())


async def create_runs(database: str) -> None:
    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
        await conn.execute(h.CREATE_RUNS)


async def test_the_plugin_is_discovered_and_its_tables_exist(chancy: Chancy) -> None:
    assert isinstance(chancy.plugins.get_plugin("workflow"), Workflows)
    assert Workflows(sweep_interval=5).describe() == (
        "Workflows(sweep_interval=5, batch_size=500, batch_delay=0.01)"
    )
    assert await list_workflows(chancy) == []


# --- validation --------------------------------------------------------------------------------


def test_duplicate_names_and_bad_steps_are_refused_when_added() -> None:
    flow = Workflow("w")
    flow.add("a", job(h.noop))
    with pytest.raises(WorkflowError, match="duplicate step name 'a'"):
        flow.add("a", job(h.noop))
    with pytest.raises(WorkflowError, match="invalid step name"):
        flow.add("", job(h.noop))
    with pytest.raises(WorkflowError, match="give a Job"):
        flow.add("b", "not a job")
    with pytest.raises(WorkflowError, match="unique_key"):
        flow.add("b", job(h.noop).with_unique_key("mine"))
    with pytest.raises(WorkflowError, match="list of step names"):
        flow.add("b", job(h.noop), depends_on="a")
    with pytest.raises(WorkflowError, match="on_failure"):
        Workflow("w", on_failure="ignore")


async def test_invalid_workflows_are_refused_and_nothing_is_written(chancy: Chancy) -> None:
    unknown = Workflow("unknown")
    unknown.add("a", job(h.noop))
    unknown.add("b", job(h.noop), depends_on=["a", "nope"])
    cycle = Workflow("cycle")
    cycle.add("root", job(h.noop))
    cycle.add("a", job(h.noop), depends_on=["root", "c"])
    cycle.add("b", job(h.noop), depends_on=["a"])
    cycle.add("c", job(h.noop), depends_on=["b"])
    selfish = Workflow("self")
    selfish.add("a", job(h.noop), depends_on=["a"])
    big = Workflow("big")
    for i in range(11):
        big.add(f"s{i}", job(h.noop))
    not_json = Workflow("json")
    not_json.add("a", Job.from_func(h.value, kwargs={"x": {1, 2}}))
    cases = [
        (Workflow("empty"), "has no steps"),
        (unknown, "step 'b' depends on 'nope', which is not a step"),
        (cycle, "cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"),
        (selfish, "cycle: a -> a"),
        (big, "11 steps, more than the limit of 10"),
        (not_json, "step 'a'.*not JSON-serializable"),
    ]
    for flow, message in cases:
        with pytest.raises(WorkflowError, match=message):
            await submit_workflow(chancy, flow, max_steps=10)
    assert await count(chancy, "SELECT count(*) FROM {workflows}") == 0
    assert await count(chancy, "SELECT count(*) FROM {workflow_steps}") == 0
    assert await count(chancy, "SELECT count(*) FROM {jobs}") == 0


async def test_a_submission_inside_a_rolled_back_transaction_leaves_nothing(
    chancy: Chancy,
) -> None:
    flow = Workflow("tx")
    flow.add("a", job(h.noop))
    flow.add("b", job(h.noop), depends_on=["a"])
    async with chancy.pool.connection() as conn:
        with pytest.raises(RuntimeError, match="roll back"):
            async with conn.transaction():
                wid = await submit_workflow(chancy, flow, connection=conn)
                assert wid
                raise RuntimeError("roll back")
    assert await count(chancy, "SELECT count(*) FROM {workflows}") == 0
    assert await count(chancy, "SELECT count(*) FROM {jobs}") == 0


async def test_submission_writes_the_workflow_and_pushes_only_the_roots(chancy: Chancy) -> None:
    flow = Workflow("roots")
    flow.add("a", job(h.noop))
    flow.add("b", job(h.noop))
    flow.add("c", job(h.noop), depends_on=["a", "b"])
    wid = await submit_workflow(chancy, flow)
    info = await get_workflow(chancy, wid)
    assert info.state is WorkflowState.RUNNING and info.steps_total == 3
    assert {n: s.state for n, s in info.steps.items()} == {
        "a": StepState.QUEUED,
        "b": StepState.QUEUED,
        "c": StepState.WAITING,
    }
    assert info.steps["c"].job is None and info.steps["c"].depends_on == ("a", "b")
    a = await chancy.get_job(info.steps["a"].job)  # type: ignore[arg-type]
    assert a is not None and a.state is QueuedJob.State.PENDING
    assert a.meta[META_KEY] == {"id": wid, "step": "a", "results": {}}
    assert a.unique_key == f"workflow:{wid}:a"
    assert await count(chancy, "SELECT count(*) FROM {jobs}") == 2
    with pytest.raises(WorkflowNotFoundError):
        await get_workflow(chancy, "00000000-0000-0000-0000-000000000000")
    with pytest.raises(WorkflowNotFoundError, match="not a workflow id"):
        await get_workflow(chancy, "nope")


# --- running -----------------------------------------------------------------------------------


async def test_a_diamond_runs_each_step_after_its_dependencies(
    chancy: Chancy, database: str, run_worker: RunWorker
) -> None:
    await create_runs(database)
    await chancy.declare(Queue("default", concurrency=4, polling_interval=0.2))
    flow = Workflow("diamond")
    flow.add("top", job(h.record, dsn=database, seconds=0.05))
    flow.add("left", job(h.record, dsn=database, seconds=0.2), depends_on=["top"])
    flow.add("right", job(h.record, dsn=database, seconds=0.05), depends_on=["top"])
    flow.add("bottom", job(h.record, dsn=database, seconds=0.0), depends_on=["left", "right"])
    with anyio.fail_after(20):
        async with run_worker(chancy):
            wid = await submit_workflow(chancy, flow)
            info = await wait_for_workflow(chancy, wid, timeout=15)
    assert info.state is WorkflowState.SUCCEEDED, info
    assert info.steps_done == 4 and info.steps_failed == 0 and info.completed_at
    assert all(s.state is StepState.SUCCEEDED for s in info.steps.values())
    assert all(s.job_state is QueuedJob.State.SUCCEEDED for s in info.steps.values())
    done = {step: (start, end) for step, _, start, end in await runs(database)}
    assert len(done) == 4
    for child, parents in flow.steps.items():
        for parent in parents:
            assert done[parent][1] <= done[child][0], (parent, child)


async def test_a_retrying_step_is_not_failed(chancy: Chancy, run_worker: RunWorker) -> None:
    await chancy.declare(Queue("default", concurrency=2, polling_interval=0.2))
    flow = Workflow("retry")
    flow.add("flaky", Job.from_func(h.fails_once, max_attempts=2))
    flow.add("after", job(h.noop), depends_on=["flaky"])
    with anyio.fail_after(20):
        async with run_worker(chancy):
            wid = await submit_workflow(chancy, flow)
            info = await wait_for_workflow(chancy, wid, timeout=15)
    assert info.state is WorkflowState.SUCCEEDED
    flaky = await chancy.get_job(info.steps["flaky"].job)  # type: ignore[arg-type]
    assert flaky is not None and flaky.attempts == 2


async def test_policy_fail_cancels_the_rest(chancy: Chancy, run_worker: RunWorker) -> None:
    await chancy.declare(Queue("default", concurrency=4, polling_interval=0.2))
    flow = Workflow("fails", on_failure="fail")
    flow.add("bad", job(h.boom))
    flow.add("after_bad", job(h.noop), depends_on=["bad"])
    flow.add("slow", job(h.sleep, seconds=60))
    flow.add("after_slow", job(h.noop), depends_on=["slow"])
    with anyio.fail_after(25):
        async with run_worker(chancy):
            wid = await submit_workflow(chancy, flow)
            info = await wait_for_workflow(chancy, wid, timeout=15)
            slow = await chancy.wait_for_job(info.steps["slow"].job, timeout=10)  # type: ignore[arg-type]
    assert info.state is WorkflowState.FAILED
    states = {n: s.state for n, s in info.steps.items()}
    assert states == {
        "bad": StepState.FAILED,
        "after_bad": StepState.CANCELLED,
        "slow": StepState.CANCELLED,
        "after_slow": StepState.CANCELLED,
    }
    assert slow.state is QueuedJob.State.FAILED  # the running job was cancelled
    assert "cancel" in slow.errors[-1]["traceback"].lower()
    assert info.steps["after_bad"].job is None and info.steps["after_slow"].job is None


async def test_policy_continue_skips_only_what_depends_on_the_failure(
    chancy: Chancy, run_worker: RunWorker
) -> None:
    await chancy.declare(Queue("default", concurrency=4, polling_interval=0.2))
    flow = Workflow("goes on", on_failure="continue")
    flow.add("root", job(h.noop))
    flow.add("bad", job(h.boom), depends_on=["root"])
    flow.add("child", job(h.noop), depends_on=["bad"])
    flow.add("grandchild", job(h.noop), depends_on=["child", "root"])
    flow.add("other", job(h.sleep, seconds=0.3), depends_on=["root"])
    flow.add("after_other", job(h.noop), depends_on=["other"])
    with anyio.fail_after(20):
        async with run_worker(chancy):
            wid = await submit_workflow(chancy, flow)
            info = await wait_for_workflow(chancy, wid, timeout=15)
    assert info.state is WorkflowState.FAILED
    assert {n: s.state for n, s in info.steps.items()} == {
        "root": StepState.SUCCEEDED,
        "bad": StepState.FAILED,
        "child": StepState.SKIPPED,
        "grandchild": StepState.SKIPPED,
        "other": StepState.SUCCEEDED,
        "after_other": StepState.SUCCEEDED,
    }
    assert info.steps_done == 6 and info.steps_failed == 3


async def test_cancelling_a_workflow_cancels_its_pending_and_running_steps(
    chancy: Chancy, run_worker: RunWorker
) -> None:
    await chancy.declare(Queue("default", concurrency=1, polling_interval=0.2))
    flow = Workflow("cancel me")
    flow.add("running", job(h.sleep, seconds=60))
    # Concurrency 1 and a lower priority: stays pending behind `running`.
    flow.add("pending", job(h.noop).with_priority(-1))
    flow.add("waiting", job(h.noop), depends_on=["running"])
    with anyio.fail_after(25):
        async with run_worker(chancy):
            wid = await submit_workflow(chancy, flow)
            info = await get_workflow(chancy, wid)
            running = info.steps["running"].job
            pending = info.steps["pending"].job
            assert running is not None and pending is not None
            with anyio.fail_after(10):
                while (await chancy.get_job(running)).state is not QueuedJob.State.RUNNING:  # type: ignore[union-attr]
                    await anyio.sleep(0.05)
            assert await cancel_workflow(chancy, wid) is True
            assert await cancel_workflow(chancy, wid) is False  # already final
            info = await wait_for_workflow(chancy, wid, timeout=5)
            stopped = await chancy.wait_for_job(running, timeout=10)
    assert info.state is WorkflowState.CANCELLED
    assert all(s.state is StepState.CANCELLED for s in info.steps.values())
    assert stopped.state is QueuedJob.State.FAILED
    never = await chancy.get_job(pending)
    assert never is not None and never.state is QueuedJob.State.FAILED and never.attempts == 0
    with pytest.raises(WorkflowNotFoundError):
        await cancel_workflow(chancy, "00000000-0000-0000-0000-000000000000")


async def test_a_step_reads_what_its_dependencies_returned(
    chancy: Chancy, run_worker: RunWorker
) -> None:
    await chancy.declare(Queue("default", concurrency=4, polling_interval=0.2))
    flow = Workflow("results")
    flow.add("three", job(h.value, x=3))
    flow.add("four", job(h.value, x=4))
    flow.add("sum", job(h.total), depends_on=["three", "four"])
    with anyio.fail_after(20):
        async with run_worker(chancy):
            wid = await submit_workflow(chancy, flow)
            info = await wait_for_workflow(chancy, wid, timeout=15)
    assert info.state is WorkflowState.SUCCEEDED, info
    assert info.results() == {"three": 3, "four": 4, "sum": 7}
    summed = await chancy.get_job(info.steps["sum"].job)  # type: ignore[arg-type]
    assert summed is not None and get_step_results(summed) == {"three": 3, "four": 4}


def test_get_step_results_refuses_a_job_that_is_no_step() -> None:
    with pytest.raises(WorkflowError, match="not a workflow step"):
        get_step_results(job(h.noop))


class Finished:
    """Counts the jobs its worker finished."""

    name = "finished"

    def __init__(self) -> None:
        self.count = 0

    @hookimpl
    def chancy_job_completed(self) -> None:
        self.count += 1


async def test_two_workers_finishing_many_parents_at_once_push_the_child_once(
    database: str, run_worker: RunWorker
) -> None:
    parents = [f"p{i}" for i in range(60)]
    flow = Workflow("fan-in")
    for name in parents:  # as long each: both workers finish parents at the same moments
        flow.add(name, job(h.sleep, seconds=0.2))
    flow.add("child", job(h.noop), depends_on=parents)
    counters = [Finished(), Finished()]
    apps = [
        Chancy(database, autoload_plugins=False, plugins=[Workflows(), counter])
        for counter in counters
    ]
    with anyio.fail_after(30):
        async with apps[0] as one, apps[1] as two:
            await one.declare(Queue("default", concurrency=20, polling_interval=0.1))
            wid = await submit_workflow(one, flow)
            async with run_worker(one), run_worker(two):
                info = await wait_for_workflow(one, wid, timeout=25)
            pushed = await count(
                one,
                "SELECT count(*) FROM {jobs} WHERE meta->'workflow'->>'step' = 'child'",
            )
    assert info.state is WorkflowState.SUCCEEDED
    assert pushed == 1
    assert all(c.count > 0 for c in counters)  # both workers finished parents
    assert sum(c.count for c in counters) == 61


async def test_list_workflows_pages_newest_first(chancy: Chancy) -> None:
    ids = []
    for i in range(5):
        flow = Workflow(f"w{i}")
        flow.add("a", job(h.noop))
        ids.append(await submit_workflow(chancy, flow))
    first = await list_workflows(chancy, limit=2)
    second = await list_workflows(chancy, limit=2, after=first[-1].id)
    third = await list_workflows(chancy, limit=2, after=second[-1].id)
    assert [w.id for w in first + second + third] == ids[::-1]
    assert first[0].name == "w4" and first[0].steps == {}
    assert await cancel_workflow(chancy, ids[0])
    assert [w.id for w in await list_workflows(chancy, state="cancelled")] == [ids[0]]
    assert len(await list_workflows(chancy, state="running")) == 4
    with pytest.raises(WorkflowError, match="invalid state"):
        await list_workflows(chancy, state="done")


async def test_the_sweeper_advances_steps_no_worker_reported(
    database: str, run_worker: RunWorker
) -> None:
    """A worker without the plugin runs the step: its hook never advances the workflow;
    the sweeper does."""
    flow = Workflow("swept")
    flow.add("a", job(h.value, x=1))
    flow.add("b", job(h.total), depends_on=["a"])
    with anyio.fail_after(20):
        async with Chancy(database, autoload_plugins=False) as bare:
            await bare.declare(Queue("default", concurrency=2, polling_interval=0.1))
            wid = await submit_workflow(bare, flow)
            async with run_worker(bare):
                a = (await get_workflow(bare, wid)).steps["a"].job
                assert a is not None
                await bare.wait_for_job(a, timeout=10)
                await anyio.sleep(0.3)
                info = await get_workflow(bare, wid)
                assert info.steps["a"].state is StepState.QUEUED  # nobody advanced it
                assert info.steps["b"].state is StepState.WAITING
                assert await Workflows().sweep(bare) == 1
                assert await Workflows().sweep(bare) == 0  # idempotent
                info = await get_workflow(bare, wid)
                assert info.state is WorkflowState.RUNNING  # b runs, nobody reports it
                b = info.steps["b"].job
                assert b is not None
                await bare.wait_for_job(b, timeout=10)
                assert await Workflows().sweep(bare) == 1
            info = await get_workflow(bare, wid)
    assert info.state is WorkflowState.SUCCEEDED
    assert info.results() == {"a": 1, "b": 1}


async def test_the_sync_twins(database: str, run_worker: RunWorker) -> None:
    """What a Django or Flask view calls: submit inside its transaction, read, wait,
    cancel (in a thread here, as such code runs outside the event loop)."""
    ok = Workflow("sync")
    ok.add("a", job(h.value, x=2))
    ok.add("b", job(h.total), depends_on=["a"])
    stuck = Workflow("to cancel")
    stuck.add("slow", job(h.sleep, seconds=60))
    stuck.add("after", job(h.noop), depends_on=["slow"])

    def in_sync_code(app: Chancy) -> tuple[Any, ...]:
        with app.sync_connect() as conn:
            with pytest.raises(RuntimeError), conn.transaction():
                sync_submit_workflow(app, ok, connection=conn)
                raise RuntimeError("rolled back")
            assert sync_list_workflows(app) == []
            with conn.transaction():
                wid = sync_submit_workflow(app, ok, connection=conn)
        other = sync_submit_workflow(app, stuck)
        assert sync_get_workflow(app, other).steps["after"].state is StepState.WAITING
        done = sync_wait_for_workflow(app, wid, timeout=15, interval=0.2)
        cancelled = sync_cancel_workflow(app, other)
        listed = [w.id for w in sync_list_workflows(app)]
        return done, cancelled, sync_get_workflow(app, other), listed, wid, other

    with anyio.fail_after(30):
        async with Chancy(database) as app:
            await app.declare(Queue("default", concurrency=4, polling_interval=0.2))
            async with run_worker(app):
                done, cancelled, after, listed, wid, other = await anyio.to_thread.run_sync(
                    in_sync_code, app
                )
                slow = after.steps["slow"].job
                assert slow is not None
                stopped = await app.wait_for_job(slow, timeout=10)
            app.sync_close()
    assert done.state is WorkflowState.SUCCEEDED and done.results() == {"a": 2, "b": 2}
    assert cancelled is True and after.state is WorkflowState.CANCELLED
    assert stopped.state is QueuedJob.State.FAILED
    assert listed == [other, wid]


async def test_waiting_times_out_with_the_progress_made(chancy: Chancy) -> None:
    flow = Workflow("nobody runs it")
    flow.add("a", job(h.noop))
    wid = await submit_workflow(chancy, flow)
    with anyio.fail_after(10), pytest.raises(TimeoutError, match="0 of 1 steps done"):
        await wait_for_workflow(chancy, wid, timeout=0.3, interval=0.1)
    with pytest.raises(WorkflowNotFoundError):
        await wait_for_workflow(chancy, "00000000-0000-0000-0000-000000000000", timeout=1)


def test_workflow_commands_list_show_and_cancel(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    flow = Workflow("from the cli")
    flow.add("a", job(h.noop))
    flow.add("b", job(h.noop), depends_on=["a"])
    with Chancy(database) as app:
        app.sync_declare(Queue("default"))
        wid = sync_submit_workflow(app, flow)
    assert main(["--dsn", database, "workflow", "list"]) == 0
    assert capsys.readouterr().out.startswith(f"{wid}\trunning\t0/2\t")
    assert main(["--dsn", database, "workflow", "show", wid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["steps"]["b"]["state"] == "waiting" and shown["steps"]["a"]["job"]
    assert main(["--dsn", database, "workflow", "cancel", wid]) == 0
    assert main(["--dsn", database, "workflow", "cancel", wid]) == 1
    assert "is not running" in capsys.readouterr().err
    assert main(["--dsn", database, "workflow", "list", "--state", "cancelled", "--json"]) == 0
    assert [w["id"] for w in json.loads(capsys.readouterr().out)] == [wid]
    assert main(["--dsn", database, "workflow", "show", "nope"]) == 1
    assert "not a workflow id" in capsys.readouterr().err


async def test_the_sweeper_cancels_jobs_a_dead_canceller_left_running(chancy: Chancy) -> None:
    """cancel_workflow commits, then cancels the jobs: if its process dies in between,
    the sweeper cancels them."""
    from chancy_plugin_workflow import _cancel_op

    flow = Workflow("half cancelled")
    flow.add("a", job(h.noop))
    flow.add("b", job(h.noop))
    wid = await submit_workflow(chancy, flow)
    job_ids = await chancy.execute(_cancel_op(chancy, wid), transaction=True)  # no cancel_job
    assert len(job_ids) == 2
    assert all(
        j is not None and j.state is QueuedJob.State.PENDING for j in await chancy.get_jobs(job_ids)
    )
    assert await Workflows().sweep(chancy) == 0
    for found in await chancy.get_jobs(job_ids):
        assert found is not None and found.state is QueuedJob.State.FAILED
        assert "cancelled" in found.errors[-1]["traceback"]
    assert (await get_workflow(chancy, wid)).state is WorkflowState.CANCELLED
