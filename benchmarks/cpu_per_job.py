"""CPU time per processed job, split between the worker processes and PostgreSQL.

    benchmarks/.venvs/<system>/bin/python benchmarks/cpu_per_job.py --system chancy_core \\
        --jobs 50000 --workers 1 --repeat 3

Queues ``--jobs`` no-op jobs (untimed), starts ``--workers`` worker processes at the
headline configuration, and when every job is finished prints jobs/s and the CPU time
(user + system, from ``/proc``) the workers and the database's server processes spent per
job from the first claim on. On a busy machine wall-clock throughput swings by 2-3x from
one run to the next, CPU per job far less: it says where a change saved work, and whether
the worker (Python) or the server (SQL) is the side to work on. Run it on the machine that
runs the server (it reads the backends' ``/proc/<pid>/stat``), as root or as the server's
user. It uses a database of its own, ``cpu_<system>``, dropped and re-created each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from harness import fetch_row, load_adapter, reset_database

from systems._common import Adapter

HARNESS = Path(__file__).with_name("harness.py")
CONFIGS = {
    "chancy_core": {"concurrency": 100},
    "pgqueuer": {"concurrency": 100, "batch_size": 50},
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(adapter: Adapter, args: argparse.Namespace) -> str:
    """Queue, process, measure; one line of figures."""
    config = CONFIGS[args.system]
    dsn = f"{args.dsn_base}cpu_{args.system}"
    reset_database(args.dsn_base + "postgres", dsn)
    await adapter.migrate(dsn, config)
    async with adapter.connect(dsn) as client:
        await client.enqueue_bulk(args.jobs, 1000)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("ANALYZE")
        await conn.execute("CHECKPOINT")
        command = [sys.executable, str(HARNESS), "worker", "--system", args.system]
        command += ["--dsn", dsn, "--config", json.dumps(config)]
        procs = [subprocess.Popen(command) for _ in range(args.workers)]
        backends = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        backends += " AND pid <> pg_backend_pid()"
        try:
            first = worker_cpu = 0.0
            at_first: dict[int, float] = {}
            while True:
                waiting, unfinished = await fetch_row(conn, adapter.PROGRESS_SQL)
                now = time.monotonic()
                if not first and waiting < args.jobs:
                    first = now
                    worker_cpu = -sum(cpu_seconds(p.pid) for p in procs)
                    rows = await (await conn.execute(backends)).fetchall()
                    at_first = {pid: cpu_seconds(pid) for (pid,) in rows}
                if first and unfinished == 0:
                    break
                if all(p.poll() is not None for p in procs):
                    raise RuntimeError("every worker exited")
                await asyncio.sleep(0.05)
            worker_cpu += sum(cpu_seconds(p.pid) for p in procs)
            # A backend that started after the first claim counts from 0; one that ended
            # before the last job is not counted (the workers keep theirs open).
            rows = await (await conn.execute(backends)).fetchall()
            server_cpu = sum(cpu_seconds(pid) - at_first.get(pid, 0.0) for (pid,) in rows)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()
    seconds = now - first
    return (
        f"{args.system} {args.workers}w: {args.jobs / seconds:,.0f} jobs/s;"
        f" CPU per job: workers {worker_cpu * 1e6 / args.jobs:.0f} us,"
        f" PostgreSQL {server_cpu * 1e6 / args.jobs:.0f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--system", choices=sorted(CONFIGS), default="chancy_core")
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dsn-base", default="postgresql://postgres@127.0.0.1:5432/")
    args = parser.parse_args()
    adapter = load_adapter(args.system)
    for _ in range(args.repeat):
        print(asyncio.run(one_run(adapter, args)), flush=True)


if __name__ == "__main__":
    main()
