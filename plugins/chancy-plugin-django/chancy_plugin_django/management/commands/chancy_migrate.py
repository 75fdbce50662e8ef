"""``manage.py chancy_migrate``: create or upgrade chancy's tables (core and plugins)."""

from __future__ import annotations

from typing import Any

import anyio
from django.core.management.base import BaseCommand

from chancy_plugin_django.conf import get_app

__all__ = ["Command"]


class Command(BaseCommand):
    """Apply chancy's pending migrations to the database of ``settings.CHANCY``."""

    help = "Create or upgrade chancy's tables (idempotent; safe to run from several hosts)."

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the migrations and list what was applied."""
        applied = anyio.run(get_app().migrate)
        for label in applied:
            self.stdout.write(f"applied {label}")
        self.stdout.write(f"{len(applied)} chancy migration(s) applied; up to date")
