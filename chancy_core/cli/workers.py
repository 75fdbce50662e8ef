"""``chancy worker start`` (one process, or ``--processes N`` children) and ``chancy
worker list``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from chancy_core.app import Chancy
from chancy_core.cli.arguments import _group, _non_negative, _positive_int, _reading, _sub
from chancy_core.cli.loading import _import
from chancy_core.cli.output import EXIT_OK, EXIT_UNWRITTEN, UsageError, _ago, _error, log, show
from chancy_core.cli.queues import _describe
from chancy_core.errors import ConfigurationError, QueueNotFoundError, WorkerError
from chancy_core.queue import EXECUTORS, Queue
from chancy_core.worker import Worker


async def _worker_list(app: Chancy, args: argparse.Namespace) -> int:
    workers = await app.list_workers(timeout=args.timeout)
    data = [
        {
            "worker_id": w.worker_id,
            "hostname": w.hostname,
            "pid": w.pid,
            "queues": w.queues,
            "tags": w.tags,
            "started_at": w.started_at,
            "last_seen": w.last_seen,
            "heartbeat_age": w.heartbeat_age,
            "alive": w.alive,
            "running": w.running,
        }
        for w in workers
    ]
    rows = [
        (
            w.worker_id,
            w.hostname,
            str(w.pid),
            "[green]yes[/]" if w.alive else "[bold red]no[/]",
            f"{_ago(w.heartbeat_age)} ago",
            ",".join(w.queues) or "-",
            str(len(w.running)),
        )
        for w in workers
    ]
    columns = ("WORKER", "HOST", "PID", "ALIVE", "HEARTBEAT", "QUEUES", "RUNNING")
    return show(args, data, columns, rows, empty="no workers registered")


def _parse_queue(spec: str) -> tuple[str, int | None, str | None]:
    name, _, rest = spec.partition(":")
    concurrency, _, executor = rest.partition(":")
    if (concurrency and not concurrency.isdigit()) or (executor and executor not in EXECUTORS):
        raise UsageError(
            f"--queue {spec!r}: write NAME, NAME:CONCURRENCY or NAME:CONCURRENCY:EXECUTOR"
            f" (executor one of {', '.join(EXECUTORS)}), e.g. --queue emails:10:thread"
        )
    return name, int(concurrency) if concurrency else None, executor or None


async def _worker_start(app: Chancy, args: argparse.Namespace) -> int:
    for module in args.imports:
        _import(module, f"--import {module}: ")
    allowed = [*args.imports, *args.allow]
    if args.app:
        allowed.append(args.app.partition(":")[0].partition(".")[0])
    allow = None if args.allow_any else allowed
    for spec in args.queue:
        name, concurrency, executor = _parse_queue(spec)
        current = await app.get_queue(name)
        if not args.declare:
            if current is None:
                raise QueueNotFoundError(
                    f"--queue {name}: no queue of that name is declared; declare it (chancy queue"
                    f" declare {name} ...) or pass --declare to declare it with these settings"
                )
            if (concurrency, executor) != (None, None) and (
                (concurrency or current.concurrency, executor or current.executor)
                != (current.concurrency, current.executor)
            ):
                raise ConfigurationError(
                    f"--queue {spec}: the queue is declared with {_describe(current)}; a worker"
                    " never changes a queue unless --declare is given (which changes it for"
                    " every worker), or change it with `chancy queue update`"
                )
            continue
        if current is None:
            await app.declare(
                Queue(name, concurrency=concurrency or 1, executor=executor or "async")
            )
            log.warning("declared queue %s", name)
        else:
            changes: dict[str, Any] = {}
            if concurrency is not None:
                changes["concurrency"] = concurrency
            if executor is not None:
                changes["executor"] = executor
            if changes:
                updated = await app.update_queue(name, **changes)
                log.warning("updated queue %s for every worker: %s", name, _describe(updated))
    # The worker itself refuses the id of a live worker, warns when no plugin recovers dead
    # workers' jobs, and logs its plugins with their options at start.
    worker = Worker(
        app,
        worker_id=args.worker_id,
        tags=args.tags or None,
        allow=allow,
        shutdown_timeout=args.shutdown_timeout,
    )
    try:
        await worker.serve()
    except WorkerError as exc:
        if not worker.unwritten_at_shutdown:
            raise
        return _error(str(exc), EXIT_UNWRITTEN)
    return EXIT_OK


def _option_value(argv: list[str], name: str) -> str | None:
    """The value of option ``name`` in ``argv`` (the last one), removing every occurrence."""
    found = None
    n = 0
    while n < len(argv):
        if argv[n] == name and n + 1 < len(argv):
            found = argv[n + 1]
            del argv[n : n + 2]
        elif argv[n].startswith(name + "="):
            found = argv[n].partition("=")[2]
            del argv[n]
        else:
            n += 1
    return found


def _child_argv(argv: Sequence[str], worker_id: str | None, n: int) -> list[str]:
    """The arguments of child ``n`` (from 0) of ``worker start --processes N``: the parent's,
    for one process, with the id ``ID-<n + 1>`` when the worker id is ``ID``.

    The child's values come last, and the last value of an option wins: an abbreviation
    argparse accepts (``--proc 3``, ``--worker w``) cannot reach a child, which would then
    start children of its own, or share one id with its siblings."""
    child = list(argv)
    _option_value(child, "--processes")
    _option_value(child, "--worker-id")
    return [
        *child,
        "--processes",
        "1",
        *(["--worker-id", f"{worker_id}-{n + 1}"] if worker_id else []),
    ]


def _start_processes(argv: Sequence[str], count: int, worker_id: str | None) -> int:
    """Run ``count`` worker processes with the same arguments; forward SIGINT/SIGTERM.

    Child ``n`` gets ``$CHANCY_PROCESS_INDEX=n`` (0 to ``count - 1``; e.g. a metrics port
    per child) and, with ``--worker-id ID``, the id ``ID-<n + 1>``.
    """
    # Each child in its own process group: a terminal's Ctrl-C (sent to the foreground
    # group) reaches only this parent, which forwards it once; a child that got it twice
    # would take the second as "stop now" instead of draining its jobs.
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "chancy_core.cli", *_child_argv(argv, worker_id, n)],
            env={**os.environ, "CHANCY_PROCESS_INDEX": str(n)},
            process_group=0,
        )
        for n in range(count)
    ]

    def forward(signum: int, frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [child.wait() for child in children]
    return max(codes, default=0)


def leave_abandoned_threads(status: int) -> None:
    """End the process now if threads outlive the worker that stopped.

    Python cannot stop a thread: a thread-executor job still running when the shutdown
    timeout ran out was abandoned (and put back to ``pending``), and as a non-daemon
    thread it would keep the process, and itself, running until it returns. Exiting at
    once ends it with the process. Call this after ``Worker.serve()`` returns in a
    process of your own that serves thread queues."""
    current = threading.current_thread()
    others = [t for t in threading.enumerate() if t is not current and not t.daemon]
    deadline = time.monotonic() + 1.0  # idle pool threads are ending: give them a moment
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in others):
        log.warning(
            "threads still run after the worker stopped (abandoned jobs); exiting without them"
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def add_commands(sub: Any) -> None:
    """Add ``chancy worker ...`` to the subparsers ``sub``."""
    worker = _group(sub, "worker", "run workers and see them")
    start = _sub(
        worker,
        "start",
        "run a worker until SIGINT/SIGTERM",
        description="Run a worker with the app's plugins. It runs only functions registered"
        " with @job, from the --import modules, --allow prefixes or the --app's package, unless"
        " --allow-any is given.",
    )
    start.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (registering its @job functions) and allow its functions",
    )
    start.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PREFIX",
        help="also allow functions under this module prefix",
    )
    start.add_argument(
        "--allow-any",
        action="store_true",
        help="run any importable function a job names (dangerous)",
    )
    start.add_argument(
        "--queue",
        action="append",
        default=[],
        metavar="NAME[:N[:EXECUTOR]]",
        help="check that this queue is declared as given (with --declare: declare it, or change"
        " the given settings for every worker); executor one of " + ", ".join(EXECUTORS),
    )
    start.add_argument(
        "--declare",
        action="store_true",
        help="let --queue declare missing queues and change existing ones",
    )
    start.add_argument(
        "--tags",
        action="append",
        metavar="TAG",
        help="worker tag (repeat); a queue is served by workers whose tags match its patterns",
    )
    start.add_argument(
        "--worker-id",
        default=None,
        help="the worker's id (default: random); with --processes N, ID-1 ... ID-N. A worker"
        " whose id is alive elsewhere refuses to start",
    )
    start.add_argument(
        "--shutdown-timeout",
        type=_non_negative,
        default=30.0,
        metavar="SECONDS",
        help="how long running jobs get to finish on SIGTERM/SIGINT (default 30)",
    )
    start.add_argument(
        "--processes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="run N worker processes on this host (default 1)",
    )
    start.set_defaults(handler=_worker_start)
    wlist = _sub(worker, "list", "list registered workers, their heartbeat and running jobs")
    wlist.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a worker is alive if it beat within this many seconds (default 60)",
    )
    _reading(wlist)
    wlist.set_defaults(handler=_worker_list)
