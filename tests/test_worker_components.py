"""The worker's components alone: the completer's batching and fencing, the claim-token
fence in the database, the producer's slot accounting, the queue diff, the resolver."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

import anyio
import psycopg
import pytest
import test_worker_support as s

from chancy_core import Chancy, Queue, QueuedJob, hookimpl, ops
from chancy_core.errors import JobNotAllowedError
from chancy_core.outcome import Outcome
from chancy_core.worker.completer import Completer, Completion
from chancy_core.worker.functions import FunctionResolver
from chancy_core.worker.producer import Slots
from chancy_core.worker.queues import diff
from chancy_core.worker.runner import Running

# --- the completer, against a fake writer -------------------------------------------------


def completion(i: int, queue: str = "q", meta: str | None = None) -> Completion:
    return Completion(id=f"job-{i}", queue=queue, token="t", state="succeeded", meta=meta)


class FakeWriter:
    """Accepts every outcome but the ids in ``refused`` (the fence), and raises for a
    batch holding a meta in ``bad`` (a value the database refuses)."""

    def __init__(self, refused: set[str] = frozenset(), bad: set[str] = frozenset()) -> None:
        self.refused = refused
        self.bad = bad
        self.batches: list[list[str]] = []

    async def __call__(self, batch: Sequence[Completion]) -> set[str]:
        self.batches.append([c.id for c in batch])
        if any(c.meta in self.bad for c in batch):
            raise psycopg.errors.InvalidTextRepresentation("the database refuses this value")
        return {c.id for c in batch} - self.refused


@pytest.mark.anyio
async def test_the_completer_writes_in_batches_and_reports_only_what_was_accepted() -> None:
    writer = FakeWriter(refused={"job-3"})
    reported: list[tuple[list[str], set[str]]] = []

    async def on_written(batch: Sequence[Completion], accepted: set[str]) -> None:
        reported.append(([c.id for c in batch], accepted))

    completer = Completer(writer, batch=4, delay=0.01, on_written=on_written)
    for i in range(10):
        completer.record(completion(i, queue="a" if i % 2 else "b"))
    assert completer.unwritten("a") == 5 and completer.unwritten("b") == 5
    assert completer.holds("job-9") and len(completer) == 10
    await completer.flush()
    assert [len(b) for b in writer.batches] == [4, 4, 2]
    assert completer.unwritten("a") == completer.unwritten("b") == 0
    assert not completer.holds("job-9") and len(completer) == 0
    accepted = set().union(*(a for _, a in reported))
    assert accepted == {f"job-{i}" for i in range(10)} - {"job-3"}


@pytest.mark.anyio
async def test_the_completer_waits_for_others_to_share_a_write() -> None:
    writer = FakeWriter()

    async def on_written(batch: Sequence[Completion], accepted: set[str]) -> None:
        pass

    completer = Completer(writer, batch=100, delay=0.2, on_written=on_written)
    async with anyio.create_task_group() as tg:
        tg.start_soon(completer.run)
        for i in range(30):
            completer.record(completion(i))
            await anyio.sleep(0)
        with anyio.fail_after(5):
            while len(completer):
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert [len(b) for b in writer.batches] == [30]


@pytest.mark.anyio
async def test_one_refused_value_does_not_hold_back_the_batch() -> None:
    writer = FakeWriter(bad={"bad"})
    accepted: set[str] = set()

    async def on_written(batch: Sequence[Completion], ok: set[str]) -> None:
        accepted.update(ok)

    completer = Completer(writer, batch=10, delay=0, on_written=on_written)
    for i in range(3):
        completer.record(completion(i, meta="bad" if i == 1 else None))
    await completer.flush()
    # The batch, then one at a time, then the bad one again without its meta.
    assert writer.batches == [
        ["job-0", "job-1", "job-2"],
        ["job-0"],
        ["job-1"],
        ["job-1"],
        ["job-2"],
    ]
    assert accepted == {"job-0", "job-1", "job-2"}


@pytest.mark.anyio
async def test_a_write_that_fails_for_another_reason_keeps_the_batch_and_retries() -> None:
    """Not a refused value (SQLSTATE class 22/23): nothing is dropped, the same batch is
    written again after a backoff."""
    writer = FakeWriter()
    failures = [psycopg.errors.FeatureNotSupported("a trigger said no"), RuntimeError("odd")]
    accepted: set[str] = set()

    async def write(batch: Sequence[Completion]) -> set[str]:
        if failures:
            writer.batches.append([c.id for c in batch])
            raise failures.pop(0)
        return await writer(batch)

    async def on_written(batch: Sequence[Completion], ok: set[str]) -> None:
        accepted.update(ok)

    completer = Completer(write, batch=10, delay=0, on_written=on_written)
    for i in range(2):
        completer.record(completion(i))
    with anyio.fail_after(5):
        await completer.flush()
    assert writer.batches == [["job-0", "job-1"]] * 3
    assert accepted == {"job-0", "job-1"} and len(completer) == 0


# --- the claim token: the fence in the database -------------------------------------------


@pytest.mark.db
@pytest.mark.anyio
async def test_a_stale_outcome_of_an_earlier_claim_by_the_same_worker_changes_nothing(chancy):
    """The attempt number repeats when the same worker claims a released job again; the
    claim token does not, so the first claim's late outcome is refused."""
    await chancy.declare(Queue("q"))
    ref = await chancy.push(s.make_job(s.noop, "q").with_max_attempts(3))
    queue = await chancy.get_queue("q")
    assert queue is not None
    first = await chancy.execute(ops.claim(chancy.schema, queue, 10, "w"))
    assert len(first.rows) == 1
    # Released (a shutdown or the heartbeat's lost-claim check): the attempt is taken back.
    assert await chancy.execute(ops.release(chancy.schema, "w", [(str(ref), first.token)])) == [
        str(ref)
    ]
    second = await chancy.execute(ops.claim(chancy.schema, queue, 10, "w"))
    assert len(second.rows) == 1 and second.token != first.token
    stale = {"id": str(ref), "token": first.token, "state": "failed", "error": "stale"}
    assert await chancy.execute(ops.complete(chancy.schema, "w", [stale])) == set()
    # Nor can the stale claim release the job again.
    assert await chancy.execute(ops.release(chancy.schema, "w", [(str(ref), first.token)])) == []
    row = await s.job_row(chancy, ref)
    assert row["state"] == "running" and row["attempts"] == 1 and row["errors"] == []
    fresh = {"id": str(ref), "token": second.token, "state": "succeeded"}
    assert await chancy.execute(ops.complete(chancy.schema, "w", [fresh])) == {str(ref)}
    row = await s.job_row(chancy, ref)
    assert row["state"] == "succeeded" and row["claim_token"] is None


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "keyed"])
async def test_a_claim_after_a_pause_takes_nothing_even_from_a_worker_that_has_not_heard(
    chancy, keyed
):
    """The claim reads the queue's row itself: a worker holding the queue as active (it has
    not yet seen the change) takes nothing once the pause or the deletion has committed."""
    await chancy.declare(Queue("q"))
    queue = await chancy.get_queue("q")  # what a worker that has not heard holds
    assert queue is not None
    ref = await chancy.push(s.make_job(s.noop, "q"))
    await chancy.pause_queue("q")
    assert (await chancy.execute(ops.claim(chancy.schema, queue, 10, "w", keyed=keyed))).rows == []
    await chancy.resume_queue("q")
    resumed = await chancy.execute(ops.claim(chancy.schema, queue, 10, "w", keyed=keyed))
    assert len(resumed.rows) == 1 and (await chancy.get_job(ref)).state is QueuedJob.State.RUNNING
    # Deleted with its waiting jobs kept: a stale worker claims nothing from it either.
    ref2 = await chancy.push(s.make_job(s.noop, "q"))
    await chancy.delete_queue("q", keep_jobs=True)
    assert (await chancy.execute(ops.claim(chancy.schema, queue, 10, "w", keyed=keyed))).rows == []
    assert (await chancy.get_job(ref2)).state is QueuedJob.State.PENDING


