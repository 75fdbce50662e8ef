"""The ``chancy`` command: every sub-command against a real database, and its errors."""

from __future__ import annotations

import json

import pytest

from chancy_core.cli import main

pytestmark = pytest.mark.db


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_help_lists_the_commands_and_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("migrate", "worker", "queue", "job", "plugins"):
        assert command in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_queue_and_job_commands_round_trip(database, capsys):
    dsn = ["--dsn", database]
    assert run(capsys, *dsn, "migrate")[0] == 0
    status, out, err = run(capsys, *dsn, "queue", "declare", "emails", "--concurrency", "4")
    assert (status, out.strip()) == (0, "declared queue emails (active, async, concurrency 4)")
    assert err.startswith("chancy: using database ")
    status, out, _ = run(capsys, *dsn, "queue", "pause", "emails")
    assert (status, out.strip()) == (0, "paused queue emails")
    status, out, _ = run(capsys, *dsn, "queue", "list", "--json")
    (queue,) = json.loads(out)
    assert (queue["name"], queue["state"], queue["concurrency"]) == ("emails", "paused", 4)

    status, out, _ = run(
        capsys,
        *dsn,
        "job",
        "push",
        "myapp.tasks.send",
        "--kwargs",
        '{"to": "a@b.c"}',
        "--queue",
        "emails",
        "--priority",
        "3",
    )
    assert status == 0
    ref = out.strip()
    status, out, _ = run(capsys, *dsn, "job", "get", ref, "--json")
    found = json.loads(out)
    assert (status, found["func"], found["kwargs"], found["priority"], found["state"]) == (
        0,
        "myapp.tasks.send",
        {"to": "a@b.c"},
        3,
        "pending",
    )
    assert run(capsys, *dsn, "job", "cancel", ref)[:2] == (0, f"cancelled {ref}\n")
    status, _, err = run(capsys, *dsn, "job", "cancel", ref)
    assert status == 1 and f"job {ref} is failed: only a pending" in err


def test_bad_input_exits_non_zero_with_a_message(database, capsys):
    dsn = ["--dsn", database]
    status, _, err = run(capsys, *dsn, "job", "push", "m.f", "--kwargs", "{nope")
    assert status == 1 and "--kwargs is not valid JSON" in err
    status, _, err = run(capsys, *dsn, "job", "push", "not a name")
    assert status == 1 and "invalid func" in err
    status, _, err = run(capsys, *dsn, "queue", "pause", "missing")
    assert status == 3 and "no queue named 'missing'" in err
    status, _, err = run(capsys, *dsn, "job", "get", "not-a-ref")
    assert status == 3 and "is not a job reference" in err


def test_an_unreachable_database_is_reported_with_the_password_masked(capsys):
    status, _, err = run(capsys, "--dsn", "postgresql://u:s3cret@127.0.0.1:1/x", "migrate")
    assert status == 1
    assert "cannot connect" in err and "s3cret" not in err and "***" in err


def test_plugins_lists_nothing_when_discovery_is_off(capsys, monkeypatch):
    monkeypatch.setenv("CHANCY_DISABLE_PLUGIN_AUTOLOAD", "1")
    status, out, _ = run(capsys, "plugins")
    assert status == 0 and out.startswith("no plugins installed")


def test_no_arguments_prints_the_help_with_the_exit_codes(capsys):
    status, out, _ = run(capsys)
    assert status == 0 and "usage: chancy" in out and "exit codes:" in out
    assert "3    no such job or queue" in out


def test_common_options_work_after_the_command_name(database, capsys):
    status, out, err = run(capsys, "queue", "list", "--dsn", database, "-q", "--json")
    assert (status, json.loads(out), err) == (0, [], "")


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["job", "list", "--state", "done"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("chancy: error: argument --state")
