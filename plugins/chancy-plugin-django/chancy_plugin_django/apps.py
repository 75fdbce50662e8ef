"""The Django app: add ``"chancy_plugin_django"`` to ``INSTALLED_APPS``."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["ChancyConfig"]


class ChancyConfig(AppConfig):
    """Chancy's jobs and queues in the admin, its worker command and its task backend."""

    name = "chancy_plugin_django"
    label = "chancy"
    verbose_name = "Chancy"
    default_auto_field = "django.db.models.AutoField"
