"""The ``chancy`` command line.

Every command takes ``--dsn`` (default: ``$CHANCY_DSN``, else the embedded
server) and ``--prefix``. Errors print one line saying what to do and exit
with status 1 (2 for usage errors). Plugins add commands through the
``chancy_register_commands`` hook.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

import anyio

from chancy_core.app import Chancy
from chancy_core.errors import ChancyError
from chancy_core.job import Job
from chancy_core.plugins import ENTRY_POINT_GROUP, build_plugin_manager, registered
from chancy_core.queue import EXECUTORS, Queue
from chancy_core.worker import Worker

__all__ = ["add_job_arguments", "job_from_arguments", "main"]

Handler = Callable[[Chancy, argparse.Namespace], Awaitable[int]]


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


# --- commands ----------------------------------------------------------------------------


async def _migrate(app: Chancy, args: argparse.Namespace) -> int:
    applied = await app.migrate()
    for label in applied:
        print(f"applied {label}")
    print(f"{len(applied)} migration(s) applied; the database is up to date")
    return 0


async def _worker_start(app: Chancy, args: argparse.Namespace) -> int:
    for module in args.imports:
        importlib.import_module(module)
    allow = None if args.allow_any else [*args.imports, *args.allow]
    for spec in args.queue:
        await app.declare(_parse_queue(spec))
    worker = Worker(
        app,
        worker_id=args.worker_id,
        tags=args.tags or None,
        allow=allow,
        shutdown_timeout=args.shutdown_timeout,
    )
    await worker.serve()
    return 0


def _parse_queue(spec: str) -> Queue:
    name, _, rest = spec.partition(":")
    concurrency, _, executor = rest.partition(":")
    if concurrency and not concurrency.isdigit():
        raise ChancyError(
            f"--queue {spec!r}: write NAME, NAME:CONCURRENCY or"
            " NAME:CONCURRENCY:EXECUTOR, e.g. --queue emails:10:thread"
        )
    return Queue(name, concurrency=int(concurrency or 1), executor=executor or "async")


def _start_processes(argv: Sequence[str], count: int) -> int:
    """Run ``count`` worker processes with the same arguments; forward SIGINT/SIGTERM.

    Child ``n`` gets ``$CHANCY_PROCESS_INDEX=n``.
    """
    child_argv = [a for a in argv if not a.startswith("--processes")]
    if "--processes" in argv:
        i = list(argv).index("--processes")
        child_argv = [*argv[:i], *argv[i + 2 :]]
    # Each child learns its index (0..count-1), e.g. for a metrics port per child.
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "chancy_core.cli", *child_argv],
            env={**os.environ, "CHANCY_PROCESS_INDEX": str(n)},
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


async def _queue_declare(app: Chancy, args: argparse.Namespace) -> int:
    queue = Queue(
        args.name,
        concurrency=args.concurrency,
        executor=args.executor,
        polling_interval=args.polling_interval,
        rate_limit=args.rate_limit,
        rate_limit_window=args.rate_limit_window,
        tags=frozenset(args.tags or ["*"]),
    )
    await app.declare(queue)
    print(f"declared queue {queue.name}")
    return 0


async def _queue_list(app: Chancy, args: argparse.Namespace) -> int:
    for queue in await app.get_all_queues():
        print(
            f"{queue.name}\t{queue.state.value}\t{queue.executor}\tconcurrency={queue.concurrency}"
        )
    return 0


def _queue_change(action: str) -> Handler:
    async def change(app: Chancy, args: argparse.Namespace) -> int:
        changed = await getattr(app, f"{action}_queue")(args.name)
        if not changed:
            print(
                f"chancy: error: no queue named {args.name!r}; see `chancy queue list`",
                file=sys.stderr,
            )
            return 1
        print(f"{action.rstrip('e')}ed queue {args.name}")
        return 0

    return change


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments that describe a job (``func``, ``--kwargs``, ``--queue``,
    ``--priority``, ``--max-attempts``); read them back with :func:`job_from_arguments`.
    Plugins' commands that take a job use the pair too."""
    parser.add_argument("func", help="importable function, e.g. myapp.tasks.send")
    parser.add_argument("--kwargs", default="{}", help="keyword arguments as a JSON object")
    parser.add_argument("--queue", default="default")
    parser.add_argument("--priority", type=int, default=0)
    parser.add_argument("--max-attempts", type=int, default=1)


def job_from_arguments(args: argparse.Namespace, **fields: Any) -> Job:
    """The job described by :func:`add_job_arguments`'s arguments (plus ``fields``)."""
    try:
        kwargs = json.loads(args.kwargs)
    except ValueError as exc:
        raise ChancyError(
            f"--kwargs is not valid JSON ({exc}): e.g. --kwargs '{{\"x\": 1}}'"
        ) from None
    return Job(
        func=args.func,
        queue=args.queue,
        kwargs=kwargs,
        priority=args.priority,
        max_attempts=args.max_attempts,
        **fields,
    )


async def _job_push(app: Chancy, args: argparse.Namespace) -> int:
    job = job_from_arguments(args, unique_key=args.unique_key)
    print((await app.push(job)).identifier)
    return 0


async def _job_get(app: Chancy, args: argparse.Namespace) -> int:
    job = await app.get_job(args.ref)
    if job is None:
        print(f"chancy: error: no job {args.ref}", file=sys.stderr)
        return 1
    _print(job.pack())
    return 0


async def _job_wait(app: Chancy, args: argparse.Namespace) -> int:
    job = await app.wait_for_job(args.ref, timeout=args.timeout)
    _print(job.pack())
    return 0 if job.state is job.State.SUCCEEDED else 1


