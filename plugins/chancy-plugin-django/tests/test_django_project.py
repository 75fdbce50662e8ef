"""The example Django project on chancy: tasks enqueued in a view's transaction, run by
`manage.py chancy_worker`, read back through Django's TaskResult API; the admin pages."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

pytestmark = [pytest.mark.db, pytest.mark.usefixtures("project_database")]


def wait_finished(task: Any, result_id: str, timeout: float = 60.0) -> Any:
    """Poll ``task.get_result`` until the result is finished; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = task.get_result(result_id)
        if result.is_finished:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"task {result_id} still {result.status} after {timeout} s")
        time.sleep(0.2)


def job_count() -> int:
    from chancy_plugin_django.models import Job

    return int(Job.objects.count())


def test_the_dsn_is_built_from_django_databases(project_database: str) -> None:
    from chancy_plugin_django.conf import dsn_from_database, get_app
    from django.core.exceptions import ImproperlyConfigured
    from psycopg.conninfo import conninfo_to_dict

    assert conninfo_to_dict(dsn_from_database("default")) == conninfo_to_dict(project_database)
    assert get_app().dsn == dsn_from_database("default")
    with pytest.raises(ImproperlyConfigured, match="'other', which is not in"):
        dsn_from_database("other")


def test_a_rolled_back_view_leaves_neither_note_nor_job() -> None:
    from chancy_plugin_django.compat import TaskResultDoesNotExist
    from django.test import Client
    from notes.models import Note
    from notes.tasks import process_note

    before = job_count()
    response = Client().post("/notes/", {"text": "never saved", "fail": "1"})
    assert response.status_code == 400
    result_id = response.json()["task"]
    with pytest.raises(TaskResultDoesNotExist):
        process_note.get_result(result_id)
    assert job_count() == before
    assert not Note.objects.filter(text="never saved").exists()


def test_an_enqueued_task_is_in_the_callers_transaction_until_it_commits() -> None:
    from chancy_plugin_django import get_app
    from chancy_plugin_django.compat import TaskResultStatus
    from django.db import transaction
    from notes.models import Note
    from notes.tasks import process_note

    with transaction.atomic():
        note = Note.objects.create(text="one two")
        result = process_note.enqueue(note.id)
        # Seen on Django's connection (the same transaction), not by another connection.
        assert process_note.get_result(result.id).status == TaskResultStatus.READY
        assert get_app().sync_get_job(result.id) is None
    job = get_app().sync_get_job(result.id)
    assert job is not None and job.state.value == "pending"
    assert job.kwargs == {"task": "notes.tasks.process_note", "args": [note.id], "kwargs": {}}


def test_a_committed_task_runs_on_the_worker_and_succeeds(worker: Any) -> None:
    from chancy_plugin_django.compat import TaskResultStatus
    from django.test import Client
    from notes.models import Note
    from notes.tasks import process_note

    response = Client().post("/notes/", {"text": "three little words"})
    assert response.status_code == 201
    body = response.json()
    result = wait_finished(process_note, body["task"])
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.attempts == 1 and result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.args == [body["note"]] and result.kwargs == {}
    # The task used the ORM in a process-executor child: django.setup() ran there.
    assert Note.objects.get(id=body["note"]).words == 3
    # chancy-core does not store return values yet (see backend.return_value).
    assert result.return_value is None
    status = Client().get(f"/tasks/{body['task']}/")
    assert status.json() == {"status": "SUCCESSFUL", "attempts": 1, "errors": 0}


def test_a_failing_task_is_failed_with_its_exception(worker: Any) -> None:
    from chancy_plugin_django.compat import TaskResultStatus
    from notes.tasks import reject

    result = wait_finished(reject, reject.enqueue("no thanks").id)
    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class is ValueError
    assert "ValueError: no thanks" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018 - the property raises for a failed task