class Reporter:
    name = "reporter"

    def __init__(self) -> None:
        self.seen: list[tuple[str, Outcome]] = []

    @hookimpl
    async def chancy_job_completed(self, job: QueuedJob, outcome: Outcome) -> None:
        await anyio.sleep(0)  # event hooks may be async
        self.seen.append((job.id, outcome))


@pytest.mark.db
@pytest.mark.anyio
async def test_an_outcome_the_fence_refuses_is_not_reported(database, run_worker):
    """A job taken over while it runs (recovery gave it to someone else): the worker's
    outcome is refused by the fence, and chancy_job_completed never hears of it."""
    reporter = Reporter()
    async with Chancy(database, plugins=[reporter]) as chancy:
        await chancy.declare(Queue("q", polling_interval=0.1))
        with anyio.fail_after(10):
            async with run_worker(chancy) as worker:
                taken = await chancy.push(s.make_job(s.sleeper, "q", seconds=0.5))
                done = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=2))
                await s.wait_state(chancy, taken, "running")
                await s.query(
                    chancy,
                    "UPDATE {jobs} SET taken_by = 'someone-else' WHERE id = %s",
                    (uuid.UUID(str(taken)),),
                )
                await s.wait_state(chancy, done, "succeeded")
                await s.wait_until(lambda: not worker.running_jobs, timeout=3)
                await worker.stop()
    assert [job_id for job_id, _ in reporter.seen] == [str(done)]
    outcome = reporter.seen[0][1]
    assert outcome.state is QueuedJob.State.SUCCEEDED and outcome.result == 3
    assert outcome.error is None and outcome.run_seconds >= 0 and outcome.wait_seconds >= 0


