"""Next-run arithmetic: time zones and daylight saving (no database)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from chancy_plugin_cron import CronError, latest_due, next_run_after
from chancy_plugin_cron.times import check_expression, zone

PARIS = ZoneInfo("Europe/Paris")


def runs(expression: str, timezone: str, start: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    current = start
    for _ in range(count):
        current = next_run_after(expression, timezone, current)
        found.append(current)
    return found


def test_local_time_keeps_its_wall_clock_across_dst() -> None:
    # 09:30 in Paris is 08:30 UTC in winter (UTC+1) and 07:30 UTC in summer (UTC+2).
    start = datetime(2024, 3, 29, 12, 0, tzinfo=UTC)
    got = runs("30 9 * * *", "Europe/Paris", start, 3)
    assert got == [
        datetime(2024, 3, 30, 8, 30, tzinfo=UTC),
        datetime(2024, 3, 31, 7, 30, tzinfo=UTC),
        datetime(2024, 4, 1, 7, 30, tzinfo=UTC),
    ]
    assert all(run.tzinfo is UTC for run in got)
    assert {run.astimezone(PARIS).strftime("%H:%M") for run in got} == {"09:30"}


def test_same_expression_in_utc_ignores_dst() -> None:
    start = datetime(2024, 3, 29, 12, 0, tzinfo=UTC)
    got = runs("30 9 * * *", "UTC", start, 3)
    assert [run.hour for run in got] == [9, 9, 9]


def test_time_skipped_by_spring_forward_runs_once_at_the_change() -> None:
    start = datetime(2024, 3, 30, 12, 0, tzinfo=PARIS)
    got = runs("30 2 * * *", "Europe/Paris", start, 2)
    # 2024-03-31 02:30 does not exist in Paris: it runs at 03:00 CEST (01:00 UTC).
    assert got == [
        datetime(2024, 3, 31, 1, 0, tzinfo=UTC),
        datetime(2024, 4, 1, 0, 30, tzinfo=UTC),
    ]


def test_time_repeated_by_fall_back_runs_once() -> None:
    start = datetime(2024, 10, 26, 12, 0, tzinfo=PARIS)
    got = runs("30 2 * * *", "Europe/Paris", start, 2)
    # 02:30 happens twice on 2024-10-27: only the first (CEST, 00:30 UTC) runs.
    assert got == [
        datetime(2024, 10, 27, 0, 30, tzinfo=UTC),
        datetime(2024, 10, 28, 1, 30, tzinfo=UTC),
    ]


def test_wildcard_hours_follow_elapsed_time_through_fall_back() -> None:
    start = datetime(2024, 10, 27, 1, 50, tzinfo=PARIS)
    got = runs("*/20 * * * *", "Europe/Paris", start, 7)
    steps = {b - a for a, b in itertools.pairwise(got)}
    assert steps == {timedelta(minutes=20)}  # no gap and no double across the repeated hour


def test_latest_due_catches_up_with_one_run() -> None:
    due = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
    now = datetime(2024, 1, 1, 10, 17, 30, tzinfo=UTC)
    assert latest_due("*/5 * * * *", "UTC", due, now) == datetime(2024, 1, 1, 10, 15, tzinfo=UTC)
    assert latest_due("*/5 * * * *", "UTC", due, due) == due


def test_latest_due_far_behind_jumps() -> None:
    due = datetime(2020, 1, 1, 0, 0, tzinfo=UTC)
    now = datetime(2024, 1, 1, 10, 17, 30, tzinfo=UTC)
    assert latest_due("* * * * *", "UTC", due, now) == datetime(2024, 1, 1, 10, 17, tzinfo=UTC)


def test_seconds_field() -> None:
    start = datetime(2024, 1, 1, 10, 0, 0, 500, tzinfo=UTC)
    assert runs("* * * * * */2", "UTC", start, 2) == [
        datetime(2024, 1, 1, 10, 0, 2, tzinfo=UTC),
        datetime(2024, 1, 1, 10, 0, 4, tzinfo=UTC),
    ]


@pytest.mark.parametrize("bad", ["", "* * *", "61 * * * *", "every minute", None])
def test_invalid_expressions_are_refused(bad: object) -> None:
    with pytest.raises(CronError, match="invalid cron expression"):
        check_expression(bad)  # type: ignore[arg-type]


def test_unknown_time_zone_is_refused() -> None:
    with pytest.raises(CronError, match="unknown time zone"):
        zone("Mars/Olympus")
