"""Settings of the example project: Django's Tasks framework running on chancy.

The database comes from ``EXAMPLE_DATABASE_URL``; chancy uses the same one
(``CHANCY['DSN']`` is not given, so it is built from ``DATABASES['default']``).
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(
    os.environ.get("EXAMPLE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/django_example")
)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]
USE_TZ = True
ROOT_URLCONF = "project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.postgres",  # ArrayField (chancy_plugin_django.models); Django 6 checks it
    "chancy_plugin_django",
    "notes",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
    }
}

# Django's Tasks framework: every @task runs on chancy.
TASKS = {
    "default": {
        "BACKEND": "chancy_plugin_django.backend.ChancyBackend",
        "QUEUES": ["default"],
    }
}

# chancy: the queues `manage.py chancy_worker` declares and serves.
CHANCY = {
    "QUEUES": {"default": {"concurrency": 2, "executor": "process", "polling_interval": 0.5}},
    "WORKER": {"shutdown_timeout": 10.0},
}