# --- slots, queue diff, resolver ----------------------------------------------------------


def running() -> Running:
    return Running(QueuedJob.from_trusted(id="x", func="m.f"), "t")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_slots_count_running_jobs_and_those_of_the_retired_producer() -> None:
    old = Slots(2)
    a, b = running(), running()
    old.running |= {a, b}
    new = Slots(3, inherited=old)
    assert new.free() == 1  # two still run on the old executor
    c = running()
    new.running.add(c)
    assert new.free() == 0
    old.running.discard(a)
    assert new.free() == 1
    old.running.discard(b)
    new.forget_inherited()
    assert new.free() == 2
    assert Slots(2, inherited=Slots(5)).free() == 2  # an idle previous producer is ignored


def test_the_queue_diff_retires_updates_and_starts() -> None:
    a, b, c = Queue("a"), Queue("b"), Queue("c")
    changes = diff(
        {"a": a, "b": b, "c": c},
        {
            "a": a,  # unchanged
            "b": Queue("b", concurrency=5),  # changed in place
            "c": Queue("c", executor="process"),  # another executor: a new producer
            "d": Queue("d"),  # new
        },
    )
    assert changes.retire == {"c"}
    assert changes.update == {"b"}
    assert changes.start == {"c", "d"}
    assert diff({"a": a}, {}).retire == {"a"}


def test_the_resolver_applies_the_allow_list_once_per_name() -> None:
    anything = FunctionResolver(None)
    assert anything.resolve("os.getcwd") is os.getcwd
    allowed = FunctionResolver(["test_worker_support"])
    assert allowed.resolve("test_worker_support.noop") is s.noop
    assert allowed.resolve("test_worker_support.noop") is s.noop  # cached
    with pytest.raises(JobNotAllowedError, match="not under an allowed module prefix"):
        allowed.resolve("os.getcwd")
    with pytest.raises(JobNotAllowedError, match="not defined under an"):
        allowed.resolve("test_worker_support.os.getcwd")
    with pytest.raises(JobNotAllowedError):
        FunctionResolver(()).resolve("test_worker_support.noop")
