"""Smoke test of the benchmark harness with our adapter (``nox -s bench_smoke``; in CI).

Runs without the peers: only ``systems/chancy_core_.py``, in a venv with the core and the
plugins it deploys. ``harness.py phase --phase smoke`` checks on 200 jobs that the
adapter's ``PROGRESS_SQL`` and ``SUCCEEDED_SQL`` count what they claim (see
``phase_smoke``); the peers' adapters get the same check in their own venvs from
``python3 dev.py -s bench -- --quick`` (or ``--smoke``), see benchmarks/README.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from chancy_core import Chancy, Job, QueuedJob
from chancy_core.testing import dsn_for_database

BENCH_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH_DIR))  # the harness imports its adapters as `systems.<name>`

import harness  # noqa: E402

pytestmark = [pytest.mark.db, pytest.mark.bench]

#: Final states, as ``QueuedJob.State`` documents them; every other state is unfinished.
FINAL = {QueuedJob.State.SUCCEEDED, QueuedJob.State.FAILED}


@pytest.fixture
def bench_dsn(postgres_dsn: str) -> Iterator[str]:
    """A DSN of a database for the adapter (the harness drops and creates it itself)."""
    name = f"bench_smoke_{uuid.uuid4().hex[:12]}"
    yield dsn_for_database(postgres_dsn, name)
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_harness_smoke_phase_passes_for_our_adapter(postgres_dsn: str, bench_dsn: str) -> None:
    """The phase as run.py runs it: a subprocess printing its figures as JSON, with a
    worker process of its own."""
    done = subprocess.run(
        [
            *(sys.executable, str(BENCH_DIR / "harness.py"), "phase"),
            *("--system", "chancy_core", "--phase", "smoke", "--jobs", "200"),
            *("--deadline", "60", "--config", json.dumps({"concurrency": 100})),
            *("--dsn", bench_dsn, "--admin-dsn", postgres_dsn),
        ],
        cwd=BENCH_DIR,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    result = json.loads(lines[-1])
    assert "error" not in result, (result, done.stderr[-3000:])
    assert result["ok"] is True
    assert result["snapshots"] >= 1


@pytest.mark.anyio
async def test_our_counting_queries_follow_the_cores_job_states(bench_dsn: str) -> None:
    """With jobs in every state of ``QueuedJob.State``: waiting counts the pending ones,
    unfinished every one not in a final state, succeeded the succeeded ones."""
    adapter = harness.load_adapter("chancy_core")
    admin = dsn_for_database(bench_dsn, "postgres")
    harness.reset_database(admin, bench_dsn)
    await adapter.migrate(bench_dsn, dict(adapter.SETTINGS))
    per_state = {state: 3 + i for i, state in enumerate(QueuedJob.State)}
    async with Chancy(bench_dsn) as app:
        for state, count in per_state.items():
            refs = await app.push_many([Job(func="m.f", queue="bench")] * count)
            async with app.pool.connection() as conn:
                await conn.execute(
                    app.schema.compose("UPDATE {jobs} SET state = %s WHERE id = ANY(%s)"),
                    (state.value, [uuid.UUID(str(ref)) for ref in refs]),
                )
    async with await psycopg.AsyncConnection.connect(bench_dsn, autocommit=True) as conn:
        waiting, unfinished = await harness.fetch_row(conn, adapter.PROGRESS_SQL)
        (succeeded,) = await harness.fetch_row(conn, adapter.SUCCEEDED_SQL)
    assert waiting == per_state[QueuedJob.State.PENDING]
    assert unfinished == sum(n for state, n in per_state.items() if state not in FINAL)
    assert succeeded == per_state[QueuedJob.State.SUCCEEDED]
