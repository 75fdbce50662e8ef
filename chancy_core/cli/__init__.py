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

Its parts, each a module of this package:

* :mod:`~chancy_core.cli.output`: the one table/JSON printer :func:`show`, colours,
  one-line errors and the exit codes;
* :mod:`~chancy_core.cli.loading`: which app a command uses (``--app``, ``--dsn``,
  ``--embedded``) and importing ``--import`` modules;
* :mod:`~chancy_core.cli.arguments`: the common options, the parser's helpers and the
  types of option values;
* :mod:`~chancy_core.cli.job_input`: jobs given on the command line or as JSON lines;
* one module per group of commands: :mod:`~chancy_core.cli.maintenance` (``migrate``,
  ``check``, ``prune``, ``plugins``), :mod:`~chancy_core.cli.workers` (``worker start``
  with ``--processes``, ``worker list``), :mod:`~chancy_core.cli.queues` (``queue ...``)
  and :mod:`~chancy_core.cli.jobs` (``job ...``);
* :mod:`~chancy_core.cli.logs`: the log lines, as text or JSON.

This module assembles the parser and runs a command (:func:`main`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import anyio
import pluggy

from chancy_core.cli import jobs, maintenance, queues, workers
from chancy_core.cli.arguments import (
    _EPILOG,
    STATES,
    Handler,
    _add_common_to_leaves,
    _common,
    _Formatter,
    _Parser,
)
from chancy_core.cli.job_input import add_job_arguments, job_from_arguments, job_template
from chancy_core.cli.jobs import _last_error as _last_error  # tests read it here
from chancy_core.cli.loading import (
    APP_ENV,
    _app_from_arguments,
    _importable_cwd,
    _preload,
    load_app,
)
from chancy_core.cli.logs import JsonFormatter, setup_logging
from chancy_core.cli.output import (
    EXIT_CODES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNWRITTEN,
    EXIT_USAGE,
    UsageError,
    _error,
    _status_of,
    show,
)
from chancy_core.cli.workers import _option_value as _option_value  # tests read it here
from chancy_core.cli.workers import _start_processes, leave_abandoned_threads
from chancy_core.errors import ChancyError
from chancy_core.plugins import build_plugin_manager

__all__ = [
    "APP_ENV",
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_JOB_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_UNWRITTEN",
    "EXIT_USAGE",
    "STATES",
    "Handler",
    "JsonFormatter",
    "UsageError",
    "add_job_arguments",
    "build_parser",
    "job_from_arguments",
    "job_template",
    "leave_abandoned_threads",
    "load_app",
    "main",
    "setup_logging",
    "show",
]


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

    maintenance.add_commands(sub)
    workers.add_commands(sub)
    queues.add_commands(sub)
    jobs.add_commands(sub)

    before = set(sub.choices)
    pm.hook.chancy_register_commands(subparsers=sub)
    for name in set(sub.choices) - before:  # plugins' commands take the common options too
        _add_common_to_leaves(sub.choices[name])
    return parser


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
            return _start_processes(argv, args.processes, args.worker_id)
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
