"""The example project's settings plus an app that records Django's task signals (for
test_django_signals.py's worker)."""

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_signal_recorder.RecorderConfig"]
