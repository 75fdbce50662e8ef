"""Concurrency and order per key: limits hold across worker processes (a SQL check on the
recorded start and finish times), ordered keys run in push order, retries keep their place."""

from __future__ import annotations

import fnmatch
import itertools
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from keyed_jobs import MAX_OVERLAP, RUNS_TABLE, record

from chancy_core import Job, Queue, concurrency, ops
from chancy_core.concurrency import KeyRule, key_of, with_key
from chancy_core.errors import ConfigurationError, InvalidJobError

TESTS = Path(__file__).parent

SCRIPT = """
import asyncio, logging, sys
from datetime import UTC, datetime, timedelta
sys.path.insert(0, {tests!r})
from chancy_core import Chancy, hookimpl
from chancy_core.worker import Worker
logging.basicConfig(level=logging.INFO)

class RetryLater:
    name = "retry-later"

    @hookimpl
    def chancy_retry_decision(self, worker, job, error):
        if job.attempts >= job.max_attempts:
            return False
        return datetime.now(UTC) + timedelta(seconds=1)

async def main():
    async with Chancy({dsn!r}, plugins=[RetryLater()], autoload_plugins=False) as chancy:
        await Worker(chancy, worker_id=sys.argv[1], shutdown_timeout=5,
                     heartbeat_interval=0.5).serve()

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_with_key_puts_the_key_in_meta_and_keeps_the_job_api() -> None:
    job = Job.from_func(record, meta={"other": 1})
    keyed = with_key(job, "customer:42")
    assert keyed.meta == {"other": 1, "concurrency_key": "customer:42"}
    assert key_of(keyed) == "customer:42" and key_of(job) is None
    assert job.meta == {"other": 1}  # a copy
    assert Job.unpack(keyed.pack()) == keyed
    for bad in ("", "x" * 501, "a\x00b", 42):
        with pytest.raises(InvalidJobError, match="concurrency key"):
            with_key(job, bad)  # type: ignore[arg-type]


def test_rules_say_what_is_wrong() -> None:
    with pytest.raises(ConfigurationError, match="max_running=1"):
        KeyRule("q", "*", max_running=2, ordered=True)
    with pytest.raises(ConfigurationError, match="max_running must be"):
        KeyRule("q", "*", max_running=0)
    with pytest.raises(ConfigurationError, match="kind"):
        KeyRule("q", "*", kind="other")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pattern"):
        KeyRule("q", "")
    assert concurrency._like("a%b_c*?\\") == "a\\%b\\_c%_\\\\"


@pytest.mark.db
@pytest.mark.anyio
async def test_rules_are_stored_replaced_and_deleted(chancy) -> None:
    await concurrency.set_rule(chancy, KeyRule("q", "customer:*", max_running=2))
    await concurrency.set_rule(chancy, KeyRule("q", "customer:*", max_running=3))
    await concurrency.set_rule(chancy, KeyRule("q", "app.report", kind="func"))
    await concurrency.set_rule(chancy, KeyRule("other", "*", ordered=True))
    assert await concurrency.get_rules(chancy, "q") == [
        KeyRule("q", "app.report", kind="func"),
        KeyRule("q", "customer:*", max_running=3),
    ]
    assert await chancy.execute(concurrency.keyed_queues(chancy.schema)) == {"q", "other"}
    assert await concurrency.delete_rule(chancy, "q", "customer:*")
    assert not await concurrency.delete_rule(chancy, "q", "customer:*")
    assert len(await concurrency.get_rules(chancy)) == 2


@pytest.mark.db
@pytest.mark.anyio
async def test_the_keyed_claim_takes_only_free_keys_in_order(chancy) -> None:
    """One claim, no worker: a key's free slots, an ordered key's first job only, and the
    jobs no rule matches."""
    await chancy.declare(Queue("q", concurrency=50))
    await concurrency.set_rule(chancy, KeyRule("q", "c:*", max_running=2))
    await concurrency.set_rule(chancy, KeyRule("q", "o:*", ordered=True))
    await concurrency.set_rule(chancy, KeyRule("q", "*.record", kind="func", max_running=3))
    chancy.check_kwargs_on_push = False  # claimed only, never run: no kwargs needed
    job = Job.from_func(record, queue="q", kwargs={})
    other = Job(func="somewhere.else", queue="q")
    refs = await chancy.push_many(
        [with_key(other, "c:1")] * 5
        + [with_key(other, "o:1")] * 3
        + [with_key(other, "free")] * 2
        + [other] * 2
        + [job] * 5
    )
    queue = Queue("q", concurrency=50)
    claimed = await chancy.execute(
        ops.claim(chancy.schema, queue, 50, "w", keyed=True), transaction=True
    )
    ids = {str(row[0]) for row in claimed.rows}
    ref_ids = [str(r) for r in refs]
    assert ids == {*ref_ids[0:2], ref_ids[5], *ref_ids[8:12], *ref_ids[12:15]}
    # Nothing more while those run: the limits are full, the ordered key busy.
    again = await chancy.execute(
        ops.claim(chancy.schema, queue, 50, "w", keyed=True), transaction=True
    )
    assert again.rows == []


async def _start_workers(database: str, tmp_path: Path, ids: list[str]) -> list[Any]:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(SCRIPT).format(tests=str(TESTS), dsn=database))
    env = {**os.environ, "CHANCY_DISABLE_PLUGIN_AUTOLOAD": "1"}
    procs = []
    for worker_id in ids:
        with (tmp_path / f"{worker_id}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), worker_id],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def _stop(procs: list[Any]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _wait_registered(conn: psycopg.AsyncConnection[Any], workers: int) -> None:
    while True:
        cur = await conn.execute("SELECT count(*) FROM chancy_workers")
        row = await cur.fetchone()
        if row is not None and row[0] >= workers:
            await anyio.sleep(0.5)  # their producers are up (they claimed nothing yet)
            return
        await anyio.sleep(0.1)


async def _wait_done(conn: psycopg.AsyncConnection[Any], total: int, tmp_path: Path) -> None:
    while True:
        cur = await conn.execute(
            "SELECT count(*) FROM chancy_jobs WHERE state IN ('succeeded', 'failed')"
        )
        row = await cur.fetchone()
        if row is not None and row[0] >= total:
            return
        await anyio.sleep(0.2)


@pytest.mark.db
@pytest.mark.anyio
async def test_key_rules_hold_across_worker_processes(chancy, database, tmp_path) -> None:
    """Three worker processes: at most 2 jobs per customer key, ordered keys one at a time
    in push order (a retrying job keeps the key blocked), at most 1 job of a function; a
    queue without rules overlaps freely (the check can fail)."""
    conn = await psycopg.AsyncConnection.connect(database, autocommit=True, prepare_threshold=None)
    async with conn:
        await conn.execute(RUNS_TABLE)
        for name in ("keyed", "ordered", "funcs", "free"):
            await chancy.declare(
                Queue(name, executor="thread", concurrency=4, polling_interval=0.2)
            )
        # Many keys of one job slot each, claimed by every worker at the same instant.
        await chancy.declare(
            Queue("race", executor="thread", concurrency=20, polling_interval=0.05)
        )
        await concurrency.set_rule(chancy, KeyRule("race", "r:*", max_running=1))
        await concurrency.set_rule(chancy, KeyRule("keyed", "customer:*", max_running=2))
        await concurrency.set_rule(chancy, KeyRule("ordered", "acct:*", ordered=True))
        await concurrency.set_rule(
            chancy, KeyRule("funcs", "keyed_jobs.record", kind="func", max_running=1)
        )

        def job(queue: str, key: str, tag: str, seconds: float, **extra: Any) -> Job:
            kwargs = {"dsn": database, "tag": tag, "key": key, "seconds": seconds}
            base = Job.from_func(record, queue=queue, kwargs={**kwargs, **extra})
            return with_key(base, key) if queue != "funcs" else base

        jobs = [job("keyed", f"customer:{c}", f"k{c}-{n}", 0.3) for n in range(8) for c in range(3)]
        jobs += [job("free", "free:1", f"f-{n}", 0.3) for n in range(8)]
        jobs += [job("funcs", "func", f"u-{n}", 0.1) for n in range(6)]
        ordered = {a: [f"o{a}-{n:02d}" for n in range(6)] for a in range(2)}
        for n in range(6):
            for a in range(2):
                fail = a == 0 and n == 2
                j = job("ordered", f"acct:{a}", ordered[a][n], 0.1, fail_first=fail)
                jobs.append(j.with_max_attempts(2) if fail else j)
        jobs += [job("race", f"r:{k}", f"r{k}-{n}", 0.05) for n in range(3) for k in range(20)]

        procs = await _start_workers(database, tmp_path, ["w1", "w2", "w3"])
        try:
            with anyio.fail_after(120):
                await _wait_registered(conn, 3)
                await chancy.push_many(jobs)  # every worker is woken at once
                await _wait_done(conn, len(jobs), tmp_path)
        finally:
            _stop(procs)
        logs = "".join(p.read_text() for p in tmp_path.glob("w*.log"))

        cur = await conn.execute("SELECT state, count(*) FROM chancy_jobs GROUP BY state")
        assert dict(await cur.fetchall()) == {"succeeded": len(jobs)}, logs
        overlap = dict(await (await conn.execute(MAX_OVERLAP)).fetchall())
        assert all(overlap[f"customer:{c}"] <= 2 for c in range(3)), overlap
        assert max(overlap[f"customer:{c}"] for c in range(3)) == 2, overlap  # limit reached
        assert overlap["free:1"] > 2, overlap  # without a rule the same jobs overlap
        assert overlap["func"] == 1, overlap
        assert overlap["acct:0"] == 1 and overlap["acct:1"] == 1, overlap
        assert all(overlap[f"r:{k}"] == 1 for k in range(20)), overlap

        # The slot is held from claim to outcome: the jobs' own columns agree.
        cur = await conn.execute(
            """
            SELECT max(n)::int FROM (
                SELECT count(*) OVER (PARTITION BY a.meta ->> 'concurrency_key', a.id) AS n
                FROM chancy_jobs AS a JOIN chancy_jobs AS b
                  ON a.queue = b.queue AND a.queue = 'keyed'
                 AND a.meta ->> 'concurrency_key' = b.meta ->> 'concurrency_key'
                 AND b.started_at <= a.started_at AND b.completed_at > a.started_at
            ) AS counted
            """
        )
        assert (await cur.fetchone()) == (2,)

        # Ordered keys: started in push order, the next only after the previous finished,
        # and the retried job's second attempt before the key's next job.
        for a, tags in ordered.items():
            cur = await conn.execute(
                "SELECT tag, attempt, started, finished FROM key_runs WHERE key = %s"
                " ORDER BY started",
                (f"acct:{a}",),
            )
            runs = await cur.fetchall()
            assert [r[0] for r in runs] == tags, runs
            assert all(prev[3] <= nxt[2] for prev, nxt in itertools.pairwise(runs))
        cur = await conn.execute("SELECT attempt FROM key_runs WHERE tag = 'o0-02'")
        assert (await cur.fetchone()) == (2,)


@pytest.mark.db
@pytest.mark.anyio
async def test_concurrent_keyed_claims_take_turns(chancy, database) -> None:
    """The race the per-queue lock closes: while claim A (holding key k's only slot) has
    not committed, a higher-priority job of k is pushed. Claim B would see k free (A's
    claim invisible) and take it; instead B waits for A, then sees k busy."""
    queue = Queue("q", concurrency=10)
    await chancy.declare(queue)
    await concurrency.set_rule(chancy, KeyRule("q", "k", max_running=1))
    base = Job(func="somewhere.else", queue="q")
    first = await chancy.push(with_key(base, "k"))
    found: dict[str, Any] = {}

    async def claim(name: str, conn: psycopg.AsyncConnection[Any]) -> None:
        found[name] = await chancy.execute_ex(
            conn, ops.claim(chancy.schema, queue, 10, name, keyed=True)
        )

    a = await psycopg.AsyncConnection.connect(database, prepare_threshold=None)
    b = await psycopg.AsyncConnection.connect(database, autocommit=True, prepare_threshold=None)
    async with a, b:
        with anyio.fail_after(20):
            await claim("a", a)  # a is not autocommit: its transaction stays open
            assert [str(r[0]) for r in found["a"].rows] == [str(first)]
            await chancy.push(with_key(base, "k").with_priority(10))
            async with anyio.create_task_group() as tg:
                tg.start_soon(claim, "b", b)
                while True:  # B waits for A's lock
                    async with chancy.pool.connection() as conn:
                        cur = await conn.execute(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND NOT granted AND database = (SELECT oid FROM pg_database"
                            " WHERE datname = current_database())"
                        )
                        waiting = await cur.fetchone()
                    if waiting == (1,) or "b" in found:  # (without the lock B ends at once)
                        break
                    await anyio.sleep(0.02)
                await a.commit()
            assert "b" in found
    assert found["b"].rows == []  # k still runs A's job


async def _claim_ids(chancy: Any, queue: Queue, limit: int) -> list[str]:
    claimed = await chancy.execute(
        ops.claim(chancy.schema, queue, limit, "w", keyed=True), transaction=True
    )
    return sorted(str(row[0]) for row in claimed.rows)


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("many_keys", [False, True])
async def test_the_keyed_claim_looks_per_key_behind_a_long_run_of_one_key(
    chancy, monkeypatch, many_keys: bool
) -> None:
    """More jobs of one key than the claim's walk looks at come first in claim order: the
    claim finds the other keys' jobs per key (the skip-scan), also while the first key is
    full, and a full key takes its next job as soon as one of its jobs finishes. With "many
    keys", more than the longer walk too."""
    queue = Queue("q", concurrency=50)
    await chancy.declare(queue)
    await concurrency.set_rule(chancy, KeyRule("q", "c:*", max_running=2))
    base = Job(func="somewhere.else", queue="q")
    walk = ops.KEYED_WALK + 4 * 10
    if many_keys:
        monkeypatch.setattr(ops, "KEYED_MANY_KEYS", 1)
        walk *= 10
    a = [str(r) for r in await chancy.push_many([with_key(base, "c:a")] * (walk + 10))]
    b = [str(r) for r in await chancy.push_many([with_key(base, "c:b")] * 3)]
    # The walk alone: the first two jobs of a fill a claim of two.
    assert await _claim_ids(chancy, queue, 2) == sorted(a[:2])
    # a is full, every job the walk sees is a's: per key, b's first two.
    assert await _claim_ids(chancy, queue, 10) == sorted(b[:2])
    assert await _claim_ids(chancy, queue, 10) == []
    async with chancy.pool.connection() as conn:
        await conn.execute(
            "UPDATE chancy_jobs SET state = 'succeeded', completed_at = now() WHERE id = %s",
            (a[0],),
        )
    assert await _claim_ids(chancy, queue, 10) == [a[2]]


@pytest.mark.db
@pytest.mark.anyio
async def test_an_ordered_key_waiting_for_a_retry_does_not_hold_up_the_other_keys(
    chancy,
) -> None:
    """An ordered key whose first job waits for its retry, with more jobs behind it than
    the walk looks at: its jobs stay put, the next ordered key starts its first job, and a
    higher-priority job of the blocked key does not jump the queue."""
    queue = Queue("q", concurrency=50)
    await chancy.declare(queue)
    await concurrency.set_rule(chancy, KeyRule("q", "o:*", ordered=True))
    base = Job(func="somewhere.else", queue="q")
    walk = ops.KEYED_WALK + 4 * 10
    a = [str(r) for r in await chancy.push_many([with_key(base, "o:a")] * (walk + 10))]
    b = [str(r) for r in await chancy.push_many([with_key(base, "o:b")] * 2)]
    await chancy.push(with_key(base, "o:a").with_priority(5))
    async with chancy.pool.connection() as conn:
        await conn.execute(
            "UPDATE chancy_jobs SET state = 'retrying', attempts = 1,"
            " scheduled_at = now() + interval '1 hour' WHERE id = %s",
            (a[0],),
        )
    assert await _claim_ids(chancy, queue, 10) == [b[0]]
    assert await _claim_ids(chancy, queue, 10) == []
    async with chancy.pool.connection() as conn:
        await conn.execute(
            "UPDATE chancy_jobs SET scheduled_at = now() - interval '1 second' WHERE id = %s",
            (a[0],),
        )
    assert await _claim_ids(chancy, queue, 10) == [a[0]]


def _rule(rules: list[KeyRule], kind: str, value: str | None) -> KeyRule | None:
    """The rule of a key (function): the longest matching pattern."""
    found = [r for r in rules if r.kind == kind and value is not None]
    found = [r for r in found if fnmatch.fnmatchcase(value or "", r.pattern)]
    return min(found, key=lambda r: (-len(r.pattern), r.pattern), default=None)


def _check_limits(rows: list[Any], rules: list[KeyRule], claimed: list[str]) -> None:
    """After a claim of ``claimed`` from ``rows`` (as below), no key or function runs more
    than its rule allows, and an ordered one only its first unfinished job."""
    taken = [r for r in rows if str(r[0]) in claimed]
    assert len(taken) == len(claimed)
    assert all(r[4] in ("pending", "retrying") and r[5] for r in taken)
    for pos, kind in ((1, "key"), (2, "func")):
        for value in {r[pos] for r in taken}:
            rule = _rule(rules, kind, value)
            if rule is None:
                continue
            mine = [r for r in rows if r[pos] == value]
            running = sum(r[4] == "running" for r in mine)
            new = [r for r in taken if r[pos] == value]
            assert running + len(new) <= rule.max_running, (value, running, len(new))
            if rule.ordered:
                assert [r[0] for r in new] == [min(r[0] for r in mine)], value


def _expected_claim(rows: list[Any], rules: list[KeyRule], limit: int) -> list[str]:
    """The keyed claim's answer, computed in Python from all of the queue's unfinished jobs
    (id, key, func, priority, state, due): the reference the SQL must agree with."""

    def rule(kind: str, value: str | None) -> KeyRule | None:
        return _rule(rules, kind, value)

    runnable = sorted(
        (r for r in rows if r[4] in ("pending", "retrying") and r[5]), key=lambda r: (-r[3], r[0])
    )
    rank: dict[tuple[int, str | None], int] = {}
    allowed = []
    for job_id, key, func, _, _, _ in runnable:
        ok = True
        for pos, kind, value in ((1, "key", key), (2, "func", func)):
            rank[pos, value] = rank.get((pos, value), 0) + 1
            limit_rule = rule(kind, value)
            if limit_rule is None:
                continue
            mine = [r for r in rows if r[pos] == value]
            free = limit_rule.max_running - sum(r[4] == "running" for r in mine)
            if limit_rule.ordered:
                ok = ok and free >= 1 and min(r[0] for r in mine) == job_id
            else:
                ok = ok and rank[pos, value] <= free
        if ok:
            allowed.append(str(job_id))
    return sorted(allowed[:limit])


@pytest.mark.db
@pytest.mark.anyio
@pytest.mark.parametrize("seed", range(6))
async def test_the_keyed_claim_agrees_with_a_reference(chancy, monkeypatch, seed: int) -> None:
    """Random queues (keys, functions, priorities, running, retrying and not-yet-due jobs).
    Fewer jobs than the walk sees (seeds 0, 1), or more with every key and no function
    limited (seed 2, the per-key look-up): each claim takes exactly the jobs the rules
    allow, as computed in Python from all the jobs. More jobs with everything (seed 3):
    every claim keeps the limits, and claims something whenever something may run. Seeds 4
    and 5: seeds 2 and 3 with "many keys" (the longer walk before the per-key look-up)."""
    rand = random.Random(seed)
    queue = Queue("q", concurrency=50)
    await chancy.declare(queue)
    rules = [
        KeyRule("q", "c:*", max_running=2),
        KeyRule("q", "c:1*", max_running=1),
        KeyRule("q", "o:*", ordered=True),
        KeyRule("q", "app.f?", kind="func", max_running=3),
        KeyRule("q", "app.o", kind="func", ordered=True),
    ]
    for r in rules:
        await concurrency.set_rule(chancy, r)
    keys = ["c:1", "c:2", "c:10", "o:1", "o:2", "x:1"]
    funcs = ["app.f1", "app.f2", "app.o", "app.g"]
    big = seed >= 2
    exact = seed not in (3, 5)
    if seed in (2, 4):
        keys, funcs = keys[:5], ["app.g"]
    if seed >= 4:
        monkeypatch.setattr(ops, "KEYED_MANY_KEYS", 2)
    jobs = []
    for _ in range(ops.KEYED_WALK * 3 if big else 60):
        job = Job(func=rand.choice(funcs), queue="q").with_priority(rand.choice([0, 0, 0, 5]))
        if seed in (2, 4) or rand.random() < 0.8:
            job = with_key(job, rand.choice(keys))
        jobs.append(job)
    await chancy.push_many(jobs)
    async with chancy.pool.connection() as conn:
        await conn.execute(
            "UPDATE chancy_jobs SET state = 'retrying', scheduled_at = now() + interval '1 hour'"
            " WHERE id IN (SELECT id FROM chancy_jobs ORDER BY random() LIMIT 5)"
        )
        await conn.execute(
            "UPDATE chancy_jobs SET scheduled_at = now() + interval '1 hour'"
            " WHERE id IN (SELECT id FROM chancy_jobs WHERE state = 'pending'"
            " ORDER BY random() LIMIT 5)"
        )
        # An ordered key's first job waits for its retry: the key is blocked.
        await conn.execute(
            "UPDATE chancy_jobs SET state = 'retrying', scheduled_at = now() + interval '1 hour'"
            " WHERE id = (SELECT id FROM chancy_jobs WHERE meta ->> 'concurrency_key' = 'o:1'"
            " ORDER BY id LIMIT 1)"
        )
        for _ in range(6):
            cur = await conn.execute(
                "SELECT id, meta ->> 'concurrency_key', func, priority, state,"
                " scheduled_at <= now() FROM chancy_jobs"
                " WHERE state IN ('pending', 'running', 'retrying')"
            )
            rows = await cur.fetchall()
            limit = rand.choice([1, 3, 10])
            expected = _expected_claim(rows, rules, limit)
            claimed = await _claim_ids(chancy, queue, limit)
            _check_limits(rows, rules, claimed)
            if exact:
                assert claimed == expected, (seed, limit)
            else:
                assert bool(claimed) == bool(expected), (seed, limit)
            # Some running jobs finish; the next claim sees their keys free again.
            await conn.execute(
                "UPDATE chancy_jobs SET state = 'succeeded', completed_at = now()"
                " WHERE id IN (SELECT id FROM chancy_jobs WHERE state = 'running'"
                " ORDER BY random() LIMIT 4)"
            )
