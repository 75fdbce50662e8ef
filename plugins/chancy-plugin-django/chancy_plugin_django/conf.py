"""Configuration from Django's settings, and the one :class:`~chancy_core.Chancy` per process.

``settings.CHANCY`` (every key optional)::

    CHANCY = {
        "DSN": None,          # default: built from DATABASES[DATABASE]
        "DATABASE": "default",  # the Django database jobs are pushed on (same transaction)
        "PREFIX": "chancy_",  # table prefix
        "OPTIONS": {},        # more Chancy(...) arguments: plugins, max_connections, ...
        "QUEUES": {"default": {"concurrency": 4, "executor": "thread"}},  # Queue(...) arguments
        "WORKER": {},         # more Worker(...) arguments for `manage.py chancy_worker`
        "ALLOW": [],          # module prefixes of plain @job functions the worker may run
    }
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from psycopg.conninfo import make_conninfo

from chancy_core import Chancy, Queue
from chancy_plugin_django.signals import worker_plugins

__all__ = ["DEFAULTS", "chancy_settings", "dsn_from_database", "get_app", "queues"]

DEFAULTS: dict[str, Any] = {
    "DSN": None,
    "DATABASE": "default",
    "PREFIX": "chancy_",
    "OPTIONS": {},
    "QUEUES": {"default": {"concurrency": 4, "executor": "thread"}},
    "WORKER": {},
    "ALLOW": [],
}
"""The value of each ``CHANCY`` key that is not given."""

# OPTIONS keys Django reads itself; every other OPTIONS entry is a libpq parameter.
_DJANGO_OPTIONS = frozenset(
    {
        "assume_role",
        "context",
        "cursor_factory",
        "isolation_level",
        "pool",
        "prepare_threshold",
        "server_side_binding",
    }
)

_lock = threading.Lock()
_app: Chancy | None = None


def chancy_settings() -> dict[str, Any]:
    """``settings.CHANCY`` over :data:`DEFAULTS`; unknown keys are an error."""
    given = getattr(settings, "CHANCY", None) or {}
    if not isinstance(given, dict):
        raise ImproperlyConfigured(
            "settings.CHANCY must be a dict, e.g. CHANCY = {'QUEUES': {...}}"
        )
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"unknown CHANCY setting(s) {', '.join(unknown)}; the keys are {', '.join(DEFAULTS)}"
        )
    return {**DEFAULTS, **given}


def dsn_from_database(alias: str) -> str:
    """A libpq connection string for Django's database ``alias`` (PostgreSQL only)."""
    try:
        db = settings.DATABASES[alias]
    except KeyError:
        raise ImproperlyConfigured(
            f"CHANCY['DATABASE'] is {alias!r}, which is not in settings.DATABASES"
        ) from None
    if "postgresql" not in db.get("ENGINE", ""):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}] uses {db.get('ENGINE')!r}; chancy needs PostgreSQL"
            " (django.db.backends.postgresql), or give CHANCY['DSN']"
        )
    params: dict[str, Any] = {
        "dbname": db.get("NAME"),
        "user": db.get("USER"),
        "password": db.get("PASSWORD"),
        "host": db.get("HOST"),
        "port": db.get("PORT"),
    }
    for key, value in (db.get("OPTIONS") or {}).items():
        if key not in _DJANGO_OPTIONS and isinstance(value, str | int):
            params[key] = value
    return make_conninfo("", **{k: str(v) for k, v in params.items() if v not in (None, "")})


def get_app() -> Chancy:
    """This process's app, built from the settings on first use (pools open lazily), with
    the :class:`~chancy_plugin_django.signals.DjangoTaskSignals` plugin."""
    global _app
    with _lock:
        if _app is None:
            conf = chancy_settings()
            dsn = conf["DSN"] or dsn_from_database(conf["DATABASE"])
            options = dict(conf["OPTIONS"])
            # Django's task_started/task_finished, sent by the worker that runs the task.
            options["plugins"] = worker_plugins(list(options.get("plugins") or []))
            _app = Chancy(dsn, prefix=conf["PREFIX"], **options)
        return _app


def queues() -> list[Queue]:
    """The queues of ``CHANCY['QUEUES']``, which ``manage.py chancy_worker`` declares."""
    found = chancy_settings()["QUEUES"]
    if not isinstance(found, dict):
        raise ImproperlyConfigured(
            "CHANCY['QUEUES'] must map queue names to Queue arguments, e.g."
            " {'default': {'concurrency': 4, 'executor': 'thread'}}"
        )
    return [Queue(name, **options) for name, options in found.items()]


def _reset(*, setting: str, **kwargs: Any) -> None:
    """Forget the app when the settings it was built from change (tests' override_settings)."""
    global _app
    if setting in ("CHANCY", "DATABASES"):
        with _lock:
            old, _app = _app, None
        if old is not None:
            old.sync_close()


setting_changed.connect(_reset, dispatch_uid="chancy_plugin_django.conf._reset")
