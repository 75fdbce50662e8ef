"""The project's ASGI application: chancy's dashboard at ``/admin/jobs/``, Django for
everything else::

    uvicorn project.asgi:application

A request whose path is under :data:`DASHBOARD_PREFIX` goes to the dashboard (its
``root_path`` extended by the prefix, so its links, redirects and cookie stay under it);
every other request goes to Django's ASGI application. The lifespan goes to the
dashboard: it opens chancy's async pool at start-up and closes it at shutdown.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_application = get_asgi_application()  # sets Django up: import the rest after it

from starlette.types import ASGIApp, Receive, Scope, Send  # noqa: E402

from project.dashboard import build_dashboard  # noqa: E402

DASHBOARD_PREFIX = "/admin/jobs"


def mount_dashboard(dashboard: ASGIApp, django_app: ASGIApp, prefix: str) -> ASGIApp:
    """One ASGI app: ``prefix`` and below to ``dashboard``, the rest to ``django_app``."""

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # Django's handler serves only HTTP
            await dashboard(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = scope["path"]
        local = path[len(root) :] if root and path.startswith(root) else path
        if local == prefix or local.startswith(prefix + "/"):
            await dashboard({**scope, "root_path": root + prefix}, receive, send)
            return
        await django_app(scope, receive, send)

    return application


application = mount_dashboard(
    build_dashboard(os.environ.get("DASHBOARD_PASSWORD_HASH")),
    django_application,
    DASHBOARD_PREFIX,
)
