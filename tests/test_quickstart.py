"""The demo (`python3 dev.py demo` runs examples/quickstart.py) on a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.db

QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def test_the_demo_runs_every_job_and_prints_each_error_in_full(database: str) -> None:
    done = subprocess.run(
        [sys.executable, str(QUICKSTART)],
        env={**os.environ, "CHANCY_DSN": database},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = " ".join(done.stdout.split())  # errors are wrapped over lines
    assert "all 8 jobs finished" in out
    # Nothing cut: what the limit was, and what to do about a refused function.
    assert "TimeLimitExceeded: job " in out and "exceeded its time limit of 1s" in out
    assert "JobNotAllowedError: " in out and "allow-list" in out
    assert "chancy_core.errors." not in out  # the type without its module
