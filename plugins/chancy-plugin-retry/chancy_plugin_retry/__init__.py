"""chancy-plugin-retry: per-job retry policies with exponential backoff, jitter
and per-exception rules.

Attach a policy to a job with :meth:`Retry.policy`; it is stored under
``Job.meta["retry"]``. When an attempt fails, the worker asks
:func:`~chancy_core.hookspecs.chancy_retry_decision`; this plugin answers for
every job that carries a policy (and, with ``Retry(default=...)``, for those
that do not):

* a cancelled job is never retried;
* an error whose class (or any base class) is named in ``give_up_on`` fails
  the job at once;
* when ``retry_on`` is not empty, an error that matches none of its names
  fails the job at once;
* a job that has used its ``max_attempts`` fails, with every attempt's error
  kept in ``QueuedJob.errors``;
* otherwise the job is retried after
  ``min(backoff * 2 ** (attempt - 1), max_backoff) * (1 + u)``, where ``u`` is
  drawn uniformly from ``[-jitter, +jitter]``.

Exception names are stored as strings: ``"Class"`` (matches any class of that
name) or ``"module.Class"`` (matches that class only). They are matched
against the error's whole MRO, so ``"OSError"`` also matches
``ConnectionResetError``.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from chancy_core import Job, hookimpl
from chancy_core.errors import InvalidJobError, JobCancelled

if TYPE_CHECKING:
    from chancy_core import QueuedJob

__all__ = ["KEY", "Retry", "RetryPolicy", "exception_names", "make_policy", "retry_delay"]

log = logging.getLogger(__name__)

KEY = "retry"
"""The key of ``Job.meta`` this plugin owns."""

J = TypeVar("J", bound=Job)
ExceptionName = str | type[BaseException]
RetryPolicy = dict[str, Any]
"""A policy as stored in ``Job.meta["retry"]``: ``backoff``, ``max_backoff``,
``jitter`` (numbers) and ``retry_on``, ``give_up_on`` (lists of names)."""

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _name_of(item: ExceptionName) -> str:
    if isinstance(item, type) and issubclass(item, BaseException):
        if item.__module__ == "builtins":
            return item.__qualname__
        return f"{item.__module__}.{item.__qualname__}"
    if isinstance(item, str) and _NAME.match(item):
        return item
    raise InvalidJobError(
        f"invalid exception name {item!r} in a retry policy: give an exception class or its"
        " name, 'Class' or 'module.Class'"
    )


def _names(items: Iterable[ExceptionName] | ExceptionName, what: str) -> list[str]:
    if isinstance(items, str | type):
        raise InvalidJobError(
            f"{what} takes a tuple of exception names, not one: write ({items!r},)"
        )
    return [_name_of(item) for item in items]


def _number(value: object, what: str, low: float, high: float = math.inf) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        bounds = f"from {low} to {high}" if math.isfinite(high) else f">= {low}"
        raise InvalidJobError(f"invalid retry {what} {value!r}: use a number {bounds}")
    return float(value)


def make_policy(
    *,
    backoff: float = 1.0,
    max_backoff: float = 300.0,
    jitter: float = 0.1,
    retry_on: Iterable[ExceptionName] = (),
    give_up_on: Iterable[ExceptionName] = (),
) -> RetryPolicy:
    """Validate a policy and return it in its stored (JSON) form."""
    return {
        "backoff": _number(backoff, "backoff", 0.0),
        "max_backoff": _number(max_backoff, "max_backoff", 0.0),
        "jitter": _number(jitter, "jitter", 0.0, 1.0),
        "retry_on": _names(retry_on, "retry_on"),
        "give_up_on": _names(give_up_on, "give_up_on"),
    }


def _read_policy(stored: object) -> RetryPolicy:
    """Validate a policy read back from ``Job.meta`` (which anyone can write)."""
    if not isinstance(stored, Mapping):
        raise InvalidJobError(f"Job.meta[{KEY!r}] must be an object, not {stored!r}")
    known = {"backoff", "max_backoff", "jitter", "retry_on", "give_up_on"}
    return make_policy(**{k: v for k, v in stored.items() if k in known})


def exception_names(error: BaseException) -> set[str]:
    """Every name a policy may use for ``error``: ``Class`` and ``module.Class`` of each
    class in its MRO."""
    names: set[str] = set()
    for cls in type(error).__mro__:
        names.update((cls.__name__, cls.__qualname__, f"{cls.__module__}.{cls.__qualname__}"))
    return names


def retry_delay(policy: Mapping[str, Any], attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first).

    ``min(backoff * 2 ** (attempt - 1), max_backoff)``, scaled by a factor drawn
    uniformly from ``[1 - jitter, 1 + jitter]``.
    """
    backoff = float(policy["backoff"])
    cap = float(policy["max_backoff"])
    exponent = min(max(attempt - 1, 0), 1023)  # 2.0 ** 1024 overflows a float
    base = min(backoff * 2.0**exponent, cap) if backoff else 0.0
    jitter = float(policy["jitter"])
    if jitter and base:
        base *= 1.0 + (rng or random).uniform(-jitter, jitter)
    return max(base, 0.0)


