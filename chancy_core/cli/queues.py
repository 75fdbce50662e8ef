"""``chancy queue ...``: declare, update, list, stats, pause, resume, purge and delete."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from chancy_core.app import Chancy
from chancy_core.cli.arguments import STATES, _future_time, _group, _positive_int, _reading, _sub
from chancy_core.cli.output import EXIT_OK, UsageError, _ago, _styled, _when, show
from chancy_core.errors import ConfigurationError, QueueNotFoundError
from chancy_core.queue import EXECUTORS, Queue


def _add_queue_settings(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The settings of a queue; ``defaults`` False: None means "leave it as it is"."""

    def shown(value: Any) -> Any:
        return value if defaults else None

    keep = "" if defaults else " (default: unchanged)"
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=shown(1),
        metavar="N",
        help=f"jobs of the queue one worker runs at once{' (default 1)' if defaults else keep}",
    )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default=shown("async"),
        help="async: coroutine functions on the event loop; thread: sync functions in a thread"
        " pool; process: CPU-bound functions in child processes"
        + (" (default async)" if defaults else keep),
    )
    parser.add_argument(
        "--polling-interval",
        type=float,
        default=shown(1.0),
        metavar="SECONDS",
        help="seconds between fetches when no notification arrives"
        + (" (default 1)" if defaults else keep),
    )
    parser.add_argument(
        "--rate-limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"at most N jobs start per --rate-limit-window, across all workers{keep}",
    )
    parser.add_argument(
        "--rate-limit-window",
        type=_positive_int,
        default=None,
        metavar="SECONDS",
        help=f"the rate limit's window in seconds{keep}",
    )
    parser.add_argument(
        "--tags",
        action="append",
        metavar="PATTERN",
        help="glob pattern of worker tags that serve the queue (repeat for several;"
        + (" default '*': every worker)" if defaults else " replaces the current ones)"),
    )
    parser.add_argument(
        "--max-tasks-per-child",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"process executor: restart each child after N jobs{keep}",
    )


async def _queue_declare(app: Chancy, args: argparse.Namespace) -> int:
    if not args.replace and await app.get_queue(args.name) is not None:
        raise ConfigurationError(
            f"queue {args.name!r} is already declared: change it with `chancy queue update"
            f" {args.name} --concurrency N ...` (only what you give changes), or pass"
            " --replace to reset every setting you leave out"
        )
    options = {"max_tasks_per_child": args.max_tasks_per_child} if args.max_tasks_per_child else {}
    queue = Queue(
        args.name,
        concurrency=args.concurrency,
        executor=args.executor,
        executor_options=options,
        polling_interval=args.polling_interval,
        rate_limit=args.rate_limit,
        rate_limit_window=args.rate_limit_window,
        tags=frozenset(args.tags or ["*"]),
        state=Queue.State.PAUSED if args.paused else Queue.State.ACTIVE,
    )
    await app.declare(queue)
    print(f"declared queue {queue.name} ({_describe(queue)})")
    return EXIT_OK


def _describe(queue: Queue) -> str:
    parts = [queue.state.value, queue.executor, f"concurrency {queue.concurrency}"]
    if queue.rate_limit:
        parts.append(f"rate {queue.rate_limit}/{queue.rate_limit_window}s")
    if queue.tags != frozenset({"*"}):
        parts.append(f"tags {','.join(sorted(queue.tags))}")
    return ", ".join(parts)