async def _job_cancel(app: Chancy, args: argparse.Namespace) -> int:
    if await app.cancel_job(args.ref):
        print(f"cancelled {args.ref}")
        return 0
    print(f"chancy: error: job {args.ref} is not pending, retrying or running", file=sys.stderr)
    return 1


def _plugins(args: argparse.Namespace) -> int:
    pm = build_plugin_manager(None, autoload=None)
    dists = {ep.name: ep.dist for ep in entry_points(group=ENTRY_POINT_GROUP)}
    rows: list[tuple[str, str, str]] = []
    for name, plugin in registered(pm):
        dist = dists.get(name)
        source = f"{dist.name} {dist.version}" if dist else "(not installed: given in code)"
        implemented = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append((name, source, ", ".join(implemented)))
    if not rows:
        print(
            f"no plugins installed (pip install chancy-plugin-<name>; group {ENTRY_POINT_GROUP!r})"
        )
        return 0
    widths = [max(len(row[i]) for row in [("PLUGIN", "DISTRIBUTION", ""), *rows]) for i in (0, 1)]
    print(f"{'PLUGIN':<{widths[0]}}  {'DISTRIBUTION':<{widths[1]}}  HOOKS")
    for name, source, hooks in rows:
        print(f"{name:<{widths[0]}}  {source:<{widths[1]}}  {hooks}")
    return 0


# --- the parser --------------------------------------------------------------------------


def build_parser(pm: Any) -> argparse.ArgumentParser:
    """The ``chancy`` argument parser, with plugins' commands."""
    parser = argparse.ArgumentParser(
        prog="chancy", description="A distributed job queue on PostgreSQL."
    )
    parser.add_argument(
        "--dsn",
        default=None,
        help="PostgreSQL DSN (default: $CHANCY_DSN, else the embedded server)",
    )
    parser.add_argument("--prefix", default="chancy_", help="table prefix (default: chancy_)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("migrate", help="create or update the tables").set_defaults(handler=_migrate)

    worker = sub.add_parser("worker", help="run workers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    start = worker.add_parser(
        "start",
        help="run a worker until SIGINT/SIGTERM",
        description="Run a worker. It only runs functions from the --import modules (and"
        " --allow prefixes) unless --allow-any is given.",
    )
    start.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE (registering its @job functions) and allow it",
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
        help="declare this queue before starting (concurrency N, executor"
        f" one of {', '.join(EXECUTORS)})",
    )
    start.add_argument("--tags", action="append", metavar="TAG", help="worker tags")
    start.add_argument("--worker-id", default=None, help="worker id (default: random)")
    start.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long running jobs get to finish on SIGTERM (default 30)",
    )
    start.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N worker processes on this host (default 1)",
    )
    start.set_defaults(handler=_worker_start)

    queue = sub.add_parser("queue", help="administer queues").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    declare = queue.add_parser("declare", help="create or update a queue")
    declare.add_argument("name")
    declare.add_argument("--concurrency", type=int, default=1)
    declare.add_argument("--executor", choices=EXECUTORS, default="async")
    declare.add_argument("--polling-interval", type=float, default=1.0)
    declare.add_argument("--rate-limit", type=int, default=None)
    declare.add_argument("--rate-limit-window", type=int, default=None, metavar="SECONDS")
    declare.add_argument("--tags", action="append", metavar="PATTERN")
    declare.set_defaults(handler=_queue_declare)
    queue.add_parser("list", help="list queues").set_defaults(handler=_queue_list)
    for action in ("pause", "resume", "delete"):
        p = queue.add_parser(action, help=f"{action} a queue")
        p.add_argument("name")
        p.set_defaults(handler=_queue_change(action))

    job = sub.add_parser("job", help="push and inspect jobs").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    push = job.add_parser("push", help="push a job; prints its reference")
    add_job_arguments(push)
    push.add_argument("--unique-key", default=None)
    push.set_defaults(handler=_job_push)
    for action, handler in (("get", _job_get), ("cancel", _job_cancel), ("wait", _job_wait)):
        p = job.add_parser(action, help=f"{action} a job")
        p.add_argument("ref", help="the job's reference")
        if action == "wait":
            p.add_argument("--timeout", type=float, default=None)
        p.set_defaults(handler=handler)

    sub.add_parser("plugins", help="list installed plugins and their hooks").set_defaults(
        local=_plugins
    )
    pm.hook.chancy_register_commands(subparsers=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``chancy`` command; returns the exit status."""
    from_command_line = argv is None  # the process is the command's own: it may end it
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        pm = build_plugin_manager(None)
        args = build_parser(pm).parse_args(argv)
    except ChancyError as exc:
        print(f"chancy: error: {exc}", file=sys.stderr)
        return 1
    base = logging.INFO if args.command == "worker" else logging.WARNING
    logging.basicConfig(
        level=max(logging.DEBUG, base - 10 * args.verbose),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "local", None):
        return int(args.local(args))
    if args.command == "worker" and args.processes > 1:
        return _start_processes(argv, args.processes)

    async def run() -> int:
        async with Chancy(args.dsn, prefix=args.prefix) as app:
            status: int = await args.handler(app, args)
            return status

    try:
        status = anyio.run(run)
        if args.command == "worker" and from_command_line:
            leave_abandoned_threads(status)
        return status
    except ChancyError as exc:
        print(f"chancy: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


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
        logging.getLogger(__name__).warning(
            "threads still run after the worker stopped (abandoned jobs); exiting without them"
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


if __name__ == "__main__":
    raise SystemExit(main())
