"""The ``chancy`` command: every sub-command against a real database, and its errors."""

from __future__ import annotations

import json
import os

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


def test_a_missing_database_says_create_it_in_one_line(postgres_dsn, capsys):
    from chancy_core.testing import TEST_ADMIN_DSN_ENV, dsn_for_database

    # The reason comes from the server itself (through PgBouncer the pooler answers).
    server = os.environ.get(TEST_ADMIN_DSN_ENV) or postgres_dsn
    dsn = dsn_for_database(server, "chancy_nu_no_such_database")
    status, _, err = run(capsys, "--dsn", dsn, "-q", "job", "list")
    assert status == 1 and err.count("\n") == 1, err
    assert 'database "chancy_nu_no_such_database" does not exist. Create the database' in err
    assert "createdb" in err and "PostgreSQL is running" not in err


def test_check_reports_a_missing_database_as_a_failed_check(postgres_dsn, capsys):
    from chancy_core.testing import TEST_ADMIN_DSN_ENV, dsn_for_database

    # The reason comes from the server itself (through PgBouncer the pooler answers).
    server = os.environ.get(TEST_ADMIN_DSN_ENV) or postgres_dsn
    dsn = dsn_for_database(server, "chancy_nu_no_such_database")
    status, out, _ = run(capsys, "--dsn", dsn, "-q", "check", "--json")
    found = json.loads(out)  # JSON for a monitoring script, even when it cannot connect
    assert (status, found["ok"], found["checks"][0]["check"]) == (1, False, "connect")
    assert "Create the database" in found["checks"][0]["detail"]
    status, out, _ = run(capsys, "--dsn", dsn, "-q", "check")
    assert status == 1 and "FAIL" in out and "Create the database" in " ".join(out.split())


def test_a_closed_port_is_one_sentence_per_reason(capsys):
    status, _, err = run(capsys, "--dsn", "postgresql://u@127.0.0.1:1/x", "-q", "queue", "list")
    assert status == 1 and err.count("\n") == 1, err
    assert "?." not in err and "Check that PostgreSQL is running" in err


def test_plugins_lists_nothing_when_discovery_is_off(capsys, monkeypatch):
    monkeypatch.setenv("CHANCY_DISABLE_PLUGIN_AUTOLOAD", "1")
    status, out, err = run(capsys, "plugins")
    assert (status, out) == (0, "") and err.startswith("no plugins installed")


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


def test_every_option_of_every_command_has_help_text():
    import argparse

    from chancy_core.cli import build_parser
    from chancy_core.plugins import build_plugin_manager

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif action.help is None and not isinstance(action, argparse._HelpAction):
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(build_plugin_manager(None, autoload=False)), "chancy")
    assert missing == []


def test_processes_gives_each_child_its_own_worker_id():
    from chancy_core.cli import _option_value

    argv = ["worker", "start", "--worker-id", "w", "--tags", "x", "--worker-id=z"]
    assert _option_value(argv, "--worker-id") == "z"
    assert argv == ["worker", "start", "--tags", "x"]


def test_processes_children_never_start_children_of_their_own():
    """argparse accepts abbreviations: `--proc 3` must not reach the children."""
    from chancy_core.cli import build_parser
    from chancy_core.cli.workers import _child_argv
    from chancy_core.plugins import build_plugin_manager

    parser = build_parser(build_plugin_manager(None, autoload=False))
    argv = ["worker", "start", "--proc", "3", "--worker", "w", "--tags", "x"]
    parent = parser.parse_args(argv)
    assert (parent.processes, parent.worker_id) == (3, "w")
    children = [parser.parse_args(_child_argv(argv, parent.worker_id, n)) for n in range(3)]
    assert [(c.processes, c.worker_id, c.tags) for c in children] == [
        (1, "w-1", ["x"]),
        (1, "w-2", ["x"]),
        (1, "w-3", ["x"]),
    ]
    plain = parser.parse_args(_child_argv(["worker", "start", "--processes=2"], None, 0))
    assert (plain.processes, plain.worker_id) == (1, None)


def test_job_push_limits_and_a_dropped_unique_key_push_is_told(database, capsys):
    dsn = ["--dsn", database, "-q"]
    assert run(capsys, *dsn, "queue", "declare", "default")[0] == 0
    push = [*dsn, "job", "push", "elsewhere.f", "--unique-key", "k", "--time-limit", "30"]
    status, out, _ = run(capsys, *push, "--kwargs", '{"a": 1}')
    ref = out.strip()
    status, out, _ = run(capsys, *dsn, "job", "get", ref, "--json")
    assert json.loads(out)["limits"] == [{"t": "time", "v": 30}]
    status, out, err = run(capsys, *push, "--kwargs", '{"a": 2}', "-v")
    assert (status, out.strip()) == (0, ref)
    assert f"unique key 'k' is held by job {ref} (pending, other kwargs)" in err


def test_check_fails_on_a_database_that_was_never_migrated(postgres_dsn, capsys):
    import uuid

    import psycopg
    from psycopg import sql

    from chancy_core.testing import dsn_for_database

    name = f"chancy_unmigrated_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = dsn_for_database(postgres_dsn, name)
        status, out, _ = run(capsys, "--dsn", dsn, "-q", "check", "--json")
        found = json.loads(out)
        assert status == 1 and found["ok"] is False
        (core,) = [c for c in found["checks"] if c["check"] == "migrations core"]
        assert "not applied" in core["detail"] and "run `chancy migrate`" in core["detail"]
        assert run(capsys, "--dsn", dsn, "-q", "migrate")[0] == 0
        assert run(capsys, "--dsn", dsn, "-q", "check")[0] == 0
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.parametrize(
    ("detail", "advice"),
    [
        ('failed: FATAL:  role "bob" does not exist', "Create the role (createuser -h db bob)"),
        ("failed: FATAL:  password authentication failed for user", "Check the password"),
        ("failed to resolve host 'db': Name or service not known", "Check the host name"),
        ("failed: FATAL:  sorry, too many clients already", "max_connections"),
        ("failed: Connection refused\n\tIs the server running?", "PostgreSQL is running"),
    ],
)
def test_cannot_connect_message_gives_the_advice_that_fits(detail, advice):
    from chancy_core.connection import cannot_connect_message

    text = cannot_connect_message(
        "postgresql://bob:pw@db/app", "postgresql://bob:***@db/app", detail
    )
    assert advice in text and "\n" not in text and "pw" not in text


def test_job_list_shows_the_error_type_without_its_module_and_what_the_limit_was():
    from chancy_core.cli import _last_error

    text = (
        "Traceback (most recent call last):\n  ...\nchancy_core.errors.TimeLimitExceeded: job"
        " 01a22bed-672b-7000-b1a8-a661a8395e9a exceeded its time limit of 2s and was stopped\n"
    )
    assert _last_error(text) == (
        "TimeLimitExceeded: job 01a22bed-672b-7000-b1a8-a661a8395e9a exceeded its time limit"
        " of 2s and was stopped"
    )
    assert _last_error("ValueError: x") == "ValueError: x"
    long = _last_error("RuntimeError: " + "y" * 300)
    assert len(long) == 120 and long.endswith("…")


def test_tables_have_no_trailing_spaces(database, capsys):
    dsn = ["--dsn", database, "-q"]
    assert run(capsys, *dsn, "queue", "declare", "short")[0] == 0
    assert run(capsys, *dsn, "queue", "declare", "a_much_longer_name")[0] == 0
    status, out, _ = run(capsys, *dsn, "queue", "list")
    assert status == 0 and "a_much_longer_name" in out
    assert [line for line in out.splitlines() if line != line.rstrip()] == []