async def _queue_update(app: Chancy, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    for name in ("concurrency", "executor", "polling_interval", "rate_limit", "rate_limit_window"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.no_rate_limit:
        changes["rate_limit"] = changes["rate_limit_window"] = None
    if args.tags:
        changes["tags"] = frozenset(args.tags)
    if args.max_tasks_per_child is not None:
        current = await app.get_queue(args.name)
        options = dict(current.executor_options) if current else {}
        changes["executor_options"] = {**options, "max_tasks_per_child": args.max_tasks_per_child}
    if not changes:
        raise UsageError("queue update: give at least one setting to change (see --help)")
    queue = await app.update_queue(args.name, **changes)
    print(f"updated queue {queue.name} ({_describe(queue)})")
    return EXIT_OK


async def _queue_list(app: Chancy, args: argparse.Namespace) -> int:
    stats = [(s, s.queue) for s in await app.queue_stats() if s.queue is not None]
    rows = [
        (
            q.name,
            _styled(q.state.value) + (f" until {_when(s.resume_at)}" if s.resume_at else ""),
            q.executor,
            str(q.concurrency),
            f"{q.rate_limit}/{q.rate_limit_window}s" if q.rate_limit else "-",
            ",".join(sorted(q.tags)),
            str(s.counts["pending"] + s.counts["retrying"]),
            str(s.counts["running"]),
        )
        for s, q in stats
    ]
    return show(
        args,
        [_queue_json(q, s) for s, q in stats],
        ("QUEUE", "STATE", "EXECUTOR", "CONCURRENCY", "RATE LIMIT", "TAGS", "WAITING", "RUNNING"),
        rows,
        empty="no queues declared (declare one: chancy queue declare NAME)",
    )


def _queue_json(queue: Queue, stats: Any = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": queue.name,
        "state": queue.state.value,
        "concurrency": queue.concurrency,
        "executor": queue.executor,
        "executor_options": queue.executor_options,
        "polling_interval": queue.polling_interval,
        "rate_limit": queue.rate_limit,
        "rate_limit_window": queue.rate_limit_window,
        "tags": sorted(queue.tags),
    }
    if stats is not None:
        found["resume_at"] = stats.resume_at
        found["counts"] = stats.counts
    return found


async def _queue_stats(app: Chancy, args: argparse.Namespace) -> int:
    stats = await app.queue_stats()
    data = [
        {
            "name": s.name,
            "declared": s.queue is not None,
            "state": s.queue.state.value if s.queue else None,
            "resume_at": s.resume_at,
            "counts": s.counts,
            "oldest_pending_at": s.oldest_pending_at,
            "oldest_pending_age": s.oldest_pending_age,
        }
        for s in stats
    ]
    rows = [
        (
            s.name,
            _styled(s.queue.state.value) if s.queue else "[bold red]NOT DECLARED[/]",
            *[str(s.counts[name]) for name in STATES],
            _ago(s.oldest_pending_age),
        )
        for s in stats
    ]
    columns = ("QUEUE", "STATE", *[s.upper() for s in STATES], "OLDEST WAITING")
    show(args, data, columns, rows, empty="no queues and no jobs")
    if not args.json and any(
        s.queue is None and (s.counts["pending"] or s.counts["retrying"]) for s in stats
    ):
        print(
            "queues marked NOT DECLARED hold waiting jobs no worker runs: declare them"
            " (chancy queue declare NAME) or purge them",
            file=sys.stderr,
        )
    return EXIT_OK


def _missing_queue(name: str) -> QueueNotFoundError:
    return QueueNotFoundError(f"no queue named {name!r}; see `chancy queue list`")


async def _queue_pause(app: Chancy, args: argparse.Namespace) -> int:
    if not await app.pause_queue(args.name, resume_at=args.until):
        raise _missing_queue(args.name)
    until = f" until {_when(args.until)} UTC" if args.until else ""
    print(f"paused queue {args.name}{until}")
    return EXIT_OK


async def _queue_resume(app: Chancy, args: argparse.Namespace) -> int:
    if not await app.resume_queue(args.name):
        raise _missing_queue(args.name)
    print(f"resumed queue {args.name}")
    return EXIT_OK


async def _queue_delete(app: Chancy, args: argparse.Namespace) -> int:
    if not await app.delete_queue(args.name, purge_jobs=args.purge, keep_jobs=args.keep_jobs):
        raise _missing_queue(args.name)
    print(f"deleted queue {args.name}")
    return EXIT_OK


async def _queue_purge(app: Chancy, args: argparse.Namespace) -> int:
    states = args.state or ["pending", "retrying"]
    count = await app.delete_jobs(queue=args.name, state=states)
    print(f"deleted {count} {'/'.join(states)} job(s) of queue {args.name}")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Add ``chancy queue ...`` to the subparsers ``sub``."""
    queue = _group(sub, "queue", "declare, change and inspect queues")
    declare = _sub(queue, "declare", "declare a new queue")
    declare.add_argument("name", help="the queue's name")
    _add_queue_settings(declare, defaults=True)
    declare.add_argument("--paused", action="store_true", help="declare it paused")
    declare.add_argument(
        "--replace",
        action="store_true",
        help="replace an existing queue's settings (every setting left out is reset)",
    )
    declare.set_defaults(handler=_queue_declare)
    update = _sub(queue, "update", "change only the given settings of a queue")
    update.add_argument("name", help="the queue's name")
    _add_queue_settings(update, defaults=False)
    update.add_argument("--no-rate-limit", action="store_true", help="remove the rate limit")
    update.set_defaults(handler=_queue_update)
    qlist = _sub(queue, "list", "list declared queues with their settings and depth")
    _reading(qlist)
    qlist.set_defaults(handler=_queue_list)
    stats = _sub(queue, "stats", "jobs per state of every queue, and the oldest waiting job")
    _reading(stats)
    stats.set_defaults(handler=_queue_stats)
    pause = _sub(queue, "pause", "stop workers from starting the queue's jobs")
    pause.add_argument("name", help="the queue's name")
    pause.add_argument(
        "--until",
        type=_future_time,
        default=None,
        metavar="TIME",
        help="resume by itself at TIME (ISO 8601, or a duration from now: 30m, 2h)",
    )
    pause.set_defaults(handler=_queue_pause)
    resume = _sub(queue, "resume", "let workers start the queue's jobs again")
    resume.add_argument("name", help="the queue's name")
    resume.set_defaults(handler=_queue_resume)
    purge = _sub(queue, "purge", "delete the queue's waiting jobs")
    purge.add_argument("name", help="the queue's name")
    purge.add_argument(
        "--state",
        action="append",
        choices=["pending", "retrying", "succeeded", "failed"],
        help="delete jobs in this state instead (repeat; default pending and retrying)",
    )
    purge.set_defaults(handler=_queue_purge)
    delete = _sub(queue, "delete", "delete a queue (refused while it has unfinished jobs)")
    delete.add_argument("name", help="the queue's name")
    how = delete.add_mutually_exclusive_group()
    how.add_argument(
        "--purge",
        action="store_true",
        help="also delete its waiting jobs and cancel its running ones",
    )
    how.add_argument(
        "--keep-jobs",
        action="store_true",
        help="leave its jobs waiting until the queue is declared again",
    )
    delete.set_defaults(handler=_queue_delete)
