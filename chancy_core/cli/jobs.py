"""``chancy job ...``: push, list, get, wait, retry, cancel, delete and requeue jobs."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from chancy_core import admin
from chancy_core.app import Chancy
from chancy_core.cli.arguments import (
    STATES,
    _future_time,
    _group,
    _parse_time,
    _positive_int,
    _reading,
    _sub,
)
from chancy_core.cli.job_input import _job_from_line, add_job_arguments, job_from_arguments
from chancy_core.cli.output import (
    EXIT_ERROR,
    EXIT_JOB_FAILED,
    EXIT_OK,
    UsageError,
    _console,
    _print_json,
    _print_table,
    _styled,
    _when,
    log,
    show,
)
from chancy_core.errors import ConfigurationError, JobNotFoundError
from chancy_core.job import Job, Limit, QueuedJob


def _add_filter_arguments(parser: argparse.ArgumentParser, *, states: bool = True) -> None:
    parser.add_argument("--queue", default=None, help="only jobs of this queue")
    if states:
        parser.add_argument(
            "--state",
            action="append",
            choices=STATES,
            default=None,
            help="only jobs in this state (repeat for several)",
        )
    parser.add_argument("--func", default=None, help="only jobs of this function (full name)")
    parser.add_argument(
        "--since",
        type=_parse_time,
        default=None,
        metavar="TIME",
        help="only jobs created at or after TIME (ISO 8601, or a duration ago: 15m, 2h, 1d)",
    )
    parser.add_argument(
        "--until",
        type=_parse_time,
        default=None,
        metavar="TIME",
        help="only jobs created before TIME (ISO 8601, or a duration ago)",
    )


def _filter_of(args: argparse.Namespace) -> dict[str, Any]:
    found = {
        "queue": args.queue,
        "state": getattr(args, "state", None),
        "func": args.func,
        "since": args.since,
        "until": args.until,
    }
    return {k: v for k, v in found.items() if v is not None}


def _job_json(job: QueuedJob) -> dict[str, Any]:
    return job.pack()


async def _job_list(app: Chancy, args: argparse.Namespace) -> int:
    page = await app.list_jobs(limit=args.limit, cursor=args.cursor, **_filter_of(args))
    rows = [
        (
            job.id,
            job.queue,
            job.func,
            _styled(job.state.value),
            f"{job.attempts}/{job.max_attempts}",
            str(job.priority),
            job.scheduled_at.astimezone(UTC).strftime("%m-%d %H:%M:%S"),
            _last_error(job.errors[-1]["traceback"]) if job.errors else "",
        )
        for job in page.jobs
    ]
    show(
        args,
        {"jobs": [_job_json(j) for j in page.jobs], "next_cursor": page.next_cursor},
        ("ID", "QUEUE", "FUNC", "STATE", "TRIES", "PRIO", "DUE (UTC)", "LAST ERROR"),
        rows,
        empty="no jobs match",
    )
    if page.next_cursor and not args.json:
        print(f"more: chancy job list ... --cursor {page.next_cursor}", file=sys.stderr)
    return EXIT_OK


def _last_error(traceback_text: str, width: int = 120) -> str:
    """A traceback's last line, its exception type without the module (``TimeLimitExceeded:
    ...``), cut at ``width`` with an ellipsis (``job get`` shows it all)."""
    last = (str(traceback_text).strip().splitlines() or [""])[-1]
    last = re.sub(r"^[A-Za-z_][\w.]*\.(\w+:)", r"\1", last)
    return last if len(last) <= width else last[: width - 1] + "…"


async def _job_get(app: Chancy, args: argparse.Namespace) -> int:
    job = await app.get_job(args.ref)
    record = await app.execute(admin.job_record_op(app.schema, args.ref))
    if job is None or record is None:
        raise JobNotFoundError(f"no job {args.ref} (pruned, deleted or never pushed)")
    if args.json:
        _print_json({**_job_json(job), **record})
        return EXIT_OK
    _print_job(job, record)
    return EXIT_OK


def _print_job(job: QueuedJob, record: dict[str, Any] | None = None) -> None:
    console = _console()
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    rows = [
        ("id", job.id),
        ("func", job.func),
        ("queue", job.queue),
        ("state", _styled(job.state.value)),
        ("attempts", f"{job.attempts} of {job.max_attempts}"),
        ("priority", str(job.priority)),
        ("kwargs", json.dumps(job.kwargs, default=str)),
        *([("created_at", _when(record["created_at"]))] if record else []),
        ("scheduled_at", _when(job.scheduled_at)),
        ("started_at", _when(job.started_at)),
        ("completed_at", _when(job.completed_at)),
        *([("taken_by", record["taken_by"])] if record and record["taken_by"] else []),
        *(
            [("cancel asked", _when(record["cancelled_at"]))]
            if record and record["cancelled_at"]
            else []
        ),
        ("unique_key", job.unique_key or "-"),
        ("limits", ", ".join(f"{lim.type_.value}={lim.value}" for lim in job.limits) or "-"),
        ("meta", json.dumps(job.meta, default=str) if job.meta else "-"),
        *([("progress", _progress(job.progress))] if job.progress else []),
        *(
            [("result", json.dumps(job.result, default=str))]
            if job.state is QueuedJob.State.SUCCEEDED
            else []
        ),
        *([("result_error", job.result_error)] if job.result_error else []),
    ]
    for key, value in rows:
        table.add_row(key, value)
    _print_table(console, table)
    for error in job.errors:
        console.print(f"\n[bold red]attempt {error.get('attempt')}[/]")
        console.print(_user_frames(str(error.get("traceback", ""))).rstrip(), markup=False)


def _progress(progress: Any) -> str:
    fraction, message = progress.get("fraction"), progress.get("message")
    shown = f"{fraction:.0%}" if isinstance(fraction, int | float) else "?"
    return f"{shown} {message}" if message else shown


_INTERNAL = re.compile(r'^  File ".*[/\\](chancy_core|anyio|asyncio|concurrent)[/\\]')


def _user_frames(text: str) -> str:
    """A traceback without the frames of chancy, anyio and asyncio that run every job
    (``--json`` keeps them all)."""
    lines = text.splitlines()
    kept: list[str] = []
    hidden = 0
    skipping = False
    for line in lines:
        if line.startswith('  File "'):
            skipping = bool(_INTERNAL.match(line))
            hidden += skipping
        elif not line.startswith("    "):
            skipping = False
        if not skipping:
            kept.append(line)
    if hidden:
        kept.insert(
            1 if kept and kept[0].startswith("Traceback") else 0,
            f"  ({hidden} frames of chancy/anyio/asyncio hidden; --json shows them)",
        )
    return "\n".join(kept)


async def _job_wait(app: Chancy, args: argparse.Namespace) -> int:
    job = await app.wait_for_job(args.ref, timeout=args.timeout)
    if args.json:
        _print_json(_job_json(job))
    else:
        _print_job(job)
    return EXIT_OK if job.state is QueuedJob.State.SUCCEEDED else EXIT_JOB_FAILED


async def _on_matching(
    args: argparse.Namespace, what: str, act: Callable[..., Awaitable[int]], done: str
) -> bool:
    """``job retry/cancel/delete`` with filter options: ``act`` on every matching job and
    print ``done`` with the count; False when job references are given instead."""
    flt = _filter_of(args)
    if args.refs and flt:
        raise UsageError(f"job {what}: give job references or filter options, not both")
    if not args.refs and not flt:
        raise UsageError(
            f"job {what}: give job references, or filter options (--queue, --state, --func,"
            " --since, --until) to act on every matching job"
        )
    if args.refs:
        return False
    print(done.format(await act(**flt)))
    return True


async def _job_retry(app: Chancy, args: argparse.Namespace) -> int:
    if await _on_matching(args, "retry", app.retry_jobs, "retried {} job(s)"):
        return EXIT_OK
    for ref in args.refs:
        job = await app.retry_job(ref)
        print(f"retried {job.id} (attempt {job.attempts + 1} of {job.max_attempts})")
    return EXIT_OK


async def _job_cancel(app: Chancy, args: argparse.Namespace) -> int:
    if await _on_matching(args, "cancel", app.cancel_jobs, "cancelled {} job(s)"):
        return EXIT_OK
    status = EXIT_OK
    for ref in args.refs:
        if await app.cancel_job(ref):
            print(f"cancelled {ref}")
            continue
        job = await app.get_job(ref)
        if job is None:
            raise JobNotFoundError(f"no job {ref} (pruned, deleted or never pushed)")
        print(
            f"chancy: error: job {ref} is {job.state.value}: only a pending, retrying or running"
            " job can be cancelled",
            file=sys.stderr,
        )
        status = EXIT_ERROR
    return status


async def _job_delete(app: Chancy, args: argparse.Namespace) -> int:
    done = "deleted {} job(s) (running jobs are never deleted)"
    if await _on_matching(args, "delete", app.delete_jobs, done):
        return EXIT_OK
    for ref in args.refs:
        await app.delete_job(ref)
        print(f"deleted {ref}")
    return EXIT_OK


async def _job_requeue(app: Chancy, args: argparse.Namespace) -> int:
    job = await app.requeue_job(args.ref, queue=args.queue)
    if args.priority is not None:
        job = await app.set_job_priority(args.ref, args.priority)
    print(f"requeued {job.id} on queue {job.queue} (due now, priority {job.priority})")
    return EXIT_OK


async def _job_push(app: Chancy, args: argparse.Namespace) -> int:
    if args.file is not None:
        return await _push_file(app, args)
    if args.func is None:
        raise UsageError("job push: give a FUNC, or --file JOBS.jsonl")
    fields: dict[str, Any] = {}
    if args.unique_key is not None:
        fields["unique_key"] = args.unique_key
    if args.at is not None:
        fields["scheduled_at"] = args.at
    limits = [
        Limit(kind, value)
        for kind, value in (
            (Limit.Type.TIME, args.time_limit),
            (Limit.Type.MEMORY, args.memory_limit),
        )
        if value is not None
    ]
    if limits:
        fields["limits"] = limits
    job = job_from_arguments(args, **fields)
    ref = await app.push(job)
    if job.unique_key is not None:
        existing = await app.get_job(ref)
        if existing is not None and (existing.func, existing.kwargs) != (job.func, job.kwargs):
            log.warning(
                "unique key %r is held by job %s (%s, other kwargs): this push added nothing",
                job.unique_key,
                ref,
                existing.state.value,
            )
    if args.json:
        _print_json({"id": ref.identifier, "queue": job.queue, "func": job.func})
    else:
        print(ref.identifier)
    return EXIT_OK


async def _push_file(app: Chancy, args: argparse.Namespace) -> int:
    jobs: list[Job] = []
    try:
        stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise ConfigurationError(f"cannot read {args.file}: {exc.strerror}") from None
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            where = f"{args.file} line {number}"
            try:
                data = json.loads(line)
            except ValueError as exc:
                raise ConfigurationError(f"{where} is not JSON: {exc}") from None
            jobs.append(_job_from_line(data, where))
    progress = Progress(
        TextColumn("pushing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=args.quiet or (not sys.stderr.isatty() and not args.progress),
    )
    pushed = 0
    with progress:
        task = progress.add_task("push", total=len(jobs))
        for start in range(0, len(jobs), args.batch_size):
            batch = jobs[start : start + args.batch_size]
            await app.push_many(batch)
            pushed += len(batch)
            progress.update(task, completed=pushed)
    if args.json:
        _print_json({"pushed": pushed})
    else:
        print(f"pushed {pushed} job(s) from {args.file}")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Add ``chancy job ...`` to the subparsers ``sub``."""
    job = _group(sub, "job", "push, inspect and act on jobs")
    push = _sub(
        job,
        "push",
        "push a job (or many from a JSON-lines file); prints its reference",
        description="Push a job. Options not given come from the function's @job defaults"
        " when it can be imported. With --file, each line is a JSON object: func, and"
        " optionally kwargs, queue, priority, max_attempts, unique_key, scheduled_at.",
    )
    add_job_arguments(push)
    push.set_defaults(func=None)
    push.add_argument(
        "--unique-key",
        default=None,
        help="at most one unfinished job per key: a duplicate push returns the existing job",
    )
    push.add_argument(
        "--at",
        type=_future_time,
        default=None,
        metavar="TIME",
        help="run no earlier than TIME (ISO 8601, or a delay: 30s, 15m, 2h)",
    )
    push.add_argument(
        "--time-limit",
        type=_positive_int,
        default=None,
        metavar="SECONDS",
        help="stop the job after this many seconds (it then follows its retry policy)",
    )
    push.add_argument(
        "--memory-limit",
        type=_positive_int,
        default=None,
        metavar="BYTES",
        help="process queues: kill the job when its resident memory passes this",
    )
    push.add_argument(
        "--file",
        default=None,
        metavar="JOBS.jsonl",
        help="push every job of this JSON-lines file ('-' for stdin), with a progress bar",
    )
    push.add_argument(
        "--batch-size",
        type=_positive_int,
        default=1000,
        metavar="N",
        help="--file: jobs per transaction (default 1000)",
    )
    push.add_argument(
        "--progress",
        action="store_true",
        help="--file: show the progress bar even when stderr is not a terminal",
    )
    _reading(push)
    # func is optional with --file: make the positional optional.
    for action in push._actions:
        if action.dest == "func":
            action.nargs = "?"
    push.set_defaults(handler=_job_push)

    jlist = _sub(job, "list", "list jobs, newest first")
    _add_filter_arguments(jlist)
    jlist.add_argument(
        "--limit",
        type=_positive_int,
        default=20,
        metavar="N",
        help="jobs per page (default 20)",
    )
    jlist.add_argument(
        "--cursor", default=None, help="the next page: the cursor the previous page printed"
    )
    _reading(jlist)
    jlist.set_defaults(handler=_job_list)

    get = _sub(job, "get", "show a job, with the traceback of each failed attempt")
    get.add_argument("ref", help="the job's reference (id)")
    _reading(get)
    get.set_defaults(handler=_job_get)

    wait = _sub(
        job,
        "wait",
        "wait until a job finishes and show it (exit 0 succeeded, 5 failed, 4 timed out)",
    )
    wait.add_argument("ref", help="the job's reference (id)")
    wait.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="give up after this many seconds (default: wait for ever)",
    )
    _reading(wait)
    wait.set_defaults(handler=_job_wait)

    for name, text, handler in (
        ("retry", "run failed jobs again (a new attempt; their errors are kept)", _job_retry),
        ("cancel", "cancel waiting or running jobs", _job_cancel),
        ("delete", "delete jobs that are not running", _job_delete),
    ):
        p = _sub(job, name, text)
        p.add_argument("refs", nargs="*", metavar="REF", help="job references (ids)")
        _add_filter_arguments(p)
        p.set_defaults(handler=handler)

    requeue = _sub(job, "requeue", "make a waiting job due now, optionally on another queue")
    requeue.add_argument("ref", help="the job's reference (id)")
    requeue.add_argument("--queue", default=None, help="move it to this queue")
    requeue.add_argument("--priority", type=int, default=None, help="also set its priority")
    requeue.set_defaults(handler=_job_requeue)
