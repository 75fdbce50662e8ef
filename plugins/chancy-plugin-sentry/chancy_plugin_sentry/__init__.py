"""Report failed chancy-core jobs to Sentry, with the job's context.

When an attempt ends in ``failed`` (by default), or with any error (``every_failure=True``),
the exception is sent to Sentry as an unhandled error (mechanism ``chancy``), in a scope
of its own carrying:

* the context ``chancy job``: id, function, queue, attempt, max attempts, the state
  written, whether it is final, times, the worker, and the kwargs only if asked;
* tags ``chancy.queue``, ``chancy.func``, ``chancy.state``, ``chancy.final``, the
  plugin's ``tags`` and the job's own (see :meth:`Sentry.tag`);
* the transaction name: the job's function.

The client is the one ``sentry_sdk.init`` set up, or the one given; without either, the
SDK drops the event and the plugin costs a scope per failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sentry_sdk
from sentry_sdk.utils import event_from_exception

from chancy_core import Job, Outcome, QueuedJob, hookimpl
from chancy_core.errors import ConfigurationError, JobCancelled

if TYPE_CHECKING:
    from chancy_core.hookspecs import WorkerHandle as Worker

__all__ = ["CONTEXT", "DEFAULT_IGNORE", "META_KEY", "Sentry"]

META_KEY = "sentry"
"""The ``Job.meta`` key holding a job's own tags: ``{"tags": {"tenant": "acme"}}``."""

CONTEXT = "chancy job"
"""The name of the event context holding the job's fields."""

DEFAULT_IGNORE: tuple[type[BaseException] | str, ...] = (JobCancelled,)
"""Errors not reported by default: a job cancelled on purpose is not a bug."""

_MAX_TAG = 200  # Sentry truncates tag values at 200 characters


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class Sentry:
    """The Sentry plugin.

    :param every_failure: report every failed attempt, including those that will be
        retried (``retrying``); by default only the final failure (``failed``) is.
    :param client: the :class:`sentry_sdk.Client` to send to; default: the current one
        (what ``sentry_sdk.init`` set up).
    :param tags: tags added to every event.
    :param ignore: exception types, or their ``"module.QualName"``, never reported
        (matched against the exception's classes, so subclasses are ignored too).
    :param send_kwargs: add the job's kwargs to the context (off: they may hold
        personal data).
    """

    name = "sentry"

    def __init__(
        self,
        *,
        every_failure: bool = False,
        client: sentry_sdk.Client | None = None,
        tags: Mapping[str, str] | None = None,
        ignore: Sequence[type[BaseException] | str] = DEFAULT_IGNORE,
        send_kwargs: bool = False,
    ) -> None:
        names = []
        for item in ignore:
            if isinstance(item, type) and issubclass(item, BaseException):
                names.append(_qualname(item))
            elif isinstance(item, str) and item:
                names.append(item)
            else:
                raise ConfigurationError(
                    f"ignore: {item!r} is neither an exception type nor its 'module.QualName'"
                )
        self.every_failure = every_failure
        self.client = client
        self.tags = dict(tags or {})
        self.ignore = frozenset(names)
        self.send_kwargs = send_kwargs

    @staticmethod
    def tag(job: Job, **tags: str) -> Job:
        """``job`` with tags its failures are reported with (kept in ``Job.meta["sentry"]``)."""
        bad = [key for key, value in tags.items() if not isinstance(value, str)]
        if bad:
            raise ConfigurationError(f"Sentry tags must be strings; not {', '.join(bad)}")
        mine = job.meta.get(META_KEY) or {}
        merged = {**(mine.get("tags") or {}), **tags}
        return job.with_meta({**job.meta, META_KEY: {**mine, "tags": merged}})

    @hookimpl
    def chancy_job_completed(self, worker: Worker, job: QueuedJob, outcome: Outcome) -> None:
        """Report a job that failed for good (every failed attempt with ``every_failure``) to
        Sentry, unless its error is ignored."""
        state, failure = outcome.state.value, outcome.error
        if failure is None or not (state == "failed" or self.every_failure):
            return
        if any(_qualname(cls) in self.ignore for cls in type(failure).__mro__):
            return
        self.report(worker, job, state, failure)

    def report(
        self, worker: Worker | None, job: QueuedJob, state: str, error: BaseException
    ) -> None:
        """Send ``error`` of an attempt of ``job`` that ended in ``state``, with its context."""
        final = state == "failed"
        context: dict[str, Any] = {
            "id": job.id,
            "func": job.func,
            "queue": job.queue,
            "attempt": job.attempts,
            "max_attempts": job.max_attempts,
            "state": state,
            "final": final,
            "priority": job.priority,
            "scheduled_at": job.scheduled_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "unique_key": job.unique_key,
            "worker": worker.worker_id if worker is not None else None,
        }
        if self.send_kwargs:
            context["kwargs"] = job.kwargs
        own = job.meta.get(META_KEY)
        own_tags = own.get("tags") if isinstance(own, dict) else None
        with sentry_sdk.new_scope() as scope:
            if self.client is not None:
                scope.set_client(self.client)
            scope.set_context(CONTEXT, context)
            scope.set_transaction_name(job.func)
            tags = {
                **self.tags,
                **(own_tags if isinstance(own_tags, dict) else {}),
                "chancy.queue": job.queue,
                "chancy.func": job.func,
                "chancy.state": state,
                "chancy.final": "yes" if final else "no",
            }
            for key, value in tags.items():
                scope.set_tag(str(key), str(value)[:_MAX_TAG])
            event, hint = event_from_exception(
                error,
                client_options=scope.get_client().options,
                mechanism={"type": "chancy", "handled": False},
            )
            scope.capture_event(event, hint=hint)
