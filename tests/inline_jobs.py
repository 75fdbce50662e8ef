"""Job functions of the inline-mode tests."""

from __future__ import annotations

import time
from typing import Any

from chancy_core import Job, QueuedJob

APP: Any = None  # the app a job pushes its follow-up on (set by the test)
RAN: list[str] = []


async def note(tag: str) -> str:
    """Record that it ran."""
    RAN.append(tag)
    return tag


def sync_note(tag: str) -> str:
    """Record that it ran (in a thread)."""
    RAN.append(tag)
    return tag


async def push_follow_up(tag: str) -> None:
    """Push another job on APP while running."""
    RAN.append(tag)
    await APP.push(Job.from_func(note, kwargs={"tag": f"{tag}-follow-up"}))


def flaky(tag: str, job_context: QueuedJob) -> int:
    """Fail on the first attempt."""
    RAN.append(f"{tag}-{job_context.attempts}")
    if job_context.attempts < 2:
        raise RuntimeError("first attempt fails")
    return job_context.attempts


def slow(seconds: float) -> None:
    """Sleep (past its time limit)."""
    time.sleep(seconds)
