"""When a schedule runs: cron expressions evaluated in a time zone (pure, no I/O).

Expressions are croniter's: five fields (minute hour day month weekday), an
optional sixth for seconds (``"* * * * * */10"``: every ten seconds), or a
macro such as ``@daily``. Times are evaluated on the wall clock of the
schedule's time zone and returned in UTC.

Daylight-saving changes follow cron's (cronie's) rule:

* A time that does not exist (skipped when clocks go forward) runs once, at
  the change: ``30 2 * * *`` in ``Europe/Paris`` runs at 03:00 that day.
* A time that happens twice (clocks go back) runs once, at its first
  occurrence, when the expression names its hours (``30 2 * * *``). An
  expression whose hour field is a wildcard (``*/20 * * * *``) follows
  elapsed time instead, so it runs in both occurrences of the repeated hour.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from chancy_core.errors import ChancyError

__all__ = ["CronError", "check_expression", "latest_due", "next_run_after", "zone"]

#: How many runs ``latest_due`` steps through before jumping to the latest one.
_STEPS = 1000
_WILDCARD_HOUR_MACROS = frozenset({"@hourly"})


class CronError(ChancyError, ValueError):
    """The schedule is invalid: fix the cron expression, time zone or name in the message."""


def check_expression(expression: str) -> str:
    """Return ``expression`` if croniter accepts it, else raise :class:`CronError`."""
    if not isinstance(expression, str) or not croniter.is_valid(expression.strip()):
        raise CronError(
            f"invalid cron expression {expression!r}: use five fields (minute hour day month"
            ' weekday), e.g. "*/5 * * * *", a sixth for seconds, or a macro such as @daily'
        )
    return expression.strip()


def zone(name: str) -> ZoneInfo:
    """The time zone named ``name`` (an IANA name such as ``Europe/Paris``)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise CronError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'"
        ) from None


def _fixed_hours(expression: str) -> bool:
    """Whether the expression names its hours (cron then never repeats a run on fall-back)."""
    if expression.startswith("@"):
        return expression.lower() not in _WILDCARD_HOUR_MACROS
    fields = expression.split()
    return len(fields) > 1 and not fields[1].startswith("*")


def _is_repeat(moment: datetime, tz: ZoneInfo) -> bool:
    """Whether ``moment`` is the second occurrence of a wall time repeated on fall-back."""
    wall = moment.astimezone(tz).replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return first < second and moment.astimezone(UTC) == second


def next_run_after(expression: str, timezone: str, after: datetime) -> datetime:
    """The first run time strictly after ``after`` (timezone-aware), in UTC."""
    tz = zone(timezone)
    fixed = _fixed_hours(expression)
    current = after.astimezone(tz)
    candidate = current
    try:
        for _ in range(4):  # a repeated hour is skipped at most once or twice in a row
            candidate = croniter(expression, current).get_next(datetime)
            if not (fixed and _is_repeat(candidate, tz)):
                break
            current = candidate
    except (CroniterError, ValueError, OverflowError) as exc:
        raise CronError(
            f"cron expression {expression!r} has no run time after {after.isoformat()} ({exc}):"
            " check its day and month fields (e.g. 30 February never comes)"
        ) from None
    return candidate.astimezone(UTC)


def latest_due(expression: str, timezone: str, due: datetime, now: datetime) -> datetime:
    """The latest run time from ``due`` (a run time, ``<= now``) up to ``now``, in UTC.

    This is the catch-up policy: of the runs missed while nothing ran, only the
    most recent is pushed.
    """
    latest = due
    for _ in range(_STEPS):
        following = next_run_after(expression, timezone, latest)
        if following > now:
            return latest.astimezone(UTC)
        latest = following
    # Far behind (thousands of missed runs): jump to the last run before now.
    tz = zone(timezone)
    try:
        jumped: datetime = croniter(expression, now.astimezone(tz)).get_prev(datetime)
    except (CroniterError, ValueError, OverflowError):
        return latest.astimezone(UTC)
    latest = max(latest, jumped)
    following = next_run_after(expression, timezone, latest)
    return (following if following <= now else latest).astimezone(UTC)
