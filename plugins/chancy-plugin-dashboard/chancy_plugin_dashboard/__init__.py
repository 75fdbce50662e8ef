"""A web dashboard for chancy-core that shows and acts: retry, cancel, pause, push.

:class:`Dashboard` is an ASGI application (Starlette, Jinja2, server-sent events, a
little plain JavaScript, no build step). Mount it under any path of your own app::

    from chancy_plugin_dashboard import Dashboard, hash_password

    dashboard = Dashboard(chancy, password_hash=HASH, secret_key=KEY)
    app = Starlette(routes=[Mount("/admin/jobs", app=dashboard)])

or serve it alone with ``chancy dashboard --app myproject.tasks:chancy --port 8080``
(password login from the environment) or ``chancy dashboard --dashboard myproject.admin:dashboard``.

Nothing is served without authentication (your ``auth`` callback, or the built-in
password form), every action is a ``POST`` with a CSRF token, and ``read_only=True``
turns every action off. See :mod:`chancy_plugin_dashboard.security`.

The plugin registered through the ``chancy`` entry point (:class:`DashboardPlugin`)
only adds the ``chancy dashboard`` command; it keeps nothing in ``Job.meta`` and has
no tables.
"""

from __future__ import annotations

from typing import Any

from chancy_core import hookimpl
from chancy_plugin_dashboard.app import Dashboard
from chancy_plugin_dashboard.security import (
    AuthCallback,
    LoginLimits,
    hash_password,
    verify_password,
)

__all__ = [
    "AuthCallback",
    "Dashboard",
    "DashboardPlugin",
    "LoginLimits",
    "hash_password",
    "verify_password",
]


class DashboardPlugin:
    """The entry-point plugin: adds ``chancy dashboard`` (see :mod:`.cli`)."""

    name = "dashboard"

    @hookimpl
    def chancy_register_commands(self, subparsers: Any) -> None:
        """``chancy dashboard``."""
        from chancy_plugin_dashboard.cli import register

        register(subparsers)
