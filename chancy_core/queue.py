"""Queues: where jobs wait, and how workers run them.

A queue is declared in the database (``await chancy.declare(Queue(...))``) and
can be changed, paused, resumed or deleted while workers run; each worker
notices within the queue's polling interval, at once when notifications work.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chancy_core.errors import InvalidQueueError
from chancy_core.job import _is_int, _is_unicode, check_queue_name, to_json

__all__ = ["EXECUTORS", "Queue"]

EXECUTORS = ("async", "thread", "process")
"""The executors a queue may name: ``async`` runs coroutine functions on the
worker's event loop, ``thread`` runs functions in a thread pool, ``process``
runs them in a pool of child processes."""


@dataclass(frozen=True, kw_only=True)
class Queue:
    """A named queue and how workers serve it."""

    class State(enum.Enum):
        """Whether workers take jobs from the queue."""

        ACTIVE = "active"
        PAUSED = "paused"

    name: str = field(kw_only=False)
    """The queue's name (1-100 letters, digits, ``_ . : -``)."""
    concurrency: int = 1
    """How many of its jobs one worker runs at once."""
    executor: str = "async"
    """``async``, ``thread`` or ``process`` (see :data:`EXECUTORS`)."""
    executor_options: dict[str, Any] = field(default_factory=dict)
    """Options for the executor, e.g. ``{"max_tasks_per_child": 100}`` for ``process``."""
    polling_interval: float = 1.0
    """Seconds between fetches when no notification arrives."""
    rate_limit: int | None = None
    """At most this many jobs start per ``rate_limit_window``, across all workers."""
    rate_limit_window: int | None = None
    """The rate limit's window in seconds."""
    tags: frozenset[str] = frozenset({"*"})
    """Glob patterns; a worker serves the queue if one matches one of the worker's tags."""
    state: State = State.ACTIVE
    """``active`` or ``paused``."""

    def __post_init__(self) -> None:
        check_queue_name(self.name, InvalidQueueError)
        if not _is_int(self.concurrency) or not 1 <= self.concurrency <= 10_000:
            raise InvalidQueueError(
                f"queue {self.name!r}: concurrency must be an integer from 1 to 10000,"
                f" not {self.concurrency!r}"
            )
        if self.executor not in EXECUTORS:
            raise InvalidQueueError(
                f"queue {self.name!r}: executor must be one of {', '.join(EXECUTORS)},"
                f" not {self.executor!r}"
            )
        if not isinstance(self.executor_options, dict):
            raise InvalidQueueError(f"queue {self.name!r}: executor_options must be a dict")
        try:
            to_json(self.executor_options)
        except ValueError as exc:
            raise InvalidQueueError(f"queue {self.name!r}: executor_options {exc}") from None
        if (
            isinstance(self.polling_interval, bool)
            or not isinstance(self.polling_interval, int | float)
            or not 0.01 <= self.polling_interval <= 3600
        ):
            raise InvalidQueueError(
                f"queue {self.name!r}: polling_interval must be a number of seconds from 0.01"
                f" to 3600, not {self.polling_interval!r}"
            )
        if (self.rate_limit is None) != (self.rate_limit_window is None):
            raise InvalidQueueError(
                f"queue {self.name!r}: give both rate_limit and rate_limit_window, or neither"
            )
        for name in ("rate_limit", "rate_limit_window"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise InvalidQueueError(
                    f"queue {self.name!r}: {name} must be a positive integer, not {value!r}"
                )
        tags = self.tags
        if isinstance(tags, str) or not isinstance(tags, Iterable):
            raise InvalidQueueError(f"queue {self.name!r}: tags must be a set of strings")
        object.__setattr__(self, "tags", frozenset(tags))
        if not all(
            isinstance(tag, str) and tag and "\x00" not in tag and _is_unicode(tag)
            for tag in self.tags
        ):
            raise InvalidQueueError(
                f"queue {self.name!r}: tags must be non-empty strings without NUL characters"
                " or lone surrogates"
            )
        if not isinstance(self.state, Queue.State):
            try:
                object.__setattr__(self, "state", Queue.State(self.state))
            except ValueError:
                raise InvalidQueueError(
                    f"queue {self.name!r}: state must be 'active' or 'paused'"
                ) from None

    def served_by(self, worker_tags: Iterable[str]) -> bool:
        """Whether a worker with these tags serves this queue."""
        return any(
            fnmatch.fnmatchcase(tag, pattern) for pattern in self.tags for tag in worker_tags
        )

    def with_state(self, state: State) -> Queue:
        """Return a copy in another state."""
        return dataclasses.replace(self, state=state)