def test_the_worker_runs_only_django_tasks_through_the_backend(worker: Any) -> None:
    from chancy_plugin_django import get_app, push_on_django
    from chancy_plugin_django.backend import RUN_TASK

    from chancy_core import Job

    bogus = Job(func=RUN_TASK, kwargs={"task": "os.getcwd", "args": [], "kwargs": {}})
    (ref,) = push_on_django([bogus])
    job = get_app().sync_wait_for_job(ref, timeout=60)
    assert job.state.value == "failed"
    assert "os.getcwd is not a Django task" in job.errors[0]["traceback"]


def test_the_worker_command_declares_the_queues_of_the_settings(worker: Any) -> None:
    from chancy_plugin_django.models import Queue

    queue = Queue.objects.get(name="default")
    assert (queue.executor, queue.concurrency, queue.state) == ("process", 2, "active")


def test_unknown_results_are_not_found() -> None:
    from chancy_plugin_django.compat import TaskResultDoesNotExist
    from django.test import Client
    from notes.tasks import process_note

    for bad in (str(uuid.uuid4()), "not-a-uuid"):
        with pytest.raises(TaskResultDoesNotExist):
            process_note.get_result(bad)
    assert Client().get(f"/tasks/{uuid.uuid4()}/").status_code == 404


def test_the_admin_shows_jobs_and_queues_read_only() -> None:
    from chancy_plugin_django.models import Job
    from django.contrib.auth.models import User
    from django.test import Client
    from notes.tasks import process_note

    result = process_note.enqueue(0)  # a job to show (it fails if a worker runs it)
    admin, _ = User.objects.get_or_create(
        username="admin", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(admin)
    jobs = client.get("/admin/chancy/job/")
    assert jobs.status_code == 200
    assert result.id in jobs.content.decode()
    detail = client.get(f"/admin/chancy/job/{result.id}/change/")
    assert detail.status_code == 200
    assert "notes.tasks.process_note" in detail.content.decode()
    assert client.get("/admin/chancy/queue/").status_code == 200
    assert client.get("/admin/chancy/job/add/").status_code == 403
    assert client.post(f"/admin/chancy/job/{result.id}/delete/").status_code == 403
    assert Job.objects.filter(id=result.id).exists()
    assert client.get("/admin/").status_code == 200
    with pytest.raises(TypeError, match="read-only"):
        Job.objects.get(id=result.id).save()


def test_tasks_that_take_their_context_or_are_async_run(worker: Any) -> None:
    from chancy_plugin_django.compat import TaskResultStatus
    from notes.models import Note
    from notes.tasks import note_async, remember_attempt

    with_context = remember_attempt.enqueue("ctx")
    coroutine = note_async.enqueue("written by an async task")
    for task, result in ((remember_attempt, with_context), (note_async, coroutine)):
        assert wait_finished(task, result.id).status == TaskResultStatus.SUCCESSFUL
    assert Note.objects.filter(text=f"ctx: attempt 1 of {with_context.id}").exists()
    assert Note.objects.filter(text="written by an async task").exists()


def test_run_after_priority_and_queue_become_the_jobs_fields() -> None:
    from datetime import timedelta

    from chancy_plugin_django import get_app
    from django.utils import timezone
    from notes.tasks import process_note

    later = timezone.now() + timedelta(hours=1)
    result = process_note.using(run_after=later, priority=7).enqueue(0)
    job = get_app().sync_get_job(result.id)
    assert job is not None
    assert (job.scheduled_at, job.priority, job.queue) == (later, 7, "default")
    back = process_note.get_result(result.id)
    assert (back.task.run_after, back.task.priority, back.status) == (later, 7, "READY")


def test_misconfiguration_is_reported_clearly() -> None:
    from chancy_plugin_django.backend import ChancyBackend
    from chancy_plugin_django.conf import chancy_settings
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    for options in ({"max_attempts": 0}, {"max_attempts": "3"}, {"retries": 3}):
        with pytest.raises(ImproperlyConfigured, match="takes only max_attempts"):
            ChancyBackend("x", {"OPTIONS": options})
    assert ChancyBackend("x", {"OPTIONS": {"max_attempts": 3}}).max_attempts == 3
    with (
        override_settings(CHANCY={"QUEUE": {}}),
        pytest.raises(ImproperlyConfigured, match="unknown CHANCY setting"),
    ):
        chancy_settings()
