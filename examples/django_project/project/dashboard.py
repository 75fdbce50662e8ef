"""chancy's dashboard for this project: Django's staff users see it.

Mounted at ``/admin/jobs/`` by :mod:`project.asgi`. A request is let in when its Django
session belongs to an active staff user (sign in at ``/admin/``); with
``DASHBOARD_PASSWORD_HASH`` set (``chancy dashboard --hash-password``), anyone else gets
the dashboard's own password form instead of a refusal.
"""

from __future__ import annotations

import os
from importlib import import_module

from asgiref.sync import sync_to_async
from chancy_plugin_dashboard import Dashboard
from chancy_plugin_django import get_app
from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest
from starlette.requests import Request


def _staff_username(session_key: str) -> str | None:
    """The staff user a Django session belongs to (Django checks the session's hash)."""
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(request)
    if user.is_active and user.is_staff:
        return str(user.get_username())
    return None


async def django_staff(request: Request) -> str | None:
    """The dashboard's ``auth`` callback: the signed-in Django staff user, or ``None``."""
    session_key = request.cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return None
    username: str | None = await sync_to_async(_staff_username)(session_key)
    return username


def build_dashboard(password_hash: str | None = None) -> Dashboard:
    """The dashboard on the project's chancy app (``CHANCY`` settings, Django's database)."""
    return Dashboard(
        get_app(),
        auth=django_staff,
        password_hash=password_hash,
        # Django's SECRET_KEY signs the dashboard's cookie too (under its own salt).
        secret_key=settings.SECRET_KEY,
        # Plain-HTTP development only: DASHBOARD_INSECURE_COOKIES=1.
        secure_cookies=os.environ.get("DASHBOARD_INSECURE_COOKIES") != "1",
        title="Notes jobs",
    )
