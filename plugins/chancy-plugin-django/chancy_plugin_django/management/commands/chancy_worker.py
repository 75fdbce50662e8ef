"""``manage.py chancy_worker``: run a chancy worker with this project's settings."""

from __future__ import annotations

import os
from typing import Any

import anyio
from django.core.management.base import BaseCommand, CommandParser

from chancy_core import Worker
from chancy_core.executors.process import INITIALIZER_ENV
from chancy_plugin_django.backend import RUN_TASK
from chancy_plugin_django.conf import chancy_settings, get_app, queues

__all__ = ["Command"]


class Command(BaseCommand):
    """Declare ``CHANCY['QUEUES']`` and serve them until SIGINT or SIGTERM.

    The worker runs Django tasks (through :data:`~chancy_plugin_django.backend.RUN_TASK`,
    which runs only ``@task`` objects), ``@job`` functions its process imported, and
    functions under ``CHANCY['ALLOW']``. Process-executor children call
    ``django.setup()`` before their first job (``CHANCY_PROCESS_INITIALIZER``).
    """

    help = "Run a chancy worker for this Django project (stops on SIGINT/SIGTERM)."

    def add_arguments(self, parser: CommandParser) -> None:
        """``--migrate`` and ``--no-declare``."""
        parser.add_argument(
            "--migrate", action="store_true", help="apply chancy's migrations first"
        )
        parser.add_argument(
            "--no-declare",
            action="store_true",
            help="do not declare CHANCY['QUEUES'] (serve the queues already declared)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        """Start the worker and serve until told to stop."""
        os.environ.setdefault(INITIALIZER_ENV, "django.setup")
        conf = chancy_settings()
        allow = [RUN_TASK.rpartition(".")[0], *conf["ALLOW"]]

        async def serve() -> None:
            async with get_app() as app:
                if options["migrate"]:
                    await app.migrate()
                if not options["no_declare"]:
                    for queue in queues():
                        await app.declare(queue)
                worker = Worker(app, allow=allow, **conf["WORKER"])
                self.stdout.write(f"chancy worker {worker.worker_id} started", ending="\n")
                self.stdout.flush()
                await worker.serve()

        anyio.run(serve)
