"""Django's task signals: ``task_enqueued`` when the enqueuing transaction commits (in the
enqueuing process), ``task_started`` and ``task_finished`` on the worker that runs the task
(its own process, not a process-executor child), at the moments Django documents."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django_helpers import run_worker

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("project_database")]

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def signal_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("signals") / "signals.jsonl"


@pytest.fixture(scope="module")
def recording_worker(
    project_database: str, signal_log: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """The example project's worker with an extra app whose receivers record every task
    signal in ``signal_log``."""
    env = {
        "DJANGO_SETTINGS_MODULE": "django_signal_settings",
        "PYTHONPATH": str(TESTS),
        "SIGNAL_LOG": str(signal_log),
    }
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with run_worker(project_database, log, env) as process:
        yield process


def signals_of(signal_log: Path, result_id: str, count: int) -> list[dict[str, Any]]:
    """The signals recorded for ``result_id`` once there are ``count`` (fails after 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        lines = signal_log.read_text().splitlines() if signal_log.exists() else []
        found = [s for s in map(json.loads, lines) if s["id"] == result_id]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{len(found)} signals for {result_id} after 60 s: {found}")
        time.sleep(0.2)


def test_task_enqueued_is_sent_when_the_transaction_commits() -> None:
    from chancy_plugin_django.backend import ChancyBackend
    from chancy_plugin_django.compat import task_enqueued
    from django.db import transaction
    from notes.tasks import process_note

    seen: list[tuple[type, str]] = []

    def receiver(sender: type, task_result: Any, **kwargs: Any) -> None:
        seen.append((sender, task_result.id))

    task_enqueued.connect(receiver)
    try:
        with pytest.raises(RuntimeError), transaction.atomic():
            process_note.enqueue(0)
            raise RuntimeError("roll back")
        assert seen == []  # a rolled-back job never existed
        with transaction.atomic():
            result = process_note.enqueue(0)
            assert seen == []  # not before the job exists for workers
        assert seen == [(ChancyBackend, result.id)]
        outside = process_note.enqueue(0)  # autocommit: at once
        assert seen[-1] == (ChancyBackend, outside.id)
    finally:
        task_enqueued.disconnect(receiver)


def test_started_and_finished_are_sent_by_the_worker_around_a_successful_task(
    recording_worker: subprocess.Popen[bytes], signal_log: Path
) -> None:
    from notes.models import Note
    from notes.tasks import process_note

    note = Note.objects.create(text="four words right here")
    result = process_note.enqueue(note.id)
    started, finished = signals_of(signal_log, result.id, 2)
    assert started["signal"] == "task_started"
    assert started["sender"] == "ChancyBackend"
    # Before the function ran: the row is running, this attempt counted.
    assert (started["status"], started["db_state"]) == ("RUNNING", "running")
    assert started["attempts"] == 1
    assert started["started"] and not started["finished"]
    assert finished["signal"] == "task_finished"
    # After the outcome was written: the row says so.
    assert (finished["status"], finished["db_state"]) == ("SUCCESSFUL", "succeeded")
    assert finished["finished"] and finished["return_value"] == 4
    assert finished["errors"] == [] and finished["exc_info"] is None
    # Both in the worker's own process (the task ran in a process-executor child).
    assert started["pid"] == finished["pid"] == recording_worker.pid
    assert started["worker_ids"] == finished["worker_ids"] != ["unknown"]


def test_finished_is_sent_with_the_error_of_a_failed_task(
    recording_worker: subprocess.Popen[bytes], signal_log: Path
) -> None:
    from notes.tasks import reject

    result = reject.enqueue("not today")
    started, finished = signals_of(signal_log, result.id, 2)
    assert started["signal"] == "task_started" and started["errors"] == []
    assert finished["signal"] == "task_finished"
    assert (finished["status"], finished["db_state"]) == ("FAILED", "failed")
    assert finished["errors"] == ["builtins.ValueError"]
    assert finished["exc_info"] == "ValueError"  # sent while the error is handled


def test_an_attempt_that_is_retried_does_not_finish_the_task(
    recording_worker: subprocess.Popen[bytes], signal_log: Path
) -> None:
    from chancy_plugin_django import push_on_django
    from chancy_plugin_django.backend import RUN_TASK

    from chancy_core import Job

    job = Job(
        func=RUN_TASK,
        kwargs={"task": "notes.tasks.reject", "args": ["twice"], "kwargs": {}},
        max_attempts=2,
    )
    (ref,) = push_on_django([job])
    found = signals_of(signal_log, str(ref), 3)
    assert [s["signal"] for s in found] == ["task_started", "task_started", "task_finished"]
    assert [s["attempts"] for s in found] == [1, 2, 2]
    assert found[1]["errors"] == ["builtins.ValueError"]  # the first attempt's
    assert found[2]["errors"] == ["builtins.ValueError"] * 2
    assert (found[2]["status"], found[2]["db_state"]) == ("FAILED", "failed")


def test_a_job_that_names_no_django_task_sends_no_signal(
    recording_worker: subprocess.Popen[bytes], signal_log: Path
) -> None:
    from chancy_plugin_django import get_app, push_on_django
    from chancy_plugin_django.backend import RUN_TASK
    from notes.tasks import reject

    from chancy_core import Job

    bogus = Job(func=RUN_TASK, kwargs={"task": "os.getcwd", "args": [], "kwargs": {}})
    (ref,) = push_on_django([bogus])
    assert get_app().sync_wait_for_job(ref, timeout=60).state.value == "failed"
    # A task run after it has both its signals: the worker's signals are sent in order,
    # so none is still coming for the bogus job.
    after = reject.enqueue("after the bogus one")
    signals_of(signal_log, after.id, 2)
    assert signals_of(signal_log, str(ref), 0) == []