class Retry:
    """Retries failed jobs according to the policy in ``Job.meta["retry"]``.

    Installed, it is discovered through the ``chancy`` entry point; pass
    ``Retry(...)`` in ``Chancy(plugins=[...])`` to set options.

    :param default: a policy (from :func:`make_policy`) for jobs that carry none;
        ``None`` (the default) leaves those jobs to the core, which retries at
        once while attempts remain.
    :param rng: the random source for jitter (seed one in tests).
    """

    name = KEY

    def __init__(
        self, *, default: RetryPolicy | None = None, rng: random.Random | None = None
    ) -> None:
        self.default = None if default is None else _read_policy(default)
        self.rng = rng or random.Random()

    @staticmethod
    def policy(
        job: J,
        *,
        backoff: float = 1.0,
        max_backoff: float = 300.0,
        jitter: float = 0.1,
        retry_on: Iterable[ExceptionName] = (),
        give_up_on: Iterable[ExceptionName] = (),
        max_attempts: int | None = None,
    ) -> J:
        """Return a copy of ``job`` that is retried with this policy.

        :param job: the job to retry.
        :param backoff: seconds before the first retry; each next wait doubles.
        :param max_backoff: the longest wait, in seconds (before jitter).
        :param jitter: each wait is scaled by a random factor in ``[1 - jitter, 1 + jitter]``.
        :param retry_on: exception classes or names to retry on; empty: any exception.
        :param give_up_on: exception classes or names that fail the job at once.
        :param max_attempts: also set ``Job.max_attempts`` (attempts in all, first included).
        """
        stored = make_policy(
            backoff=backoff,
            max_backoff=max_backoff,
            jitter=jitter,
            retry_on=retry_on,
            give_up_on=give_up_on,
        )
        if max_attempts is not None:
            job = job.with_max_attempts(max_attempts)
        return job.with_meta({**job.meta, KEY: stored})

    def decide(
        self, job: QueuedJob, error: BaseException, now: datetime | None = None
    ) -> datetime | bool | None:
        """The retry decision for ``job`` after ``error`` (see the module docs)."""
        stored = job.meta.get(KEY, self.default)
        if stored is None:
            return None
        try:
            policy = _read_policy(stored)
        except InvalidJobError as exc:
            log.warning(
                "job %s has an invalid retry policy (%s); leaving it to the default",
                job.id,
                exc,
                extra={"job_id": job.id},
            )
            return None
        if isinstance(error, JobCancelled):
            return False
        names = exception_names(error)
        if names.intersection(policy["give_up_on"]):
            return False
        if policy["retry_on"] and not names.intersection(policy["retry_on"]):
            return False
        if job.attempts >= job.max_attempts:
            return False
        delay = retry_delay(policy, job.attempts, self.rng)
        return (now or datetime.now(UTC)) + timedelta(seconds=delay)

    @hookimpl
    def chancy_retry_decision(self, job: QueuedJob, error: BaseException) -> datetime | bool | None:
        """See :meth:`decide`."""
        return self.decide(job, error)
