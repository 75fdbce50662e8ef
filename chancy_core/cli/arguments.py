"""The parser's parts: the options every command takes, one-line usage errors, the
helpers that add a command or a group, and the types of option values (times, numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from chancy_core.app import DSN_ENV, Chancy
from chancy_core.cli.loading import APP_ENV
from chancy_core.cli.output import EXIT_CODES, EXIT_USAGE
from chancy_core.job import QueuedJob

Handler = Callable[[Chancy, argparse.Namespace], Awaitable[int]]
"""A command's handler (``set_defaults(handler=...)``): runs it on the open app, returns
the exit status."""

_EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())

STATES = [s.value for s in QueuedJob.State]
"""The job states, for ``--state`` and the columns of ``queue stats``."""


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


def _add_common_to_leaves(parser: argparse.ArgumentParser) -> None:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        with contextlib.suppress(argparse.ArgumentError):  # it already has one of them
            _common(parser, top=False)
        return
    for action in subs:
        for child in set(action.choices.values()):
            _add_common_to_leaves(child)
