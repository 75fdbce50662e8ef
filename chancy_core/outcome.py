"""What plugins are told about an attempt, and what they may answer.

* :class:`Outcome`: how an attempt ended, given to ``chancy_job_completed`` once
  the database has accepted it.
* :class:`RetryDecision`: what ``chancy_retry_decision`` may return to retry a job
  and change its ``meta`` with the same write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chancy_core.job import QueuedJob

__all__ = ["Outcome", "RetryDecision"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How one attempt of a job ended, as written to the database."""

    state: QueuedJob.State
    """The state written: ``succeeded``, ``failed`` or ``retrying``."""
    error: BaseException | None = None
    """What the attempt raised (or the limit it hit), ``None`` on success."""
    result: Any = None
    """What the job's function returned (``None`` when it failed)."""
    run_seconds: float = 0.0
    """Seconds from the start of the attempt on this worker until its function ended."""
    wait_seconds: float = 0.0
    """Seconds from when the job was due (``scheduled_at``) until this worker claimed it
    (0 if the clocks disagree)."""
    scheduled_at: datetime | None = None
    """When a ``retrying`` job runs again (``None``: at once, or not retried)."""


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """Retry the job at ``at``, and set these top-level keys of its ``meta``.

    Returned by ``chancy_retry_decision`` instead of a bare ``datetime`` when the
    plugin wants to record something with the retry (for example its own state under
    its ``meta`` key); the keys of ``meta`` replace the job's, in the same write."""

    at: datetime
    """When to run the job again (timezone-aware; naive means UTC)."""
    meta: dict[str, Any] | None = None
    """Top-level ``meta`` keys to set, or ``None``."""
