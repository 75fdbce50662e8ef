"""Runs one phase for one system inside that system's venv; ``run.py`` starts it.

    python harness.py phase --system pgqueuer --phase process --workers 2 --jobs 100000 \\
        --dsn URL --admin-dsn URL --deadline 400 --config '{"concurrency": 100, "batch_size": 50}'
    python harness.py worker --system pgqueuer --dsn URL --config '{...}'

``phase`` prints one JSON object as its last line of stdout: the figures, or ``{"error": ...}``.
``worker`` runs one worker of the system until it is terminated. Before its timed part every
phase runs a ``CHECKPOINT`` and waits ``--settle`` seconds, so that the WAL written by what
came before (pgbench, another system, the untimed queue filling) is flushed outside it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from systems._common import PROBE_FILE_ENV, Adapter, Client, Config

BATCH_SIZE = 1000
POLL_INTERVAL = 0.05  # seconds between progress polls, the same for every system
LATENCY_SAMPLES = 200
LATENCY_WARMUP = 5  # probes run (and discarded) before sampling, so the worker is up and warm
SAMPLE_TIMEOUT = 10.0  # seconds one probe may take before the phase fails
WARMUP_TIMEOUT = 60.0  # seconds the worker has to start and run its first probe
STOP_GRACE = 10.0  # seconds a worker has to exit after SIGTERM before it is killed


class PhaseError(Exception):
    """The phase ran but its result cannot be trusted (timeout, lost jobs, dead worker)."""


def load_adapter(system: str) -> Adapter:
    """Import ``systems.<module>`` for a system name (``procrastinate`` -> ``procrastinate_``)."""
    for module in (system, f"{system}_"):
        if (Path(__file__).parent / "systems" / f"{module}.py").exists():
            return cast(Adapter, importlib.import_module(f"systems.{module}"))
    raise PhaseError(f"no adapter systems/{system}.py")


def reset_database(admin_dsn: str, dsn: str) -> None:
    """Drop and re-create the database ``dsn`` names."""
    name = sql.Identifier(str(conninfo_to_dict(dsn)["dbname"]))
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


async def settle(args: argparse.Namespace) -> None:
    """``CHECKPOINT`` (dirty pages and WAL of earlier writes flushed now), then idle a moment."""
    async with await psycopg.AsyncConnection.connect(args.admin_dsn, autocommit=True) as conn:
        await conn.execute("CHECKPOINT")
    await asyncio.sleep(args.settle)


async def fetch_row(conn: psycopg.AsyncConnection[Any], query: str) -> tuple[int, ...]:
    """Run one of an adapter's counting queries; return its single row."""
    # Bytes: the adapters' queries are constants, but psycopg types ``str`` queries as literals.
    row = await (await conn.execute(query.encode())).fetchone()
    assert row is not None
    return tuple(int(value) for value in row)


