"""Failed jobs run by a real worker on a real database, reported through a capturing transport."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import pytest
import sentry_sdk
from chancy_plugin_sentry import CONTEXT, Sentry
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from chancy_core import Chancy, Job, Queue, QueuedJob, Worker
from chancy_core.errors import ConfigurationError

pytestmark = [pytest.mark.anyio, pytest.mark.db]

RunWorker = Callable[..., AbstractAsyncContextManager[Worker]]
DSN = "https://public@sentry.example.invalid/1"


class Captured(Transport):
    """A transport that keeps every envelope instead of sending it."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        found = [e.get_event() for e in self.envelopes]
        return [dict(event) for event in found if event is not None]


class PaymentDeclined(Exception):
    """A failure a job raises."""


def charge(amount: int) -> None:
    raise PaymentDeclined(f"declined: {amount}")


async def fine() -> str:
    return "ok"


@pytest.fixture
def transport() -> Iterator[tuple[sentry_sdk.Client, Captured]]:
    captured = Captured()
    client = sentry_sdk.Client(
        DSN, transport=captured, default_integrations=False, auto_enabling_integrations=False
    )
    yield client, captured
    client.close()


async def run_until_done(app: Chancy, run_worker: RunWorker, refs: list[Any]) -> list[QueuedJob]:
    with anyio.fail_after(30):
        async with run_worker(app):
            while True:
                jobs = await app.get_jobs(refs)
                if all(j is not None and j.state.value in ("succeeded", "failed") for j in jobs):
                    return [j for j in jobs if j is not None]
                await anyio.sleep(0.05)


async def test_only_the_final_failure_is_reported_with_the_job_context(
    database: str, run_worker: RunWorker, transport: tuple[sentry_sdk.Client, Captured]
) -> None:
    client, captured = transport
    plugin = Sentry(client=client, tags={"service": "billing"})
    async with Chancy(database, plugins=[plugin]) as app:
        assert app.plugins.get_plugin("sentry") is plugin
        await app.declare(Queue("payments", executor="thread"))
        failing = Sentry.tag(
            Job.from_func(charge, queue="payments", kwargs={"amount": 42}, max_attempts=3),
            tenant="acme",
        )
        refs = await app.push_many([failing, Job.from_func(fine, queue="payments")])
        failed, succeeded = await run_until_done(app, run_worker, refs)
    assert failed.state is QueuedJob.State.FAILED and failed.attempts == 3
    assert succeeded.state is QueuedJob.State.SUCCEEDED
    (event,) = captured.events()  # three failed attempts, one final failure, one event
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "PaymentDeclined"
    assert exception["value"] == "declined: 42"
    assert exception["mechanism"] == {"type": "chancy", "handled": False}
    assert any(frame["function"] == "charge" for frame in exception["stacktrace"]["frames"])
    context = event["contexts"][CONTEXT]
    assert context["id"] == str(refs[0])
    assert context["func"] == failed.func
    assert context["queue"] == "payments"
    assert context["attempt"] == 3
    assert context["max_attempts"] == 3
    assert context["state"] == "failed" and context["final"] is True
    assert context["worker"]
    assert "kwargs" not in context  # not sent unless asked
    assert event["tags"] == {
        "service": "billing",
        "tenant": "acme",
        "chancy.queue": "payments",
        "chancy.func": failed.func,
        "chancy.state": "failed",
        "chancy.final": "yes",
    }
    assert event["transaction"] == failed.func
    assert event["level"] == "error"


async def test_every_failure_reports_each_failed_attempt(
    database: str, run_worker: RunWorker, transport: tuple[sentry_sdk.Client, Captured]
) -> None:
    client, captured = transport
    plugin = Sentry(client=client, every_failure=True, send_kwargs=True)
    async with Chancy(database, plugins=[plugin]) as app:
        await app.declare(Queue("default"))
        ref = await app.push(Job.from_func(charge, kwargs={"amount": 7}, max_attempts=2))
        (failed,) = await run_until_done(app, run_worker, [ref])
    assert failed.attempts == 2
    events = captured.events()
    contexts = [e["contexts"][CONTEXT] for e in events]
    assert [(c["attempt"], c["state"], c["final"]) for c in contexts] == [
        (1, "retrying", False),
        (2, "failed", True),
    ]
    assert [e["tags"]["chancy.final"] for e in events] == ["no", "yes"]
    assert contexts[0]["kwargs"] == {"amount": 7}


async def test_ignored_errors_and_successes_are_not_reported(
    database: str, run_worker: RunWorker, transport: tuple[sentry_sdk.Client, Captured]
) -> None:
    client, captured = transport
    plugin = Sentry(client=client, ignore=[PaymentDeclined])
    async with Chancy(database, plugins=[plugin]) as app:
        await app.declare(Queue("default"))
        refs = await app.push_many(
            [Job.from_func(charge, kwargs={"amount": 1}), Job.from_func(fine)]
        )
        done = await run_until_done(app, run_worker, refs)
    assert [j.state.value for j in done] == ["failed", "succeeded"]
    assert captured.events() == []


async def test_the_discovered_plugin_reports_to_what_sentry_sdk_init_set_up(
    database: str, run_worker: RunWorker
) -> None:
    captured = Captured()
    sentry_sdk.init(
        DSN, transport=captured, default_integrations=False, auto_enabling_integrations=False
    )
    try:
        async with Chancy(database) as app:
            assert isinstance(app.plugins.get_plugin("sentry"), Sentry)
            await app.declare(Queue("default"))
            ref = await app.push(Job.from_func(charge, kwargs={"amount": 3}))
            await run_until_done(app, run_worker, [ref])
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
    (event,) = captured.events()
    assert event["contexts"][CONTEXT]["id"] == str(ref)


def test_misconfiguration_says_what_to_do() -> None:
    with pytest.raises(ConfigurationError, match="exception type"):
        Sentry(ignore=[42])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="strings"):
        Sentry.tag(Job(func="a.b"), n=1)  # type: ignore[arg-type]
