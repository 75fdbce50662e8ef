"""`chancy worker start` as a real process: its default allow-list, a thread job
abandoned at the shutdown timeout, and ``--processes`` (test audit S2 and section 6, 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import test_worker_support as s

from chancy_core import Chancy, Job

pytestmark = [pytest.mark.db, pytest.mark.anyio, pytest.mark.slow]

TESTS = Path(__file__).resolve().parent


def start(dsn: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "CHANCY_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chancy_core.cli",
                "--dsn",
                dsn,
                "worker",
                "start",
                "--declare",
                *args,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> tuple[int | None, float]:
    """SIGTERM; the exit status and how long it took (None if it did not exit)."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while proc.poll() is None and time.monotonic() - began < timeout:
        await anyio.sleep(0.05)
    took = time.monotonic() - began
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        return None, took
    return proc.returncode, took


async def workers(app: Chancy) -> list[Any]:
    return [r[0] for r in await s.query(app, "SELECT worker_id FROM {workers}")]


async def test_worker_start_refuses_os_system_and_leaves_an_abandoned_thread_job(
    database, tmp_path
):
    trap = tmp_path / "trap"
    log = tmp_path / "worker.log"
    async with Chancy(database) as app:
        proc = start(
            database, "--import", "test_worker_support", "--queue", "cli_a:2",
            "--queue", "cli_t:1:thread", "--shutdown-timeout", "1", "--worker-id", "cli1",
            log=log,
        )  # fmt: skip
        try:
            with anyio.fail_after(60):
                await s.wait_until(lambda: workers(app), timeout=30, what="the worker")
                touch = {"command": f"touch {trap}"}
                refs = await app.push_many(
                    [
                        Job(func="os.system", queue="cli_a", kwargs=touch),
                        Job(func="test_worker_support.os.system", queue="cli_a", kwargs=touch),
                        Job.from_func(s.sync_add, queue="cli_a", kwargs={"a": 1, "b": 2}),
                    ]
                )
                system, pkg_system, good = await s.wait_all(
                    app, refs, "succeeded", "failed", timeout=15
                )
                blocked = await app.push(
                    Job.from_func(s.gated, queue="cli_t", kwargs={"seconds": 120})
                )
                await s.wait_state(app, blocked, "running", timeout=15)
                code, took = await stop(proc)
            row = await s.job_row(app, blocked)
            left = await workers(app)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text(errors="replace")
    assert system.state.value == "failed" and "JobNotAllowedError" in s.raised(system), text
    assert pkg_system.state.value == "failed" and "JobNotAllowedError" in s.raised(pkg_system)
    assert not trap.exists()
    assert good.state.value == "succeeded"
    # The thread job was abandoned at the 1 s timeout: the process still exits at once, with
    # 0, and the job is back to pending with its attempt given back; no worker row is left.
    assert code == 0 and took < 1 + 4, (code, took, text[-2000:])
    assert (row["state"], row["attempts"]) == ("pending", 0), row
    assert left == []


async def test_worker_start_with_processes_runs_n_workers_and_stops_them_with_one_signal(
    database, tmp_path
):
    async with Chancy(database) as app:
        proc = start(
            database, "--import", "test_worker_support", "--queue", "cli_p:2",
            "--processes", "2", log=tmp_path / "workers.log",
        )  # fmt: skip
        try:
            with anyio.fail_after(60):

                async def two() -> bool:
                    return len(await workers(app)) == 2

                await s.wait_until(two, timeout=30, what="two workers")
                ref = await app.push(
                    Job.from_func(s.sync_add, queue="cli_p", kwargs={"a": 2, "b": 2})
                )
                await s.wait_state(app, ref, "succeeded", timeout=15)
                code, took = await stop(proc)
                left = await workers(app)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0 and took < 10, (code, took)
    assert left == []


SLOW_WRITES = """
CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(20);  -- a write that cannot finish within the shutdown timeout
    RETURN NEW;
END $$;
CREATE TRIGGER slow_write BEFORE UPDATE ON {jobs} FOR EACH ROW
    WHEN (OLD.state = 'running' AND NEW.state IN ('succeeded', 'failed'))
    EXECUTE FUNCTION slow_write();
"""


async def test_a_shutdown_that_leaves_outcomes_unwritten_says_so_and_exits_non_zero(
    database, tmp_path
):
    """Outcomes that cannot be written by the end of the shutdown timeout: the worker
    stops on time, says how many it could not write, and exits non-zero (never 0 while
    finished jobs stay `running`)."""
    log = tmp_path / "worker.log"
    async with Chancy(database) as app:
        await s.query(app, SLOW_WRITES)
        proc = start(
            database, "--import", "test_worker_support", "--queue", "cli_w:2",
            "--shutdown-timeout", "1", log=log,
        )  # fmt: skip
        try:
            with anyio.fail_after(60):
                await s.wait_until(lambda: workers(app), timeout=30, what="the worker")
                ref = await app.push(
                    Job.from_func(s.sync_add, queue="cli_w", kwargs={"a": 1, "b": 1})
                )
                await s.wait_state(app, ref, "running", timeout=15)
                await anyio.sleep(1.0)  # it ran; its write is stuck in the trigger
                code, took = await stop(proc, timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text(errors="replace")
    assert took < 1 + 5, (took, text[-2000:])
    assert code not in (0, None), (code, text[-2000:])
    assert "unwritten" in text or "could not write" in text, text[-2000:]


UNGUARDED = """
import os, anyio
from chancy_core import Chancy, Job, Queue, Worker


async def main():
    async with Chancy(os.environ["SCRIPT_DSN"], autoload_plugins=False) as app:
        app.require_declared_queues = False
        await app.declare(Queue("unguarded", executor="process", concurrency=1))
        async with Worker(app, allow=["unguarded_tasks"]) as worker:
            ref = await app.push(Job(func="unguarded_tasks.work", queue="unguarded"))
            job = await app.wait_for_job(ref, timeout=60)
            print("STATE", job.state.value)
            print("ERRORS", [e["traceback"] for e in job.errors])
            alive = [w.worker_id for w in await app.list_workers() if w.alive]
            print("OTHER WORKERS", [w for w in alive if w != worker.worker_id])

anyio.run(main)  # no `if __name__ == "__main__":` guard
"""


async def test_a_script_without_the_main_guard_does_not_start_a_worker_in_each_child(
    database, tmp_path
):
    """H3 of the new-user trial: a spawn child imports the unguarded script again; the
    worker refuses to start there (it would be a second, full worker), so the child's job
    fails naming the guard, and only the script's own worker ever registered."""
    (tmp_path / "unguarded_tasks.py").write_text("def work():\n    return 1\n")
    (tmp_path / "unguarded_main.py").write_text(UNGUARDED)
    env = {**os.environ, "SCRIPT_DSN": database, "PYTHONPATH": str(tmp_path)}
    env["CHANCY_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    done = subprocess.run(
        [sys.executable, str(tmp_path / "unguarded_main.py")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "STATE failed" in done.stdout, done.stdout + done.stderr
    assert "JobCrashed" in done.stdout, done.stdout
    assert 'if __name__ == "__main__"' in done.stdout + done.stderr
    assert "OTHER WORKERS []" in done.stdout, done.stdout
