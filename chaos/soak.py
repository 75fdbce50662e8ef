"""The soak run: hours of ordinary work with the odd crash, watching what grows.

``python -m chaos.soak --minutes 30`` (``nox -s soak``; not in CI): on a server of its
own (durable settings: fsync on), pushers feed a steady stream of jobs to 4 worker
processes (recovery and pruner plugins installed; the pruner keeps succeeded jobs for
``--retention`` seconds), and a random worker is SIGKILLed every ``--kill-every``
seconds and replaced. Every ``--sample-every`` seconds it records throughput, the
backlog, the jobs table's and its indexes' sizes, dead tuples and autovacuum /
autoanalyze counts (``pg_stat_user_tables``). At the end it drains, stops the workers
and checks that no job was lost and none ran twice except after a kill of its worker;
it prints a table and writes ``--json``. Exit status 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from chancy_core import Chancy, Job, Queue
from chaos import harness as h

STATS = """
SELECT pg_relation_size(relid), pg_indexes_size(relid), n_live_tup, n_dead_tup,
       autovacuum_count, autoanalyze_count
FROM pg_stat_user_tables WHERE relname = 'chancy_jobs'
"""
DONE = "SELECT count(DISTINCT job_id) FROM chaos_executions WHERE finished_at IS NOT NULL"
WAITING = "SELECT count(*) FROM chancy_jobs WHERE state IN ('pending', 'retrying', 'running')"
# One pass over the executions (the suite's self-join is too slow for a soak's millions):
# runs of a job that began before an earlier run of it ended (a kill ends a run at the
# latest when its worker was killed), and re-runs whose previous run's worker was not
# killed.
CHECKS = """
WITH x AS (
    SELECT x.job_id, x.started_at,
           coalesce(x.finished_at, k.killed_at, 'infinity') AS ended_at,
           k.killed_at IS NOT NULL AS killed
    FROM chaos_executions AS x LEFT JOIN chaos_kills AS k USING (worker_id)
), w AS (
    SELECT started_at,
           max(ended_at) OVER (PARTITION BY job_id ORDER BY started_at
                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before_end,
           lag(killed) OVER (PARTITION BY job_id ORDER BY started_at) AS before_killed
    FROM x
)
SELECT count(*) FILTER (WHERE before_end > started_at),
       count(*) FILTER (WHERE before_killed IS FALSE),
       count(*) FILTER (WHERE before_killed IS NOT NULL)
FROM w
"""


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    with h.own_server(fsync="on", full_page_writes="on", log_autovacuum_min_duration="0") as srv:
        dsn = h.create_database(srv, "soak")
        from chancy_plugin_pruner import Pruner
        from chancy_plugin_recovery import Recovery

        async with Chancy(dsn, autoload_plugins=False, plugins=[Recovery(), Pruner()]) as app:
            await app.migrate()
            await app.declare(Queue("soak", concurrency=20, polling_interval=0.5))
            count = 0

            def spawn() -> h.WorkerProcess:
                nonlocal count
                count += 1
                config = h.worker_config(
                    dsn,
                    f"s{count}",
                    heartbeat_interval=1.0,
                    shutdown_timeout=10.0,
                    recovery={"interval": 2.0, "worker_timeout": 10.0},
                    pruner={"retention": {"succeeded": args.retention}, "interval": 10.0},
                )
                return h.WorkerProcess(config, logdir)

            live = [spawn() for _ in range(4)]
            every: list[h.WorkerProcess] = list(live)
            await h.wait_registered(dsn, [w.worker_id for w in live])
            pushed = kills = 0
            samples: list[dict[str, Any]] = []
            began = time.monotonic()
            end = began + args.minutes * 60

            async def push() -> None:
                nonlocal pushed
                while time.monotonic() < end:
                    batch = [
                        Job(
                            func="chaos.jobs.tracked",
                            queue="soak",
                            kwargs={"seconds": round(rng.uniform(0.001, 0.05), 3)},
                        )
                        for _ in range(max(1, int(args.rate / 10)))
                    ]
                    await app.push_many(batch)
                    pushed += len(batch)
                    await anyio.sleep(0.1)

            async def kill() -> None:
                nonlocal kills
                while time.monotonic() + args.kill_every < end:
                    await anyio.sleep(args.kill_every)
                    victim = live.pop(rng.randrange(len(live)))
                    await anyio.to_thread.run_sync(victim.kill_group)
                    await h.rows(
                        dsn,
                        "INSERT INTO chaos_kills (worker_id, pid, killed_at)"
                        " VALUES (%s, %s, clock_timestamp())",
                        (victim.worker_id, victim.pid),
                    )
                    kills += 1
                    fresh = spawn()
                    live.append(fresh)
                    every.append(fresh)

            async def sample() -> None:
                last_done, last_t = 0, time.monotonic()
                while time.monotonic() < end:
                    await anyio.sleep(args.sample_every)
                    now = time.monotonic()
                    done = int(await h.scalar(dsn, DONE))
                    size, idx, live_t, dead, vac, ana = (await h.rows(dsn, STATS))[0]
                    samples.append(
                        {
                            "t": round(now - began),
                            "jobs_per_s": round((done - last_done) / (now - last_t), 1),
                            "waiting": int(await h.scalar(dsn, WAITING)),
                            "table_kb": size // 1024,
                            "indexes_kb": idx // 1024,
                            "live": live_t,
                            "dead": dead,
                            "autovacuums": vac,
                            "autoanalyzes": ana,
                        }
                    )
                    print(json.dumps(samples[-1]), flush=True)
                    last_done, last_t = done, now

            async with anyio.create_task_group() as tg:
                tg.start_soon(push)
                tg.start_soon(kill)
                tg.start_soon(sample)
            await h.wait_until(
                lambda: h.scalar(dsn, DONE), lambda n: n >= pushed, 300, "the drain", every=1.0
            )
            codes = await h.stop_workers(live)
            overlaps, unexplained, reruns = (await h.rows(dsn, CHECKS))[0]
            done = int(await h.scalar(dsn, DONE))
            for worker in every:
                worker.cleanup()
    return {
        "minutes": args.minutes,
        "pushed": pushed,
        "executed": done,
        "kills": kills,
        "reruns": reruns,
        "unexplained_reruns": unexplained,
        "overlaps": overlaps,
        "exit_codes": codes,
        "samples": samples,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=300.0, help="jobs pushed per second")
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between kills")
    parser.add_argument("--sample-every", type=float, default=30.0)
    parser.add_argument("--retention", type=float, default=60.0, help="pruner: succeeded, s")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--json", default="soak.json")
    parser.add_argument("--logdir", default="/tmp/chancy-soak-logs")
    args = parser.parse_args(argv)
    found = anyio.run(soak, args)
    Path(args.json).write_text(json.dumps(found, indent=2))
    print(f"{'t (s)':>6} {'jobs/s':>8} {'waiting':>8} {'table kB':>9} {'index kB':>9}"
          f" {'dead':>8} {'autovac':>7} {'autoanl':>7}")  # fmt: skip
    for s in found["samples"]:
        print(f"{s['t']:>6} {s['jobs_per_s']:>8} {s['waiting']:>8} {s['table_kb']:>9}"
              f" {s['indexes_kb']:>9} {s['dead']:>8} {s['autovacuums']:>7}"
              f" {s['autoanalyzes']:>7}")  # fmt: skip
    summary = {k: v for k, v in found.items() if k != "samples"}
    print(json.dumps(summary))
    ok = (
        found["executed"] == found["pushed"]
        and found["unexplained_reruns"] == 0
        and found["overlaps"] == 0
        and all(c == 0 for c in found["exit_codes"])
    )
    print("soak: ok" if ok else "soak: FAILED (lost, doubled or unclean exit)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
