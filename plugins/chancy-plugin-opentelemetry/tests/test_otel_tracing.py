"""Spans of real pushes and runs on a real database, caught by the SDK's in-memory exporter."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager

import anyio
import pytest
from chancy_plugin_opentelemetry import META_KEY, OpenTelemetry
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from chancy_core import Chancy, Job, Limit, Queue, QueuedJob, Worker

pytestmark = [pytest.mark.anyio, pytest.mark.db]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]


def mark_current_span(label: str) -> str:
    """A job: tags whatever span is current while it runs (the run span, if it is current)."""
    trace.get_current_span().set_attribute("test.job_saw", label)
    return label


async def fail_async() -> None:
    raise ValueError("bad input on purpose")


async def sleep_long() -> None:
    await anyio.sleep(30)


def in_process() -> int:
    """A job for the process executor (it runs in a child process)."""
    return os.getpid()


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield provider, memory
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def run_all(app: Chancy, run_worker: RunWorker, refs: list[str]) -> list[QueuedJob]:
    with anyio.fail_after(30):
        async with run_worker(app):
            return [await app.wait_for_job(ref, timeout=20) for ref in refs]


async def test_one_trace_goes_from_the_request_through_the_push_to_the_run(
    database: str, run_worker: RunWorker, exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, memory = exporter
    plugin = OpenTelemetry(tracer_provider=provider)
    async with Chancy(database, plugins=[plugin]) as app:
        assert app.plugins.get_plugin("opentelemetry") is plugin
        await app.declare(Queue("default"))
        with provider.get_tracer("web").start_as_current_span("GET /signup"):
            ref = await app.push(Job.from_func(mark_current_span, kwargs={"label": "hi"}))
        stored = await app.get_job(ref)
        (done,) = await run_all(app, run_worker, [str(ref)])
    assert done.state is QueuedJob.State.SUCCEEDED
    spans = memory.get_finished_spans()
    (request,) = by_name(spans, "GET /signup")
    (send,) = by_name(spans, "send default")
    (process,) = by_name(spans, "process default")
    assert request.context is not None and send.context is not None and process.context is not None
    trace_id = request.context.trace_id
    assert send.context.trace_id == process.context.trace_id == trace_id
    assert send.parent is not None and send.parent.span_id == request.context.span_id
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert send.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert dict(send.attributes or {}) == {
        "messaging.system": "chancy",
        "messaging.destination.name": "default",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "chancy.job.func": done.func,
        "chancy.job.max_attempts": 1,
    }
    attributes = dict(process.attributes or {})
    assert attributes["messaging.system"] == "chancy"
    assert attributes["messaging.destination.name"] == "default"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.message.id"] == str(ref)
    assert attributes["chancy.job.attempt"] == 1
    assert str(attributes["messaging.client.id"])
    assert attributes["test.job_saw"] == "hi"  # the run span is current inside the job
    assert process.status.status_code is StatusCode.UNSET
    # The context travels in the job's meta, in the W3C format, under the documented key.
    assert stored is not None
    carrier = stored.meta[META_KEY]
    assert re.fullmatch(
        f"00-{trace_id:032x}-{send.context.span_id:016x}-[0-9a-f]{{2}}", carrier["traceparent"]
    ), carrier


async def test_a_failing_job_marks_its_run_span_as_an_error(
    database: str, run_worker: RunWorker, exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, memory = exporter
    async with Chancy(database, plugins=[OpenTelemetry(tracer_provider=provider)]) as app:
        await app.declare(Queue("threads", executor="thread"))
        ref = await app.push(Job.from_func(fail_async, queue="threads", max_attempts=2))
        with anyio.fail_after(30):
            async with run_worker(app):
                while (job := await app.get_job(ref)) is not None and job.state.value != "failed":
                    await anyio.sleep(0.05)
    runs = by_name(memory.get_finished_spans(), "process threads")
    assert [dict(s.attributes or {})["chancy.job.attempt"] for s in runs] == [1, 2]
    for run in runs:
        assert run.status.status_code is StatusCode.ERROR
        assert "bad input on purpose" in (run.status.description or "")
        (event,) = [e for e in run.events if e.name == "exception"]
        assert dict(event.attributes or {})["exception.type"] == "ValueError"
        assert dict(run.attributes or {})["error.type"] == "builtins.ValueError"
    (send,) = by_name(memory.get_finished_spans(), "send threads")
    assert send.context is not None
    assert {s.context.trace_id for s in runs if s.context} == {send.context.trace_id}


async def test_a_run_stopped_by_its_time_limit_is_an_error_too(
    database: str, run_worker: RunWorker, exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, memory = exporter
    async with Chancy(database, plugins=[OpenTelemetry(tracer_provider=provider)]) as app:
        await app.declare(Queue("default"))
        slow = Job.from_func(sleep_long).with_limits([Limit(Limit.Type.TIME, 1)])
        (done,) = await run_all(app, run_worker, [str(await app.push(slow))])
    assert done.state is QueuedJob.State.FAILED
    (run,) = by_name(memory.get_finished_spans(), "process default")
    assert run.status.status_code is StatusCode.ERROR
    assert "time limit" in (run.status.description or "")
    assert dict(run.attributes or {})["error.type"] == "cancelled"
    assert 0.9 < (run.end_time or 0) / 1e9 - (run.start_time or 0) / 1e9 < 10


async def test_jobs_on_a_process_executor_get_run_spans_in_the_worker_process(
    database: str, run_worker: RunWorker, exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, memory = exporter
    async with Chancy(database, plugins=[OpenTelemetry(tracer_provider=provider)]) as app:
        await app.declare(Queue("procs", executor="process", concurrency=2))
        with provider.get_tracer("web").start_as_current_span("batch"):
            refs = await app.push_many([Job.from_func(in_process, queue="procs")] * 2)
        done = await run_all(app, run_worker, [str(r) for r in refs])
    assert [j.state for j in done] == [QueuedJob.State.SUCCEEDED] * 2
    spans = memory.get_finished_spans()  # the run spans are made here, in the worker's process
    sends = {s.context.span_id: s for s in by_name(spans, "send procs") if s.context}
    runs = by_name(spans, "process procs")
    assert len(sends) == 2 and len(runs) == 2
    for send in sends.values():
        assert dict(send.attributes or {})["messaging.batch.message_count"] == 2
    assert {r.parent.span_id for r in runs if r.parent} == set(sends)
    ids = {dict(r.attributes or {})["messaging.message.id"] for r in runs}
    assert ids == {str(r) for r in refs}


async def test_link_only_starts_a_new_trace_linked_to_the_push(
    database: str, run_worker: RunWorker, exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, memory = exporter
    plugin = OpenTelemetry(tracer_provider=provider, link_only=True)
    async with Chancy(database, plugins=[plugin]) as app:
        await app.declare(Queue("default"))
        ref = await app.push(Job.from_func(mark_current_span, kwargs={"label": "linked"}))
        await run_all(app, run_worker, [str(ref)])
    (send,) = by_name(memory.get_finished_spans(), "send default")
    (process,) = by_name(memory.get_finished_spans(), "process default")
    assert send.context is not None and process.context is not None
    assert process.parent is None
    assert process.context.trace_id != send.context.trace_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]


async def test_without_an_sdk_the_discovered_plugin_leaves_jobs_alone(chancy: Chancy) -> None:
    assert isinstance(chancy.plugins.get_plugin("opentelemetry"), OpenTelemetry)
    ref = await chancy.push(Job.from_func(mark_current_span, kwargs={"label": "x"}))
    stored = await chancy.get_job(ref)
    assert stored is not None and META_KEY not in stored.meta
