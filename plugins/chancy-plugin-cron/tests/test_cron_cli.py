"""`chancy cron add|remove|list`, through the `chancy` command's parser and main()."""

from __future__ import annotations

import json

import anyio
import pytest
from chancy_plugin_cron import Cron

from chancy_core import Chancy
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
    line = capsys.readouterr().out.strip()
    assert line.startswith("nightly\t0 3 * * *\tEurope/Paris\tmyapp.tasks.nightly\tnext=")

    assert main(["--dsn", database, "cron", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["job"]["kwargs"] == {"n": 1} and listed["job"]["queue"] == "batch"
    assert listed["timezone"] == "Europe/Paris" and listed["next_run"]

    assert main(["--dsn", database, "cron", "remove", "nightly"]) == 0
    assert main(["--dsn", database, "cron", "remove", "nightly"]) == 1
    assert "no schedule named 'nightly'" in capsys.readouterr().err
    assert main(["--dsn", database, "cron", "list"]) == 0
    assert capsys.readouterr().out == ""


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
