"""Jobs and a worker process for the workflow tests.

``python -m workflow_helpers DSN WORKER_ID [KILL_AFTER_STEP]`` runs a worker with the
workflow plugin and the recovery plugin (from this repository) until killed; with
``KILL_AFTER_STEP`` the process kills itself (SIGKILL) right after the outcome of that
step's job was written and before the workflow plugin hears of it.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import psycopg
from chancy_plugin_workflow import Workflows, get_step_results, step_context

from chancy_core import Chancy, Outcome, Queue, QueuedJob, Worker, hookimpl

HERE = Path(__file__).parent
RECOVERY = HERE.parent.parent / "chancy-plugin-recovery"

CREATE_RUNS = """
CREATE TABLE IF NOT EXISTS workflow_test_runs (
    exec_id      uuid PRIMARY KEY,
    step         text NOT NULL,
    job_id       uuid NOT NULL,
    attempt      integer NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at  timestamptz
)
"""


def recovery_plugin(**options: Any) -> Any:
    """The recovery plugin of this repository (not installed with this plugin's tests:
    imported from its source)."""
    if not (RECOVERY / "chancy_plugin_recovery").is_dir():
        raise RuntimeError(f"the kill tests need chancy-plugin-recovery's source at {RECOVERY}")
    if str(RECOVERY) not in sys.path:
        sys.path.insert(0, str(RECOVERY))
    from chancy_plugin_recovery import Recovery

    return Recovery(**options)


async def noop() -> None:
    """Does nothing."""


async def value(x: Any) -> Any:
    """Returns ``x``."""
    return x


async def total(job_context: QueuedJob) -> int:
    """The sum of what the steps it depends on returned."""
    return sum(int(v) for v in get_step_results(job_context).values())


async def boom() -> None:
    """Fails."""
    raise RuntimeError("boom on purpose")


async def fails_once(job_context: QueuedJob) -> str:
    """Fails on its first attempt, succeeds on the next."""
    if job_context.attempts == 1:
        raise RuntimeError("first attempt fails on purpose")
    return "second time lucky"


async def sleep(seconds: float) -> None:
    """Sleeps."""
    await anyio.sleep(seconds)


async def record(dsn: str, seconds: float, job_context: QueuedJob) -> str:
    """Record this execution (start and end, the database's clock), sleep in between."""
    found = step_context(job_context)
    step = found.step if found else "?"
    exec_id = uuid.uuid4()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO workflow_test_runs (exec_id, step, job_id, attempt, pid)"
            " VALUES (%s, %s, %s, %s, %s)",
            (exec_id, step, job_context.id, job_context.attempts, os.getpid()),
        )
        await anyio.sleep(seconds)
        await conn.execute(
            "UPDATE workflow_test_runs SET finished_at = clock_timestamp() WHERE exec_id = %s",
            (exec_id,),
        )
    return step


class KillAfter:
    """Kills its own process (SIGKILL) once the outcome of ``step``'s job is written,
    before any other plugin hears of it."""

    name = "kill-after"

    def __init__(self, step: str) -> None:
        self.step = step

    @hookimpl(tryfirst=True)
    def chancy_job_completed(self, job: QueuedJob, outcome: Outcome) -> None:
        found = step_context(job)
        if found is not None and found.step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


async def serve(dsn: str, worker_id: str, kill_after: str | None) -> None:
    plugins: list[Any] = [
        Workflows(sweep_interval=0.5),
        recovery_plugin(interval=0.3, worker_timeout=1.5, grace=0.5),
    ]
    if kill_after:
        plugins.append(KillAfter(kill_after))
    async with Chancy(dsn, autoload_plugins=False, plugins=plugins) as app:
        await app.declare(Queue("default", concurrency=3, polling_interval=0.2))
        await Worker(app, worker_id=worker_id, heartbeat_interval=0.3).serve()


if __name__ == "__main__":
    anyio.run(serve, sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
