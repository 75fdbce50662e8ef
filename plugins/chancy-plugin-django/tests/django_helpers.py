"""Helpers of the Django plugin's tests (a module of its own: ``conftest`` is not
importable by name when several plugins' tests run together)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[3] / "examples" / "django_project"


@contextmanager
def run_worker(
    project_database: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``manage.py chancy_worker`` running in its own process (with ``env`` over this
    process's environment); stopped with SIGTERM, after which it must exit with status 0.
    Its output goes to ``log`` (a pipe nobody reads could fill up and block it)."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "chancy_worker"],
            cwd=PROJECT,
            env={**os.environ, "EXAMPLE_DATABASE_URL": project_database, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while "started" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"manage.py chancy_worker did not start:\n{log.read_text()}")
        time.sleep(0.1)
    yield process
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"manage.py chancy_worker did not stop within 60 s:\n{log.read_text()}")
    assert code == 0, f"manage.py chancy_worker exited with {code}:\n{log.read_text()}"
