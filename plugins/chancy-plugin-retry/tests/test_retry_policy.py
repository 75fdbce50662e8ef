"""The retry policy and decision, without a database."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from chancy_plugin_retry import KEY, Retry, exception_names, make_policy, retry_delay

from chancy_core import Job, QueuedJob
from chancy_core.errors import InvalidJobError, JobCancelled

NOW = datetime(2024, 1, 1, tzinfo=UTC)


class Transient(Exception):
    pass


class MoreTransient(Transient):
    pass


def queued(job: Job, attempts: int) -> QueuedJob:
    return QueuedJob(
        **{**job.__dict__, "id": "00000000-0000-0000-0000-000000000001"}, attempts=attempts
    )


def test_policy_returns_a_new_job_with_names_stored_as_strings() -> None:
    job = Job(func="app.tasks.send", meta={"other": 1})
    retried = Retry.policy(
        job, backoff=2, retry_on=(Transient, "OSError"), give_up_on=(KeyError,), max_attempts=5
    )
    assert job.meta == {"other": 1} and job.max_attempts == 1
    assert retried.max_attempts == 5
    assert retried.meta == {
        "other": 1,
        KEY: {
            "backoff": 2.0,
            "max_backoff": 300.0,
            "jitter": 0.1,
            "retry_on": [f"{__name__}.Transient", "OSError"],
            "give_up_on": ["KeyError"],
        },
    }


@pytest.mark.parametrize(
    "options",
    [
        {"backoff": -1},
        {"max_backoff": float("inf")},
        {"jitter": 1.5},
        {"jitter": True},
        {"retry_on": "ValueError"},
        {"retry_on": (ValueError, "not a name!")},
        {"give_up_on": (int,)},
    ],
)
def test_policy_refuses_invalid_options(options: dict[str, object]) -> None:
    with pytest.raises(InvalidJobError):
        Retry.policy(Job(func="app.tasks.send"), **options)  # type: ignore[arg-type]


def test_delay_doubles_and_is_capped() -> None:
    policy = make_policy(backoff=1.0, max_backoff=10.0, jitter=0.0)
    assert [retry_delay(policy, n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert retry_delay(policy, 10**9) == 10.0
    assert retry_delay(make_policy(backoff=0), 3) == 0.0


def test_jitter_stays_within_its_fraction_and_spreads() -> None:
    policy = make_policy(backoff=4.0, max_backoff=4.0, jitter=0.25)
    rng = random.Random(7)
    delays = [retry_delay(policy, 3, rng) for _ in range(500)]
    assert all(3.0 <= d <= 5.0 for d in delays)
    assert min(delays) < 3.2 and max(delays) > 4.8


def test_exception_names_cover_the_mro() -> None:
    names = exception_names(MoreTransient())
    assert {"MoreTransient", "Transient", f"{__name__}.Transient", "Exception"} <= names
    assert "builtins.Exception" in names and "ValueError" not in names


def test_decision_retries_with_backoff_while_attempts_remain() -> None:
    job = Retry.policy(Job(func="m.f"), backoff=3, jitter=0, max_attempts=3)
    retry = Retry()
    assert retry.decide(queued(job, 1), Transient(), NOW) == NOW + timedelta(seconds=3)
    assert retry.decide(queued(job, 2), Transient(), NOW) == NOW + timedelta(seconds=6)
    assert retry.decide(queued(job, 3), Transient(), NOW) is False


def test_decision_gives_up_on_named_types_and_their_subclasses() -> None:
    job = Retry.policy(Job(func="m.f"), give_up_on=(Transient,), max_attempts=9)
    assert Retry().decide(queued(job, 1), MoreTransient()) is False
    assert isinstance(Retry().decide(queued(job, 1), ValueError()), datetime)


def test_decision_retries_only_on_named_types() -> None:
    job = Retry.policy(Job(func="m.f"), retry_on=("Transient", "LookupError"), max_attempts=9)
    assert Retry().decide(queued(job, 1), ValueError()) is False
    assert isinstance(Retry().decide(queued(job, 1), MoreTransient()), datetime)
    assert isinstance(Retry().decide(queued(job, 1), KeyError()), datetime)


def test_decision_never_retries_a_cancelled_job() -> None:
    job = Retry.policy(Job(func="m.f"), max_attempts=9)
    assert Retry().decide(queued(job, 1), JobCancelled()) is False


def test_jobs_without_a_policy_are_left_to_the_core_unless_a_default_is_set() -> None:
    job = Job(func="m.f", max_attempts=3)
    assert Retry().decide(queued(job, 1), ValueError()) is None
    default = make_policy(backoff=5, jitter=0)
    assert Retry(default=default).decide(queued(job, 1), ValueError(), NOW) == NOW + timedelta(
        seconds=5
    )


def test_an_invalid_stored_policy_is_left_to_the_core() -> None:
    job = Job(func="m.f", max_attempts=3, meta={KEY: {"backoff": "soon"}})
    assert Retry().decide(queued(job, 1), ValueError()) is None
