"""What the command prints: the one table/JSON printer :func:`show`, colours and times,
one-line errors, and the exit codes (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from chancy_core.errors import ChancyError, JobNotFoundError, QueueNotFoundError

log = logging.getLogger("chancy_core.cli")
"""The command's one logger, named for the package (not per module): what users filter on."""

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
