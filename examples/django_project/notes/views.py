"""Views: save a note and enqueue its task in one transaction."""

from __future__ import annotations

from chancy_plugin_django.compat import TaskResultDoesNotExist
from django.db import transaction
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from notes.models import Note
from notes.tasks import process_note


class Rejected(Exception):
    """Raised inside the transaction to roll back the note and its task together."""


@require_POST
def create_note(request: HttpRequest) -> JsonResponse:
    """Save a note and enqueue ``process_note`` in the same transaction.

    With ``fail=1`` the view raises after enqueueing: the note and the task's job
    are rolled back together, and no worker ever sees the job.
    """
    try:
        with transaction.atomic():
            note = Note.objects.create(text=request.POST["text"])
            result = process_note.enqueue(note.id)
            if request.POST.get("fail"):
                raise Rejected("rolled back after enqueueing")
    except Rejected as exc:
        return JsonResponse({"error": str(exc), "task": result.id}, status=400)
    return JsonResponse({"note": note.id, "task": result.id}, status=201)


@require_GET
def task_status(request: HttpRequest, result_id: str) -> JsonResponse:
    """A task's status, through Django's TaskResult API."""
    try:
        result = process_note.get_result(result_id)
    except TaskResultDoesNotExist:
        raise Http404(f"no task {result_id}") from None
    return JsonResponse(
        {"status": result.status, "attempts": result.attempts, "errors": len(result.errors)}
    )