@contextmanager
def workers(
    system: str, dsn: str, config: Config, count: int, env: dict[str, str] | None = None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start ``count`` worker processes (same process group as this one); stop them on exit.

    Stopping sends SIGTERM and, after ``STOP_GRACE`` seconds, SIGKILL.
    """
    command = [
        *(sys.executable, __file__, "worker", "--system", system, "--dsn", dsn),
        *("--config", json.dumps(config)),
    ]
    procs = [subprocess.Popen(command, env=env) for _ in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        stop_by = time.monotonic() + STOP_GRACE
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, stop_by - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def prepare(adapter: Adapter, args: argparse.Namespace) -> None:
    """Fresh database, migrated with the system's own installer."""
    reset_database(args.admin_dsn, args.dsn)
    await adapter.migrate(args.dsn, args.config)


async def check_queued(adapter: Adapter, args: argparse.Namespace) -> None:
    """Fail unless exactly ``--jobs`` jobs are queued."""
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
        _, unfinished = await fetch_row(conn, adapter.PROGRESS_SQL)
    if unfinished != args.jobs:
        raise PhaseError(f"{unfinished} jobs queued, expected {args.jobs}")


async def phase_bulk(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """Time building and bulk-enqueuing ``--jobs`` jobs in batches of ``BATCH_SIZE``."""
    await prepare(adapter, args)
    async with adapter.connect(args.dsn) as client:
        await settle(args)
        started = time.perf_counter()
        await client.enqueue_bulk(args.jobs, BATCH_SIZE)
        seconds = time.perf_counter() - started
    await check_queued(adapter, args)
    return {"jobs_per_s": args.jobs / seconds, "seconds": seconds}


async def phase_single(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """Time ``--jobs`` single pushes, one after another (as web requests push), each built anew."""
    await prepare(adapter, args)
    async with adapter.connect(args.dsn) as client:
        await settle(args)
        started = time.perf_counter()
        for i in range(args.jobs):
            await client.push_one(i)
        seconds = time.perf_counter() - started
    await check_queued(adapter, args)
    return {"jobs_per_s": args.jobs / seconds, "seconds": seconds}


async def phase_process(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """Queue ``--jobs`` jobs, ANALYZE, CHECKPOINT, start ``--workers`` workers; time claim->done."""
    await prepare(adapter, args)
    async with adapter.connect(args.dsn) as client:
        await client.enqueue_bulk(args.jobs, BATCH_SIZE)
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
        await conn.execute("ANALYZE")
        await settle(args)
        with workers(args.system, args.dsn, args.config, args.workers) as procs:
            first_claim, finished = await watch(conn, adapter, args, procs)
        (succeeded,) = await fetch_row(conn, adapter.SUCCEEDED_SQL)
    if succeeded != args.jobs:
        raise PhaseError(f"{succeeded} of {args.jobs} jobs succeeded")
    seconds = finished - first_claim
    return {"jobs_per_s": args.jobs / seconds, "seconds": seconds}


async def watch(
    conn: psycopg.AsyncConnection[Any],
    adapter: Adapter,
    args: argparse.Namespace,
    procs: list[subprocess.Popen[bytes]],
) -> tuple[float, float]:
    """Poll progress every ``POLL_INTERVAL``; return (first claim seen, all finished seen)."""
    first_claim: float | None = None
    deadline = time.monotonic() + args.deadline
    next_poll = time.monotonic()
    while True:
        waiting, unfinished = await fetch_row(conn, adapter.PROGRESS_SQL)
        now = time.monotonic()
        if first_claim is None and waiting < args.jobs:
            first_claim = now
        if unfinished == 0 and first_claim is not None:
            return first_claim, now
        if all(proc.poll() is not None for proc in procs):
            raise PhaseError(f"all workers exited; {unfinished} of {args.jobs} jobs unfinished")
        if now > deadline:
            raise PhaseError(
                f"timeout after {args.deadline:.0f}s; {unfinished} of {args.jobs} jobs unfinished"
            )
        next_poll += POLL_INTERVAL
        await asyncio.sleep(max(0.0, next_poll - time.monotonic()))


SMOKE_SINGLE = 10  # of the smoke phase's jobs, pushed one at a time (the rest in bulk)
SMOKE_BATCH = 50  # the smoke phase's bulk batch size (several batches for 200 jobs)


async def counts(conn: psycopg.AsyncConnection[Any], adapter: Adapter) -> tuple[int, int, int]:
    """``(waiting, unfinished, succeeded)`` from one snapshot (``conn`` is ``REPEATABLE
    READ``), so that the adapter's two queries see the same jobs."""
    async with conn.transaction():
        waiting, unfinished = await fetch_row(conn, adapter.PROGRESS_SQL)
        (succeeded,) = await fetch_row(conn, adapter.SUCCEEDED_SQL)
    return waiting, unfinished, succeeded


async def phase_smoke(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """Check that the adapter's ``PROGRESS_SQL`` and ``SUCCEEDED_SQL`` count what they claim,
    on ``--jobs`` jobs (200 is plenty; nothing is timed):

    * an empty queue counts ``(0, 0)`` and 0 succeeded;
    * after ``enqueue_bulk`` and ``push_one`` (``SMOKE_SINGLE`` of them), every job is
      waiting and unfinished, none succeeded;
    * while one worker runs them, every snapshot has ``waiting <= unfinished`` and
      ``unfinished + succeeded == jobs`` (a no-op job is either unfinished or succeeded);
    * at the end ``(0, 0)`` and ``jobs`` succeeded.

    Returns how many snapshots were taken and how many of them caught the run midway."""
    n = args.jobs
    if n <= SMOKE_SINGLE:
        raise PhaseError(f"the smoke phase needs more than {SMOKE_SINGLE} jobs")
    await prepare(adapter, args)
    problems: list[str] = []

    def expect(what: str, got: tuple[int, int, int], wanted: tuple[int, int, int]) -> None:
        if got != wanted:
            problems.append(f"{what}: (waiting, unfinished, succeeded) = {got}, expected {wanted}")

    snapshots = midway = 0
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        expect("empty", await counts(conn, adapter), (0, 0, 0))
        async with adapter.connect(args.dsn) as client:
            await client.enqueue_bulk(n - SMOKE_SINGLE, SMOKE_BATCH)
            expect(
                "after enqueue_bulk", await counts(conn, adapter), (n - SMOKE_SINGLE,) * 2 + (0,)
            )
            for i in range(n - SMOKE_SINGLE, n):
                await client.push_one(i)
        expect("after push_one", await counts(conn, adapter), (n, n, 0))
        deadline = time.monotonic() + args.deadline
        with workers(args.system, args.dsn, args.config, 1) as procs:
            while True:
                waiting, unfinished, succeeded = await counts(conn, adapter)
                snapshots += 1
                midway += 0 < unfinished < n
                if not 0 <= waiting <= unfinished or unfinished + succeeded != n:
                    problems.append(
                        f"midway: waiting {waiting}, unfinished {unfinished}, succeeded"
                        f" {succeeded} of {n} jobs"
                    )
                if unfinished == 0 or problems:
                    break
                if procs[0].poll() is not None:
                    raise PhaseError(f"the worker exited; {unfinished} of {n} jobs unfinished")
                if time.monotonic() > deadline:
                    raise PhaseError(f"timeout; {unfinished} of {n} jobs unfinished")
                await asyncio.sleep(0.005)
        expect("at the end", await counts(conn, adapter), (0, 0, n))
    if problems:
        raise PhaseError("; ".join(problems[:3]))
    return {"ok": True, "snapshots": snapshots, "midway": midway}


async def wait_for_lines(path: Path, count: int, timeout: float) -> None:
    """Wait until the probe file holds ``count`` lines, checking every millisecond."""
    give_up = time.monotonic() + timeout
    while path.read_bytes().count(b"\n") < count:
        if time.monotonic() > give_up:
            raise PhaseError(f"probe {count} not run within {timeout:.0f}s")
        await asyncio.sleep(0.001)


async def phase_latency(adapter: Adapter, args: argparse.Namespace) -> dict[str, Any]:
    """One idle worker; push ``--samples`` probes one at a time; report start - push."""
    await prepare(adapter, args)
    with tempfile.TemporaryDirectory() as tmp:
        probe_file = Path(tmp) / "probes.txt"
        probe_file.touch()
        env = {**os.environ, PROBE_FILE_ENV: str(probe_file)}
        await settle(args)
        with workers(args.system, args.dsn, args.config, 1, env):
            async with adapter.connect(args.dsn) as client:
                await push_probes(client, probe_file, args.samples)
        # Probes run one at a time, so the file is in push order; skip the warm-up ones.
        lines = probe_file.read_text().splitlines()[LATENCY_WARMUP:]
    latencies = [
        (started - pushed) * 1000
        for pushed, started in (map(float, line.split()) for line in lines)
    ]
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "p50_ms": cuts[49],
        "p95_ms": cuts[94],
        "p99_ms": cuts[98],
        "mean_ms": statistics.fmean(latencies),
        "samples": len(latencies),
    }


async def push_probes(client: Client, probe_file: Path, samples: int) -> None:
    """Push the warm-up and then the sample probes, each once the previous one has run."""
    rng = random.Random(0)
    for done in range(1, LATENCY_WARMUP + samples + 1):
        await client.push_probe(time.time())
        await wait_for_lines(probe_file, done, WARMUP_TIMEOUT if done == 1 else SAMPLE_TIMEOUT)
        # A random idle gap, so a polling worker is sampled at every point of its period.
        await asyncio.sleep(rng.uniform(0.05, 0.15))


PHASES = {
    "bulk": phase_bulk,
    "single": phase_single,
    "process": phase_process,
    "latency": phase_latency,
    "smoke": phase_smoke,
}


def versions(names: list[str]) -> dict[str, str]:
    """Installed versions of the named distributions."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def main() -> None:
    """Parse the command line and run ``phase``, ``worker`` or ``versions``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    phase = commands.add_parser("phase", help="run one phase, print its figures as JSON")
    phase.add_argument("--system", required=True)
    phase.add_argument("--phase", choices=sorted(PHASES), required=True)
    phase.add_argument("--jobs", type=int, required=True)
    phase.add_argument("--workers", type=int, default=1)
    phase.add_argument("--dsn", required=True, help="URL of the system's own database")
    phase.add_argument(
        "--admin-dsn", required=True, help="URL of a database to drop/create it from"
    )
    phase.add_argument("--deadline", type=float, required=True, help="seconds processing may take")
    phase.add_argument("--config", type=json.loads, default={}, help="worker configuration, JSON")
    phase.add_argument(
        "--settle", type=float, default=3.0, help="seconds idle after the CHECKPOINT"
    )
    phase.add_argument(
        "--samples", type=int, default=LATENCY_SAMPLES, help="latency samples (after warm-up)"
    )
    worker = commands.add_parser("worker", help="run one worker until terminated")
    worker.add_argument("--system", required=True)
    worker.add_argument("--dsn", required=True)
    worker.add_argument("--config", type=json.loads, default={}, help="worker configuration")
    info = commands.add_parser("versions", help="import the adapter, print versions as JSON")
    info.add_argument("--system", required=True)
    info.add_argument("names", nargs="*", help="distribution names")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING)
    adapter = load_adapter(args.system)
    if args.command == "worker":
        adapter.run_worker(args.dsn, args.config)
    elif args.command == "versions":
        print(json.dumps(versions(args.names)))
    else:
        try:
            result = asyncio.run(PHASES[args.phase](adapter, args))
        except Exception as exc:  # reported to the driver, which records it and goes on
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
