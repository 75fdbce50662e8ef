"""OpenTelemetry tracing for chancy-core: one trace from the request that pushes a job to its run.

* On push (:func:`chancy_before_push`, in the pushing process), a ``PRODUCER`` span
  ``send <queue>`` per job, child of whatever span is current (the web request), and its
  context written into the job's meta under :data:`META_KEY` by the W3C Trace Context
  propagator (``{"traceparent": "00-...", "tracestate": "..."}``, plus W3C ``baggage``).
* On run (:func:`chancy_job_wrap`, on the worker's event loop, around the executor), a
  ``CONSUMER`` span ``process <queue>`` whose parent is the context read back from the
  meta (or, with ``link_only=True``, a new trace linked to it). The span is current while
  an ``async`` or ``thread`` job runs, so spans the job makes are its children. A job that
  raises sets the span's status to ``ERROR``, ``error.type`` to the exception's class and
  records the exception; a run the worker stops (time limit, cancellation, shutdown) sets
  ``ERROR`` and ``error.type="cancelled"``.

Attribute names follow OpenTelemetry's messaging semantic conventions (``messaging.*``).
Without an SDK configured, OpenTelemetry's API is a no-op and so is this plugin, apart
from propagating a context that is already current.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from chancy_core import Chancy, Job, QueuedJob, hookimpl

if TYPE_CHECKING:
    from chancy_core.hookspecs import WorkerHandle as Worker

__all__ = ["META_KEY", "SYSTEM", "OpenTelemetry"]

META_KEY = "opentelemetry"
"""The ``Job.meta`` key holding the pushing span's context: a dict of W3C headers."""

SYSTEM = "chancy"
"""The value of ``messaging.system``."""

try:
    _VERSION = version("chancy-plugin-opentelemetry")
except PackageNotFoundError:  # pragma: no cover - run from a source tree
    _VERSION = "0"

# Messaging semantic conventions (opentelemetry-semantic-conventions names them in its
# incubating module; spelled out here so the plugin needs only the API).
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
MESSAGING_CLIENT_ID = "messaging.client.id"
ERROR_TYPE = "error.type"
JOB_FUNC = "chancy.job.func"
JOB_ATTEMPT = "chancy.job.attempt"
JOB_MAX_ATTEMPTS = "chancy.job.max_attempts"


_STOPPED = "stopped before it finished (time limit, cancellation or shutdown)"


class OpenTelemetry:
    """The OpenTelemetry plugin.

    :param tracer_provider: where spans go; default: the global one
        (``opentelemetry.trace.set_tracer_provider``), looked up when spans start.
    :param propagator: how the context is written into and read from ``Job.meta``;
        default: W3C Trace Context and W3C Baggage (not the global propagator, so the
        format in the database does not change with a process's configuration).
    :param link_only: start each run in a new trace *linked* to the push, instead of
        as a child of it (for queues whose jobs outlive any sensible trace).
    """

    name = "opentelemetry"

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        link_only: bool = False,
    ) -> None:
        self.tracer = trace.get_tracer(
            "chancy_plugin_opentelemetry", _VERSION, tracer_provider=tracer_provider
        )
        self.propagator: TextMapPropagator = propagator or CompositePropagator(
            [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
        )
        self.link_only = link_only

    # --- pushing -------------------------------------------------------------------------

    @hookimpl
    def chancy_before_push(self, app: Chancy, jobs: list[Job]) -> None:
        """Open a send span per job and put its context in the job's meta."""
        for n, job in enumerate(jobs):
            attributes: dict[str, Any] = {
                MESSAGING_SYSTEM: SYSTEM,
                MESSAGING_DESTINATION_NAME: job.queue,
                MESSAGING_OPERATION_TYPE: "send",
                MESSAGING_OPERATION_NAME: "send",
                JOB_FUNC: job.func,
                JOB_MAX_ATTEMPTS: job.max_attempts,
            }
            if len(jobs) > 1:
                attributes[MESSAGING_BATCH_MESSAGE_COUNT] = len(jobs)
            carrier: dict[str, str] = {}
            with self.tracer.start_as_current_span(
                f"send {job.queue}", kind=SpanKind.PRODUCER, attributes=attributes
            ):
                self.propagator.inject(carrier)
            if carrier:
                jobs[n] = job.with_meta({**job.meta, META_KEY: carrier})

    # --- running -------------------------------------------------------------------------

    @hookimpl
    def chancy_job_wrap(self, worker: Worker, job: QueuedJob) -> AbstractAsyncContextManager[None]:
        """A process span around the attempt: a child of the send span (with ``link_only``,
        linked to it instead)."""
        return self._run_span(worker.worker_id, job)

    @asynccontextmanager
    async def _run_span(self, worker_id: str, job: QueuedJob) -> AsyncIterator[None]:
        carrier = job.meta.get(META_KEY)
        pushed = self.propagator.extract(carrier if isinstance(carrier, dict) else {})
        links: list[Link] = []
        parent = pushed
        if self.link_only:
            context = trace.get_current_span(pushed).get_span_context()
            links = [Link(context)] if context.is_valid else []
            parent = self.propagator.extract({})  # an empty context: a new trace
        attributes: dict[str, Any] = {
            MESSAGING_SYSTEM: SYSTEM,
            MESSAGING_DESTINATION_NAME: job.queue,
            MESSAGING_OPERATION_TYPE: "process",
            MESSAGING_OPERATION_NAME: "process",
            MESSAGING_MESSAGE_ID: job.id,
            MESSAGING_CLIENT_ID: worker_id,
            JOB_FUNC: job.func,
            JOB_ATTEMPT: job.attempts,
            JOB_MAX_ATTEMPTS: job.max_attempts,
        }
        with self.tracer.start_as_current_span(
            f"process {job.queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except anyio.get_cancelled_exc_class():
                # The worker stopped the run: its time limit, a cancellation or a shutdown.
                span.set_attribute(ERROR_TYPE, "cancelled")
                span.set_status(Status(StatusCode.ERROR, _STOPPED))
                raise
            except BaseException as exc:
                span.record_exception(exc)
                span.set_attribute(ERROR_TYPE, f"{type(exc).__module__}.{type(exc).__qualname__}")
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
