"""URLs: the admin (chancy's jobs and queues are there) and the notes views."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from notes import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("notes/", views.create_note),
    path("tasks/<str:result_id>/", views.task_status),
]
