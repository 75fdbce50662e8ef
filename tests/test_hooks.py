"""The hook caller (chancy_core.hooks), alone: isolation, order, tracing, fallbacks."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import pytest

from chancy_core import Chancy, Job, hookimpl
from chancy_core.hooks import (
    Guarded,
    HookFlags,
    call_event,
    call_sync_event,
    collect,
    decide,
    decide_or,
)
from chancy_core.plugins import build_plugin_manager


class Failing:
    name = "failing"

    @hookimpl
    def chancy_worker_started(self, worker: Any) -> None:
        raise RuntimeError("plugin bug")

    @hookimpl
    def chancy_before_push(self, jobs: list[Job]) -> None:
        raise RuntimeError("push bug")

    @hookimpl
    def chancy_retry_decision(self, job: Any) -> datetime | bool | None:
        raise RuntimeError("decision bug")


class First:
    name = "first"

    def __init__(self, seen: list[str]) -> None:
        self.seen = seen

    @hookimpl
    async def chancy_worker_started(self, worker: Any) -> None:
        self.seen.append("first")


class Second(First):
    name = "second"

    @hookimpl
    async def chancy_worker_started(self, worker: Any) -> None:
        self.seen.append("second")


@pytest.mark.anyio
async def test_event_hooks_run_in_pluggys_order_and_are_isolated(caplog) -> None:
    seen: list[str] = []
    pm = build_plugin_manager([First(seen), Failing(), Second(seen)], autoload=False)
    with caplog.at_level(logging.ERROR):
        await call_event(pm.hook.chancy_worker_started, worker=object())
    assert seen == ["second", "first"]  # the plugin registered last is called first
    assert "plugin failing failed in chancy_worker_started" in caplog.text


@pytest.mark.anyio
async def test_every_call_is_visible_to_pluggys_tracing() -> None:
    pm = build_plugin_manager([First([]), Failing()], autoload=False)
    traced: list[tuple[str, list[str]]] = []
    pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: traced.append((name, [i.plugin_name for i in impls])),
        lambda outcome, name, impls, kwargs: None,
    )
    await call_event(pm.hook.chancy_worker_started, worker=object())
    call_sync_event(pm.hook.chancy_before_push, app=None, jobs=[])
    assert ("chancy_worker_started", ["first"]) in traced
    assert ("chancy_worker_started", ["failing"]) in traced
    assert ("chancy_before_push", ["failing"]) in traced
    queued = type("J", (), {"attempts": 1, "max_attempts": 1})()
    decide(pm.hook.chancy_retry_decision, worker=None, job=queued, error=None)
    decide_or(pm.hook.chancy_elects_leader, True, worker=None)
    collect(pm.hook.chancy_migrations, app=None)
    for name in ("chancy_retry_decision", "chancy_elects_leader", "chancy_migrations"):
        assert any(called == name for called, _ in traced), name


def test_a_failing_decision_falls_back_to_the_core_default(caplog) -> None:
    pm = build_plugin_manager([Failing()], autoload=False)
    queued = type("J", (), {"attempts": 1, "max_attempts": 1})()
    with caplog.at_level(logging.ERROR):
        assert decide(pm.hook.chancy_retry_decision, worker=None, job=queued, error=None) is False
    assert "failed in chancy_retry_decision" in caplog.text


class FailsToElect:
    name = "fails-to-elect"

    @hookimpl
    def chancy_elects_leader(self, worker: Any) -> bool:
        raise RuntimeError("cannot tell")


def test_a_failing_decision_can_answer_its_safe_side(caplog) -> None:
    pm = build_plugin_manager([FailsToElect()], autoload=False)
    with caplog.at_level(logging.ERROR):
        assert decide_or(pm.hook.chancy_elects_leader, True, worker=None) is True
    assert "failed in chancy_elects_leader; answering True" in caplog.text
    quiet = build_plugin_manager([], autoload=False)
    assert decide_or(quiet.hook.chancy_elects_leader, True, worker=None) is False  # default


class Completes:
    name = "completes"

    @hookimpl
    def chancy_job_completed(self, job: Any) -> None:
        return None


def test_hook_flags_ignore_the_core_defaults() -> None:
    none = HookFlags.of(build_plugin_manager([], autoload=False).hook)
    assert none == HookFlags(starting=False, wrap=False, completed=False)
    completes = HookFlags.of(build_plugin_manager([Completes()], autoload=False).hook)
    assert completes == HookFlags(starting=False, wrap=False, completed=True)


class Suppressing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> bool:
        return True  # tries to swallow the job's exception


@pytest.mark.anyio
async def test_a_wrapper_cannot_suppress_the_jobs_exception() -> None:
    with pytest.raises(ValueError, match="job failed"):
        async with Guarded(Suppressing(), "sneaky"):
            raise ValueError("job failed")


@pytest.mark.db
@pytest.mark.anyio
async def test_a_raising_before_push_hook_does_not_fail_the_push(database, caplog) -> None:
    with caplog.at_level(logging.ERROR):
        async with Chancy(database, plugins=[Failing()]) as app:
            ref = await app.push(Job(func="m.f"))
            assert await app.get_job(ref) is not None
    assert "plugin failing failed in chancy_before_push" in caplog.text
