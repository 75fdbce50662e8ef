"""`chancy cron add|remove|list`, through the `chancy` command's parser and main()."""

from __future__ import annotations

import json
from datetime import UTC

import anyio
import pytest
from chancy_plugin_cron import Cron

from chancy_core import Chancy, Job
from chancy_core.cli import build_parser, main

pytestmark = [pytest.mark.db]


def test_cron_commands_add_list_and_remove(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    add = [
        "cron", "add", "nightly", "0 3 * * *", "myapp.tasks.nightly",
        "--kwargs", '{"n": 1}', "--queue", "batch", "--timezone", "Europe/Paris",
    ]  # fmt: skip
    assert main(["--dsn", database, *add]) == 0
    assert "scheduled nightly: next run " in capsys.readouterr().out

    assert main(["--dsn", database, "cron", "list"]) == 0
    header, _, row = capsys.readouterr().out.strip().splitlines()
    assert header.split() == [
        "NAME", "CRON", "TIME", "ZONE", "FUNC", "QUEUE", "NEXT", "RUN", "(UTC)", "LAST", "RUN",
        "(UTC)",
    ]  # fmt: skip
    assert row.split()[:9] == ["nightly", "0", "3", "*", "*", "*", "Europe/Paris",
                               "myapp.tasks.nightly", "batch"]  # fmt: skip
    assert row.split()[-1] == "never"  # no run pushed yet

    assert main(["--dsn", database, "cron", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["job"]["kwargs"] == {"n": 1} and listed["job"]["queue"] == "batch"
    assert listed["timezone"] == "Europe/Paris" and listed["next_run"]
    # The template's scheduled_at (when it was added) and unique_key mean nothing: each run
    # replaces them. What matters is next_run and last_run.
    assert "scheduled_at" not in listed["job"] and "unique_key" not in listed["job"]
    assert listed["last_run"] is None

    assert main(["--dsn", database, "cron", "remove", "nightly"]) == 0
    assert main(["--dsn", database, "cron", "remove", "nightly"]) == 1
    assert "no schedule named 'nightly'" in capsys.readouterr().err
    assert main(["--dsn", database, "cron", "list"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "\nno schedules (add one: chancy cron add" in err


def test_cron_add_reports_bad_input_in_one_line(
    database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--dsn", database, "cron", "add", "x", "* * *", "myapp.tasks.go"]) == 1
    assert "invalid cron expression" in capsys.readouterr().err
    assert main(["--dsn", database, "cron", "add", "x", "* * * * *", "a.b", "--kwargs", "{"]) == 1
    assert "--kwargs is not valid JSON" in capsys.readouterr().err


@pytest.mark.anyio
async def test_handlers_get_the_app(chancy: Chancy) -> None:
    parser = build_parser(chancy.plugins)
    args = parser.parse_args(["cron", "add", "five", "*/5 * * * *", "myapp.tasks.go"])
    with anyio.fail_after(10):
        assert await args.handler(chancy, args) == 0
    (schedule,) = await Cron.list(chancy)
    assert (schedule.name, schedule.cron, schedule.timezone) == ("five", "*/5 * * * *", "UTC")


@pytest.mark.anyio
async def test_cron_list_shows_the_last_run_once_one_was_pushed(
    chancy: Chancy, capsys: pytest.CaptureFixture[str]
) -> None:
    await Cron.add(chancy, "every", "* * * * *", Job(func="myapp.tasks.go"))
    async with chancy.pool.connection() as conn:  # due now, without waiting a minute
        await conn.execute(
            chancy.schema.render("UPDATE {cron_schedules} SET next_run = now() - interval '1s'")
        )
    with anyio.fail_after(10):
        (ref,) = await Cron().push_due(chancy)
    pushed = await chancy.get_job(ref)
    assert pushed is not None
    parser = build_parser(chancy.plugins)
    for argv in (["cron", "list", "--json"], ["cron", "list"]):
        args = parser.parse_args(argv)
        with anyio.fail_after(10):
            assert await args.handler(chancy, args) == 0
    out = capsys.readouterr().out
    listed = json.loads(out[: out.rindex("]") + 1])
    assert listed[0]["last_run"] == pushed.scheduled_at.isoformat()
    row = out.strip().splitlines()[-1].split()
    assert row[-2:] == pushed.scheduled_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S").split()
