"""6. Hostile input.

* Rows inserted directly (bypassing every check of ``push``): a missing module or
  function, functions outside the worker's allow-list (``os.system``, a module's import
  reached through an allowed module), something that is not callable, kwargs the
  function does not accept, kwargs or meta that are not objects, junk limits. Each job
  fails with an error that says what is wrong, and the worker goes on (a good job pushed
  after them succeeds, and its process is alive). ``os.system`` never runs.
* The ``chancy`` command fed hostile arguments (SQL-injection-like names and prefixes,
  bad JSON, malformed references and DSNs) exits non-zero with a one-line message, no
  traceback, and leaves the tables as they were.

Property tests of Job, Queue, Limit and push live in ``tests/test_bad_input.py`` and
``tests/test_job.py``; this file does not repeat them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from chancy_core import Chancy, Job, Queue
from chaos import harness as h

pytestmark = [pytest.mark.anyio, pytest.mark.db]

TRAP = Path("/tmp/chancy-chaos-pwned")

# label, func, kwargs, meta, limits, the final state, what its error must say
ROWS = [
    ("missing module", "chaos.no_such_module.run", {}, {}, [], "failed", "no function"),
    ("missing top module", "no_such_package.run", {}, {}, [], "failed", "may not run"),
    ("missing function", "chaos.jobs.no_such_function", {}, {}, [], "failed", "has no function"),
    ("not callable", "chaos.jobs.DSN_ENV", {}, {}, [], "failed", "not callable"),
    (
        "os.system (not allowed)",
        "os.system",
        {"command": f"touch {TRAP}"},
        {},
        [],
        "failed",
        "may not run os.system",
    ),
    (
        "os.system through an allowed module",
        "chaos.jobs.os.system",
        {"command": f"touch {TRAP}"},
        {},
        [],
        "failed",
        "not defined under an allowed module",
    ),
    ("builtins.eval", "builtins.eval", {"source": "1"}, {}, [], "failed", "may not run"),
    ("kwargs it does not take", "chaos.jobs.noop", {"bogus": 1}, {}, [], "failed", "do not fit"),
    ("kwargs not an object", "chaos.jobs.noop", [1, 2], {}, [], "failed", "invalid job row"),
    ("meta not an object", "chaos.jobs.noop", {}, [1], [], "failed", "invalid job row"),
    ("meta a string", "chaos.jobs.noop", {}, "x", [], "failed", "invalid job row"),
    ("limits junk", "chaos.jobs.noop", {}, {}, "junk", "failed", "invalid job row"),
    (
        "limit of a bad type",
        "chaos.jobs.noop",
        {},
        {},
        [{"t": "bogus", "v": 1}],
        "failed",
        "invalid job row",
    ),
    (
        "limit value negative",
        "chaos.jobs.noop",
        {},
        {},
        [{"t": "time", "v": -5}],
        "failed",
        "invalid job row",
    ),
    # Valid rows with odd but harmless content run normally.
    (
        "plugin key of a wrong type in meta",
        "chaos.jobs.noop",
        {},
        {"recovery": "junk"},
        [],
        "succeeded",
        "",
    ),
    ("kwargs null", "chaos.jobs.noop", None, {}, [], "succeeded", ""),
]

INSERT = """
INSERT INTO chancy_jobs (id, queue, func, kwargs, meta, limits)
VALUES (%s, 'hostile', %s, %s, %s, %s)
"""


async def test_hostile_rows_fail_clearly_and_the_worker_goes_on(database, report, fleet, tmp_path):
    name = "6. hostile input"
    TRAP.unlink(missing_ok=True)
    ids = {}
    async with Chancy(database, autoload_plugins=False, max_connections=2) as app:
        await app.declare(Queue("hostile", concurrency=4, polling_interval=0.2))
        worker = h.WorkerProcess(
            h.worker_config(database, "hostile", recovery={"interval": 1.0}), tmp_path
        )
        fleet.append(worker)
        await h.wait_registered(database, [worker.worker_id])
        for label, func, kwargs, meta, limits, _, _ in ROWS:
            ids[label] = uuid.uuid4()
            await h.rows(
                database,
                INSERT,
                (
                    ids[label],
                    func,
                    None if kwargs is None else Jsonb(kwargs),
                    Jsonb(meta),
                    Jsonb(limits),
                ),
            )
        began = time.monotonic()
        with anyio.fail_after(60):
            await h.wait_until(
                lambda: h.scalar(
                    database,
                    "SELECT count(*) FROM chancy_jobs WHERE state IN ('succeeded', 'failed')",
                ),
                lambda n: n == len(ROWS),
                30,
                "every hostile row to finish",
            )
            took = time.monotonic() - began
            good = await app.push(Job(func="chaos.jobs.noop", queue="hostile"))
            after = await app.wait_for_job(good, timeout=30, interval=0.2)
        alive = worker.alive()
        worker.terminate()
        code = await worker.wait(20)
    found = {
        row[0]: (row[1], row[2])
        for row in await h.rows(
            database, "SELECT id, state, errors::text FROM chancy_jobs WHERE queue = 'hostile'"
        )
    }
    wrong = []
    for label, _, _, _, _, state, says in ROWS:
        got_state, errors = found[ids[label]]
        ok = got_state == state and says.lower() in errors.lower()
        if not ok:
            wrong.append((label, got_state, errors[-300:]))
    report.add(name, f"hostile rows ({len(ROWS)}): each as expected", len(ROWS) - len(wrong),
               not wrong)  # fmt: skip
    report.add(name, "... all finished after (s)", took)
    report.add(name, "os.system ran", TRAP.exists(), not TRAP.exists())
    report.add(name, "a good job after them", after.state.value, after.state.value == "succeeded")
    report.add(name, "worker alive / exit code", f"{alive} / {code}", alive and code == 0)
    assert not wrong, wrong
    assert not TRAP.exists()
    assert after.state.value == "succeeded"
    assert alive and code == 0, worker.tail()


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHANCY_DSN": dsn}
    return subprocess.run(
        [sys.executable, "-m", "chancy_core.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


INJECTION = "x'; DROP TABLE chancy_jobs; --"
CLI_CASES = [
    ("prefix with SQL", ["--prefix", 'x"; DROP TABLE chancy_jobs; --', "queue", "list"]),
    ("prefix with a newline", ["--prefix", "chancy_\n", "queue", "list"]),
    ("queue declare with SQL", ["queue", "declare", INJECTION]),
    ("queue pause with SQL", ["queue", "pause", INJECTION]),
    ("queue delete with SQL", ["queue", "delete", 'q"; DELETE FROM chancy_jobs; --']),
    ("push with bad JSON", ["job", "push", "chaos.jobs.noop", "--kwargs", "{bad json"]),
    ("push with kwargs not an object", ["job", "push", "chaos.jobs.noop", "--kwargs", "[1]"]),
    ("push with a shell func", ["job", "push", "os.system; rm -rf /"]),
    ("push to a queue with SQL", ["job", "push", "chaos.jobs.noop", "--queue", INJECTION]),
    ("get a malformed reference", ["job", "get", "' OR 1=1 --"]),
    ("cancel a malformed reference", ["job", "cancel", "1; DROP TABLE chancy_jobs"]),
    ("wait for a job that does not exist", ["job", "wait", str(uuid.uuid4())]),
    ("malformed DSN", ["--dsn", "host='unterminated", "queue", "list"]),
    (
        "unreachable DSN, password",
        ["--dsn", "postgresql://u:s3cret@127.0.0.1:1/x", "queue", "list"],
    ),
    ("worker with a bad queue spec", ["worker", "start", "--queue", "q:many"]),
    ("concurrency not a number", ["queue", "declare", "q", "--concurrency", "lots"]),
]


async def test_the_cli_refuses_hostile_arguments_with_a_message(database, report):
    name = "6. hostile input"
    async with Chancy(database, autoload_plugins=False) as app:  # something to lose
        await app.declare(Queue("seeded"))
        await app.push_many([Job(func="chaos.jobs.noop", queue="seeded") for _ in range(5)])
    before = await _snapshot(database)
    results = await anyio.to_thread.run_sync(
        lambda: [(label, _cli(database, *args)) for label, args in CLI_CASES]
    )
    bad = []
    for label, done in results:
        error = done.stderr[done.stderr.find("chancy: error:") :]  # after "using database"
        clear = done.returncode != 0 and (
            ("chancy: error:" in done.stderr and len(error.strip().splitlines()) == 1)
            or "usage:" in done.stderr
        )
        leaked = "Traceback" in done.stderr or "s3cret" in done.stderr + done.stdout
        if not clear or leaked:
            bad.append((label, done.returncode, done.stderr[-500:]))
    after = await _snapshot(database)
    tables = len(after)
    report.add(name, f"CLI hostile arguments ({len(CLI_CASES)}): refused clearly",
               len(CLI_CASES) - len(bad), not bad)  # fmt: skip
    report.add(name, "... jobs / chancy tables unchanged", f"{after == before} / {tables}",
               after == before)  # fmt: skip
    assert not bad, bad
    assert after == before
    assert tables >= 5 and "chancy_jobs" in after and "chancy_queues" in after, sorted(after)


async def _snapshot(dsn: str) -> dict[str, str]:
    """A checksum of every row of every chancy_ table, by table."""
    names = [
        r[0]
        for r in await h.rows(
            dsn, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'chancy\\_%%'"
        )
    ]
    found = {}
    for table in names:
        found[table] = await h.scalar(
            dsn,
            sql.SQL(
                "SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {} t"
            ).format(sql.Identifier(table)),
        )
    return found
