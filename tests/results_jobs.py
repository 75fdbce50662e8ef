"""Job functions of the results and progress tests (imported by process children too)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from chancy_core import QueuedJob


def give(value: Any) -> Any:
    """Return what it is given (a sync job)."""
    return value


async def agive(value: Any) -> Any:
    """Return what it is given (an async job)."""
    await asyncio.sleep(0)
    return value


def give_set() -> Any:
    """Return a value JSON cannot encode."""
    return {1, 2, 3}


class Unpicklable:
    """A value that cannot be pickled (nor encoded as JSON)."""

    def __reduce__(self) -> Any:
        raise TypeError("Unpicklable cannot be pickled")


def give_unpicklable() -> Any:
    """Return a value the process executor cannot send back."""
    return Unpicklable()


def give_big(size: int) -> str:
    """Return a string of ``size`` characters."""
    return "x" * size


def _wait_for(path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def progress(job_context: QueuedJob, gate: str) -> str:
    """Report half, wait for ``gate`` (a file) to exist, report done, return."""
    job_context.set_progress(0.25, "started")
    job_context.set_progress(0.5, "half")
    _wait_for(gate)
    job_context.set_progress(1.0, "done")
    return "finished"


async def aprogress(job_context: QueuedJob, gate: str) -> str:
    """The async twin of :func:`progress`."""
    job_context.set_progress(0.5, "half")
    deadline = time.monotonic() + 20
    while not os.path.exists(gate) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    job_context.set_progress(1.0, "done")
    return "finished"


def many_progress(job_context: QueuedJob, n: int) -> int:
    """Report progress ``n`` times as fast as it can; the last is (1.0, 'last')."""
    for i in range(n):
        job_context.set_progress(i / n, f"step {i}")
    job_context.set_progress(1.0, "last")
    return n


def bad_progress(job_context: QueuedJob) -> str:
    """Report a fraction outside 0..1: the job fails with a clear error."""
    job_context.set_progress(1.5, "too far")
    return "unreachable"


def progress_then_fail(job_context: QueuedJob) -> str:
    """Attempt 1 reports progress and fails; attempt 2 reports nothing and succeeds."""
    if job_context.attempts == 1:
        job_context.set_progress(0.3, "first attempt")
        raise RuntimeError("first attempt fails")
    return "second"
